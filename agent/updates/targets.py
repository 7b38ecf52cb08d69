"""What an update is about, without the network stack: a signed target and the stop signal.

Kept apart from :mod:`.trust` (python-tuf) and :mod:`.fetch` (httpx) so the
daemon can start, serve and idle without importing either: they load when the
first update runs (about 20 MiB of an idle agent's memory, with the
cryptography that python-tuf's signers pull in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgefleet_contract.errors import EdgefleetError


@dataclass(frozen=True)
class SignedTarget:
    """One artifact exactly as the targets role signed it."""

    path: str
    length: int
    sha256: str
    url: str
    """Its consistent-snapshot URL (``{dir}/{sha256}.{basename}`` under the targets base)."""
    custom: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        kind = self.custom.get("kind")
        return kind if isinstance(kind, str) else None


class Stopped(EdgefleetError):
    """The daemon is stopping; the journal stays where it is for the next start."""
