"""The open-file limit helper never lowers a limit and never passes the hard one."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

CHILD = """
import resource
from edgefleet_common.fdlimit import raise_fd_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
print(raise_fd_limit(32), raise_fd_limit(100), raise_fd_limit(hard * 2),
      resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""


def test_the_soft_limit_rises_to_the_hard_one_and_not_beyond() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 100:
        pytest.skip(f"needs a finite hard limit above 100 (this machine: {hard})")
    # setrlimit changes the whole process: try it in a child, not in the test runner
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    low, mid, top, now, child_hard = (int(x) for x in out.stdout.split())
    assert low == 64  # never lowered
    assert mid == 100
    assert top == now == child_hard  # capped at the hard limit
