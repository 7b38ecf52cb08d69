"""Open-file limits: processes that hold one descriptor per device raise their own.

A login shell often starts programs with a soft limit of 1,024 descriptors
while the hard limit allows far more.  The managed broker holds one socket per
device (it inherits the server's limit) and a simulator worker holds about
nine per device, so both raise the soft limit toward the hard one at start,
the way ``ulimit -n`` would; past the hard limit only the operator can go (see
docs/operations.md, "Many devices: file descriptors").
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_fd_limit(want: int | None = None) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to ``want`` (default: the hard limit), never
    lowering it and never past the hard limit.  Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else want
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft == resource.RLIM_INFINITY or (target != resource.RLIM_INFINITY and soft >= target):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # a container may refuse even within the hard limit
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target
