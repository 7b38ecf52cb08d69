"""Every touch of python-tuf's non-public names, in one place (``tuf`` pinned to one major).

ngclient judges expiry by the wall clock it reads once per ``Updater``; the
device judges it by its own clock (the one the rest of the agent uses, and the
one the tests move to reach a frozen timestamp's expiry).  python-tuf has no
public way to say so, so this module sets the ``Updater``'s private
``_trusted_set.reference_time``.  When tuf is upgraded past :data:`TUF_MAJOR`,
this module and ``tests/test_tuf_compat.py`` are what to re-check.
"""

from __future__ import annotations

import datetime
from importlib.metadata import version

from tuf.ngclient.updater import Updater

from edgefleet_contract.errors import TrustError

__all__ = ["TUF_MAJOR", "check_version", "set_reference_time"]

TUF_MAJOR = 7
"""The python-tuf major release this module was checked against (pyproject pins it)."""


def check_version() -> None:
    """Refuse a python-tuf whose internals were not checked against this module."""
    found = version("tuf")
    if found.split(".")[0] != str(TUF_MAJOR):
        raise TrustError(
            f"python-tuf {found} is installed but edgefleet's update client was checked "
            f"against tuf {TUF_MAJOR}.x; install `tuf>={TUF_MAJOR},<{TUF_MAJOR + 1}` "
            "(the agent extras pin it)"
        )


def set_reference_time(updater: Updater, now: float) -> None:
    """Make ``updater`` judge every expiry at ``now`` (seconds since the epoch)."""
    trusted_set = getattr(updater, "_trusted_set", None)
    if trusted_set is None or not hasattr(trusted_set, "reference_time"):
        raise TrustError(
            f"unsupported python-tuf {version('tuf')}: cannot set the reference time "
            f"(checked against tuf {TUF_MAJOR}.x)"
        )
    trusted_set.reference_time = datetime.datetime.fromtimestamp(now, datetime.UTC)
