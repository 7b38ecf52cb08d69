"""The one version order of the server: selectors, training starts and candidates use it.

Package versions are SemVer and firmware or agent versions whatever a device
reports.  PEP 440's reading (:mod:`packaging.version`) orders both the way
people expect: ``1.10 > 1.9`` and a pre-release before its release
(``1.3.0-rc1 < 1.3.0``).
"""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

__all__ = ["parse_version", "version_key"]


def parse_version(text: str) -> Version | None:
    """``text`` as a version, or None when it is not one.

    Build metadata (``1.3.0+build5``) does not count towards the order, as
    SemVer says, so it is dropped.
    """
    try:
        return Version(Version(text).public)
    except InvalidVersion:
        return None


_UNREADABLE = Version("0.dev0")


def version_key(version: str) -> tuple[int, Version, int]:
    """A sort key for ``version``: newest sorts last.

    ``1.0`` and ``1.0.0`` are one release to PEP 440, but a selector
    ``firmware:=1.0`` has always meant exactly ``1.0``: equal releases written
    with fewer parts sort first.  A version PEP 440 cannot read (a SemVer
    pre-release such as ``1.0.0-x.7``) sorts below every one it can, so it is
    never taken for the newest.
    """
    parsed = parse_version(version)
    if parsed is None:
        return (0, _UNREADABLE, 0)
    return (1, parsed, len(parsed.release))
