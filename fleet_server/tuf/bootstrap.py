"""Create the server's TUF repository on ``fleet-server init`` (no operator step needed).

A fresh fleet must work without a key ceremony, so this makes one root key
(threshold 1) in ``{data_dir}/offline/`` next to a note that says loudly it
belongs elsewhere.  The server never reads that directory again; the secure
flow (offline root keys, ``fleetctl keys rotate --role root``) is in
docs/update-signing.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import ServerSettings
from . import keys, offline
from .repository import Lifetimes, TufRepository

OFFLINE_NOTE = """\
THIS DIRECTORY HOLDS A TUF ROOT KEY. IT DOES NOT BELONG ON THE SERVER.

`fleet-server init` made this root key so a fresh fleet works without a key
ceremony. Whoever holds it can make every device trust any update. Before
production: create offline root keys with `fleetctl keys init` on an
air-gapped machine, rotate the root to them (`fleetctl keys rotate --role root`,
signed with this key and the new ones), then delete this directory
(see docs/update-signing.md, "Keys").
"""


def tuf_lifetimes(settings: ServerSettings) -> Lifetimes:
    t = settings.tuf
    return Lifetimes(
        root=t.root_expiry_s,
        targets=t.targets_expiry_s,
        snapshot=t.snapshot_expiry_s,
        timestamp=t.timestamp_expiry_s,
    )


def initialize_tuf(settings: ServerSettings, *, clock: Callable[[], float] = time.time) -> bool:
    """Create the TUF repository with a demo root key in ``offline/``; False if it exists."""
    directory, offline_dir = settings.data_dir / "tuf", settings.data_dir / "offline"
    if (directory / "metadata" / "1.root.json").exists():
        return False
    root_key = offline.key_file(offline_dir, 1)
    if not root_key.exists():
        offline_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        offline.make_root_keys(offline_dir, count=1, threshold=1, passphrase=None)
        (offline_dir / "README-MOVE-OFFLINE.txt").write_text(OFFLINE_NOTE)
    TufRepository.create(
        directory,
        root_signers=[keys.load(root_key)],
        root_threshold=1,
        clock=clock,
        lifetimes=tuf_lifetimes(settings),
    )
    return True
