"""A rollout plan: what goes where, how fast, and what must hold before it goes further.

The plan is parsed once, at creation, from the operator's words (``5%``,
``25%,50%,100%``, ``200/min``, ``30s``) and then frozen and stored as JSON, so
a restarted server runs exactly the plan that was accepted.  Every parse error
is a :class:`PlanError` naming the option and what a good value looks like.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edgefleet_contract.errors import PlanError

from .artifacts import ResolvedArtifact
from .gates import SHADOW_METRICS, Gate, parse_gate

MAX_WAVES = 20
MAX_GATE_SAMPLES = 1_000_000


@dataclass(frozen=True)
class Share:
    """A number of devices, absolute (``count``) or a fraction of the target set."""

    count: int | None = None
    fraction: float | None = None

    def of(self, total: int) -> int:
        if self.count is not None:
            return min(self.count, total)
        assert self.fraction is not None
        wanted = math.ceil(self.fraction * total - 1e-9)
        return min(total, max(1 if self.fraction > 0 and total else 0, wanted))

    def text(self) -> str:
        if self.count is not None:
            return str(self.count)
        return f"{(self.fraction or 0) * 100:g}%"


def parse_share(text: str, *, what: str = "--canary") -> Share:
    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", t)
    if m:
        pct = float(m.group(1))
        if not 0 <= pct <= 100:
            raise PlanError(f"{what} {text!r}: a percentage must be between 0% and 100%")
        return Share(fraction=pct / 100)
    if t.isdigit():
        return Share(count=int(t))
    raise PlanError(f"{what} {text!r}: use a device count (5) or a percentage (5%)")


def parse_waves(text: str) -> tuple[float, ...]:
    """Cumulative shares, rising, ending at 100%: ``25%,50%,100%``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise PlanError("--waves is empty; give cumulative percentages like 25%,50%,100%")
    if len(parts) > MAX_WAVES:
        raise PlanError(f"--waves: at most {MAX_WAVES} waves")
    out: list[float] = []
    for i, part in enumerate(parts):
        share = parse_share(part, what=f"--waves item {i + 1}")
        if share.fraction is None:
            raise PlanError(f"--waves item {i + 1} {part!r}: waves are percentages (25%)")
        if out and share.fraction <= out[-1]:
            raise PlanError(
                f"--waves item {i + 1} {part!r}: waves are cumulative, so each must be larger "
                "than the one before"
            )
        out.append(share.fraction)
    if abs(out[-1] - 1.0) > 1e-9:
        raise PlanError(f"--waves must end at 100% (the last is {parts[-1]!r})")
    return tuple(out)


_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, *, what: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*", text)
    if m is None:
        raise PlanError(f"{what} {text!r}: use a duration like 30s, 10m or 2h")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def duration_text(seconds: float) -> str:
    """``1800`` as ``30m``: the shortest exact form :func:`parse_duration` reads back."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_pace(text: str) -> float:
    """Devices per minute from ``200/min``, ``5/s`` or ``1000/h``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|m|min|h)\s*", text)
    if m is None:
        raise PlanError(f"--pace {text!r}: use devices per time, like 200/min, 5/s or 1000/h")
    per_min = float(m.group(1)) * 60.0 / _UNITS[m.group(2)]
    if per_min <= 0:
        raise PlanError(f"--pace {text!r}: the pace must be above zero")
    return per_min


def parse_margin(text: str) -> float:
    """The champion/challenger margin in accuracy points: ``5pt`` (0.05)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:pt|points?)\s*", text)
    if m is None or not 0 < float(m.group(1)) <= 50:
        raise PlanError(
            f"--parent-margin {text!r}: use accuracy points above 0 and at most 50, like 5pt "
            "(no worse than the parent by 5 points)"
        )
    return float(m.group(1)) / 100


def parse_confidence(text: str) -> float:
    """The champion/challenger confidence: ``95%``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
    if m is None or not 50 < float(m.group(1)) < 100:
        raise PlanError(
            f"--parent-confidence {text!r}: use a percentage above 50% and below 100%, like 95%"
        )
    return float(m.group(1)) / 100


def points_text(margin: float) -> str:
    return f"{margin * 100:g}pt"


@dataclass(frozen=True)
class RolloutPlan:
    selector: str
    artifact: ResolvedArtifact
    canary: Share = Share(count=1)
    waves: tuple[float, ...] = (1.0,)
    pace_per_min: float = 60.0
    jitter_s: float = 0.0
    probation_s: float = 600.0
    gates: tuple[Gate, ...] = ()
    auto_rollback: bool = True
    max_failures: int = 0
    """Failed devices tolerated before the rollout halts (0: the first failure halts it)."""
    device_timeout_s: float = 3600.0
    """A device that neither commits nor fails within this time after being sent counts failed."""
    offline_grace_s: float = 86400.0
    """How long after the last wave devices still offline are waited for, then skipped."""
    seed: int = 0
    gate_min_samples: int = 20
    """Observations (inferences, labelled answers...) a traffic gate needs before it is judged."""
    gate_timeout_s: float = 1800.0
    """After probation, how long a gate short of data is waited for before it fails."""
    gates_allow_no_data: bool = False
    """Fleets without traffic: a gate with no data passes (and says so) instead of waiting."""
    vs_parent: bool = True
    """Judge each wave against the version it replaces (the champion/challenger gate)."""
    parent_margin: float = 0.05
    """How much worse than the parent, in accuracy, the new version may be (0.05: 5 points)."""
    parent_confidence: float = 0.95
    """Confidence of the champion/challenger test, and its power against an equal model."""
    shadow_s: float = 0.0
    """Before the canary switches, how long its devices run the new version in the shadow of
    the active one (0: no shadow step); the ``shadow_*`` gates are judged after it."""
    shadow_every_wave: bool = False
    """Give every wave its own shadow step before it switches, not only the canary."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.jitter_s < 0 or self.probation_s < 0 or self.max_failures < 0:
            raise PlanError("jitter, probation and max failures cannot be negative")
        if not 1 <= self.gate_min_samples <= MAX_GATE_SAMPLES:
            raise PlanError(
                f"--gate-min-samples {self.gate_min_samples}: use a whole number from 1 to "
                f"{MAX_GATE_SAMPLES} (a fleet without traffic: --gates-allow-no-data)"
            )
        if self.shadow_s < 0:
            raise PlanError("--shadow cannot be negative; use a duration like 30m, or 0 for none")
        if self.shadow_every_wave and not self.shadow_s:
            raise PlanError("--shadow-waves all needs a shadow step: add --shadow, e.g. 30m")
        if self.shadow_s and self.artifact.kind != "model":
            raise PlanError("--shadow runs a model beside the active one; firmware has no shadow")
        if not self.shadow_s and any(g.metric in SHADOW_METRICS for g in self.gates):
            raise PlanError(
                "a shadow_* gate needs a shadow step: add --shadow with a duration like 30m"
            )
        if self.gate_timeout_s < 0:
            raise PlanError("--gate-timeout cannot be negative")
        if self.device_timeout_s <= 0:
            raise PlanError("the device timeout must be above zero")
        if not 0 < self.parent_margin <= 0.5 or not 0.5 < self.parent_confidence < 1:
            raise PlanError(
                "--parent-margin is from 0 to 50 points and --parent-confidence between 50% "
                "and 100%, e.g. 5pt and 95%"
            )

    @property
    def interval_s(self) -> float:
        return 60.0 / self.pace_per_min

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["artifact"] = asdict(self.artifact)
        out["canary"] = asdict(self.canary)
        out["waves"] = list(self.waves)
        out["gates"] = [g.source for g in self.gates]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutPlan:
        return cls(
            selector=data["selector"],
            artifact=ResolvedArtifact(**data["artifact"]),
            canary=Share(**data["canary"]),
            waves=tuple(float(w) for w in data["waves"]),
            pace_per_min=float(data["pace_per_min"]),
            jitter_s=float(data["jitter_s"]),
            probation_s=float(data["probation_s"]),
            gates=tuple(parse_gate(g) for g in data["gates"]),
            auto_rollback=bool(data["auto_rollback"]),
            max_failures=int(data["max_failures"]),
            device_timeout_s=float(data["device_timeout_s"]),
            offline_grace_s=float(data["offline_grace_s"]),
            seed=int(data["seed"]),
            # Plans stored before these fields existed get today's defaults.
            gate_min_samples=int(data.get("gate_min_samples", cls.gate_min_samples)),
            gate_timeout_s=float(data.get("gate_timeout_s", cls.gate_timeout_s)),
            gates_allow_no_data=bool(data.get("gates_allow_no_data", False)),
            # Plans stored before the champion/challenger gate did not have it.
            vs_parent=bool(data.get("vs_parent", False)),
            parent_margin=float(data.get("parent_margin", cls.parent_margin)),
            parent_confidence=float(data.get("parent_confidence", cls.parent_confidence)),
            shadow_s=float(data.get("shadow_s", 0.0)),
            shadow_every_wave=bool(data.get("shadow_every_wave", False)),
            extra=dict(data.get("extra") or {}),
        )

    def wave_ends(self, total: int) -> list[int]:
        """Cumulative device counts: the canary first, then each wave (never shrinking)."""
        ends = [self.canary.of(total)]
        for fraction in self.waves:
            ends.append(max(ends[-1], Share(fraction=fraction).of(total)))
        return ends
