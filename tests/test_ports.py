"""Ports for services that cannot bind port 0: outside the ephemeral range, reserved."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from edgefleet_common import ports


def _reserved_by_another_process(port: int) -> bool:
    probe = f"import sys; from edgefleet_common import ports; sys.exit(not ports._reserve({port}))"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_a_port_is_below_the_ephemeral_range_bindable_and_never_handed_out_twice() -> None:
    floor = ports._ephemeral_floor()
    got = [ports.free_port() for _ in range(20)]
    assert len(set(got)) == len(got)
    assert all(p < floor for p in got)
    with socket.socket() as s:
        s.bind(("127.0.0.1", got[0]))  # nothing took it meanwhile


def test_a_listening_port_is_skipped_and_a_held_one_is_refused_to_another_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not ports.port_is_free(s.getsockname()[1])
    mine = ports.free_port()
    assert not _reserved_by_another_process(mine)
    # The positive control: the other process does get ports, none of them ours.
    probe = (
        "import json; from edgefleet_common import ports; "
        "print(json.dumps([ports.free_port() for _ in range(5)]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    theirs = set(json.loads(out.stdout))
    assert len(theirs) == 5 and not theirs & set(ports._held)
