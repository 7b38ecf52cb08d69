"""Owner-only files and directories, whatever they were before.

The fleet server's database holds password and token hashes and the audit
trail; the agent's holds labelled training samples and queued telemetry.
``mkdir(mode=0o700)`` only applies to a directory it creates (and through the
umask), so a data directory made earlier by hand, by a package or by an older
release keeps whatever mode it had: these helpers set the mode every time.
SQLite creates its ``-wal`` and ``-shm`` files with the database's own mode,
so a database made 0600 before its first connection stays private.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (created with its parents)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _restrict(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` (created empty if missing) and its SQLite companions, owner read/write only."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        _restrict(companion, FILE_MODE)
    return path


def _restrict(path: Path, mode: int) -> None:
    """chmod what this user owns; another user's file (``status`` run by root, say) is
    left alone rather than failing the command."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.geteuid() and info.st_mode & 0o777 != mode:
        os.chmod(path, mode)
