"""A private PostgreSQL server for tests and benches: initdb + pg_ctl in a temp dir.

Never the system server on 5432: each session runs its own cluster on a free
loopback port with trust authentication, so tests can create, drop, stop and
restart it without touching anything else on the machine.  initdb refuses to
run as root, so under root the cluster belongs to the ``postgres`` user (Debian's
package creates it) and every server command runs through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from edgefleet_common.ports import free_port as _free_port

_UNPRIVILEGED = "postgres"


class PgUnavailable(RuntimeError):
    """PostgreSQL's server binaries are not installed (``.ci/setup-system`` installs them)."""


def find_pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding initdb, or one on PATH."""

    def major(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PgUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: run .ci/setup-system "
        "or apt-get install postgresql"
    )


class PgServer:
    """One throw-away PostgreSQL cluster; ``dsn(db)`` names a database on it."""

    def __init__(self, root: Path | None = None) -> None:
        self.bin = find_pg_bin()
        self.root = Path(root or tempfile.mkdtemp(prefix="edgefleet-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_root = os.geteuid() == 0
        self.user = _UNPRIVILEGED if self._as_root else pwd.getpwuid(os.geteuid()).pw_name

    # -- process control ------------------------------------------------------
    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if check and res.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({res.returncode}): {res.stderr or res.stdout}")
        return res

    def _init(self) -> None:
        """initdb; under root the directory (and its parents) must be reachable by the
        ``postgres`` user, so keep the default root in the system temp dir."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    def start(self, tries: int = 5) -> PgServer:
        """Start on a fresh free port; another process taking it first means another try."""
        if not self.data.exists():
            self._init()
        last = ""
        for _ in range(tries):
            port = self.port or _free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            res = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
                check=False,
            )
            if res.returncode == 0:
                self.port = port
                return self
            last = res.stderr + res.stdout + self._log_tail()
            self.port = 0  # a restart that lost its port moves to a new one
        raise RuntimeError(f"PostgreSQL did not start after {tries} tries: {last}")

    def stop(self, mode: str = "fast") -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        """Stop and start on the same port (clients see their connections drop)."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""

    # -- databases ------------------------------------------------------------
    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def admin_sql(self, sql: str) -> None:
        """Run one statement as the superuser on the maintenance database (autocommit)."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.admin_sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh empty database for one test; its DSN is yielded, it is dropped after."""
        name = self.create_database()
        try:
            yield self.dsn(name)
        finally:
            self.drop_database(name)
