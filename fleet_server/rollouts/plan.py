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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError

from edgefleet_contract.errors import PlanError

from ..selector import parse as parse_selector
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


# ------------------------------------------------------------------ the spec --

Words = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class PlanSpec(BaseModel):
    """A rollout plan in the operator's words, the one vocabulary of every way in.

    ``fleetctl rollout create`` makes its options from these fields, the API's
    request is this plus the artifact, the console posts the same names, and a
    training run's ``--rollout`` is parsed into one (:meth:`parse`).  Each
    value is checked by :func:`build_plan`, so all of them report the same
    errors.
    """

    target: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="a device selector, e.g. tag:site=berlin and model:digits<1.3"
    )
    canary: Words = Field("1", description="devices (5) or share (5%)")
    waves: Words = Field("100%", description="cumulative, e.g. 25%,50%,100%")
    pace: Words = Field("60/min", description="devices per time: 200/min")
    jitter: Words = Field("0s", description="random delay per device: 30s")
    probation: Words = Field("10m", description="watch window per wave")
    gates: Annotated[
        list[Annotated[str, StringConstraints(max_length=200)]], Field(max_length=20)
    ] = Field([], description="metric OP number, e.g. 'error_rate<0.01'")
    auto_rollback: bool = Field(
        True, description="on a failed gate, revert the devices already moved (off: only halt)"
    )
    max_failures: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        0, description="failed devices tolerated"
    )
    device_timeout: Words = Field("1h", description="a device that takes longer has failed")
    offline_grace: Words = Field("24h", description="how long to wait for an offline device")
    seed: Annotated[int, Field(ge=0, le=2**31)] | None = Field(
        None, description="order and jitter seed (reproducible)"
    )
    gate_min_samples: Annotated[int, Field(ge=1, le=MAX_GATE_SAMPLES)] = Field(
        20, description="observations (inferences, labelled answers) a gate needs from the wave"
    )
    gate_timeout: Words = Field(
        "30m", description="after probation, how long a gate short of data waits before it fails"
    )
    gates_allow_no_data: bool = Field(
        False, description="for fleets without traffic: a gate with no data passes (and says so)"
    )
    vs_parent: bool = Field(
        True,
        description="judge each wave against the version it replaces (champion/challenger)",
    )
    parent_margin: Words = Field(
        "5pt",
        description="champion/challenger: how much less accurate than its parent the new "
        "version may be",
    )
    parent_confidence: Words = Field(
        "95%",
        description="champion/challenger: confidence of that test (and its power for an equal "
        "model)",
    )
    shadow: Words = Field(
        "0s",
        description="before the canary switches, how long it runs the new version beside the "
        "active one (0s: no shadow step); shadow_* gates are judged after it",
    )
    shadow_waves: Literal["canary", "all"] = Field(
        "canary",
        description="which waves get a shadow step before they switch: the canary only, or "
        "every wave",
    )

    def check(self) -> None:
        """Every value parses, or a :class:`PlanError` names the one that does not."""
        build_plan(self, _PLACEHOLDER, 0)

    @classmethod
    def parse(cls, text: str, *, target: str) -> PlanSpec:
        """The plan one string describes (a training run's ``--rollout``), for ``target``.

        Grammar: clauses ``WORD VALUE...``, a word starting each; values run to
        the next word; commas, semicolons and spaces all separate.  The words are
        the ``fleetctl rollout create`` options without their dashes (each at
        most once, except ``gate``): ``canary 10%, waves 50% 100%; gate
        accuracy>=0.9; no-auto-rollback``.
        """
        fields: dict[str, object] = {"target": target}
        gates: list[object] = []  # the one word given as often as there are gates
        for word, values in _clauses(text):
            name = WORDS[word]
            value = _field_value(name, word, values, text)
            if name == "gates":
                gates.append(value)
            else:
                fields[name] = value
        fields["gates"] = gates
        try:
            spec = cls.model_validate(fields)
        except ValidationError as exc:
            raise plan_error(exc, prefix=f"--rollout {text!r}: ") from None
        spec.check()
        return spec


FLAGS: dict[str, tuple[str, str]] = {
    "auto_rollback": ("no-auto-rollback", "Halt on a failed gate, revert nothing."),
    "gates_allow_no_data": (
        "gates-allow-no-data",
        "For fleets without traffic: a gate with no data passes instead of failing.",
    ),
    "vs_parent": ("no-parent-gate", "Do not compare each wave with the version it replaces."),
}
"""The boolean fields' option words (each sets the opposite of the default) and their help."""


def option_word(name: str) -> str:
    """The option (without ``--``) that sets the field ``name``: ``no-auto-rollback``."""
    if name in FLAGS:
        return FLAGS[name][0]
    return "gate" if name == "gates" else name.replace("_", "-")


WORDS: dict[str, str] = {
    option_word(name): name for name in PlanSpec.model_fields if name not in ("target", "seed")
}
"""The words of a one-string plan (``canary``, ``no-auto-rollback``...) and the field each
sets: the ``fleetctl rollout create`` options without their dashes."""


def int_bounds(name: str) -> tuple[int | None, int | None]:
    """The smallest and largest value the whole-number field ``name`` takes."""
    info = PlanSpec.model_fields.get(name)
    low = high = None
    for item in info.metadata if info else ():
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


def plan_error(exc: ValidationError, *, prefix: str = "") -> PlanError:
    """A pydantic error on a :class:`PlanSpec` as one line naming the option at fault."""
    first = exc.errors(include_url=False)[0]
    loc = first.get("loc", ())
    name = str(loc[0]) if loc else ""
    word = option_word(name) if name in PlanSpec.model_fields else name
    low, high = int_bounds(name)
    if first.get("type") in ("greater_than_equal", "less_than_equal") and low is not None:
        return PlanError(f"{prefix}{word} is from {low} to {high}, not {first.get('input')!r}")
    return PlanError(f"{prefix}{word}: {first.get('msg')}")


def _clauses(text: str) -> list[tuple[str, list[str]]]:
    tokens = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    if not tokens:
        raise PlanError("--rollout is empty; e.g. 'canary 10%, waves 50%,100%'")
    clauses: list[tuple[str, list[str]]] = []
    for token in tokens:
        word = token.lower()
        if word in WORDS:
            if word != "gate" and any(k == word for k, _ in clauses):
                raise PlanError(f"--rollout {text!r}: {word!r} is given twice")
            clauses.append((word, []))
        elif not clauses:
            raise PlanError(
                f"--rollout {text!r}: expected one of {', '.join(WORDS)} "
                f"at the start, found {token!r}"
            )
        else:
            clauses[-1][1].append(token)
    return clauses


def _field_value(name: str, word: str, values: list[str], text: str) -> object:
    """One clause's value, typed as the field ``name`` wants it."""
    info = PlanSpec.model_fields[name]
    if info.annotation is bool:
        if values:
            raise PlanError(f"--rollout: {word} takes no value, not {values[0]!r}")
        return not info.default
    if not values:
        raise PlanError(f"--rollout {text!r}: {word!r} needs a value")
    if name == "waves":
        return ",".join(values)
    if name == "gates":
        return "".join(values)
    if len(values) > 1:
        raise PlanError(f"--rollout {text!r}: {word!r} takes one value, found {' '.join(values)!r}")
    if info.annotation is int:
        if not values[0].isdigit():
            raise PlanError(f"--rollout: {word} is a whole number, not {values[0]!r}")
        low, high = int_bounds(name)
        if (low is not None and int(values[0]) < low) or (
            high is not None and int(values[0]) > high
        ):
            hint = (
                " (a fleet without traffic: gates-allow-no-data)"
                if name == "gate_min_samples"
                else ""
            )
            raise PlanError(f"--rollout: {word} is from {low} to {high}, not {values[0]!r}{hint}")
        return int(values[0])
    return values[0]


_PLACEHOLDER = ResolvedArtifact("model", "x", "0", "models/x/0/x", "0" * 64, 0)
"""What :meth:`PlanSpec.check` builds with: every value parses before any lookup."""


def build_plan(spec: PlanSpec, artifact: ResolvedArtifact, seed: int) -> RolloutPlan:
    """The frozen plan ``spec`` describes for ``artifact``; a bad value is a PlanError."""
    parse_selector(spec.target)
    return RolloutPlan(
        selector=spec.target,
        artifact=artifact,
        canary=parse_share(spec.canary),
        waves=parse_waves(spec.waves),
        pace_per_min=parse_pace(spec.pace),
        jitter_s=parse_duration(spec.jitter, what="--jitter"),
        probation_s=parse_duration(spec.probation, what="--probation"),
        gates=tuple(parse_gate(g) for g in spec.gates),
        auto_rollback=spec.auto_rollback,
        max_failures=spec.max_failures,
        device_timeout_s=parse_duration(spec.device_timeout, what="--device-timeout"),
        offline_grace_s=parse_duration(spec.offline_grace, what="--offline-grace"),
        seed=seed,
        gate_min_samples=spec.gate_min_samples,
        gate_timeout_s=parse_duration(spec.gate_timeout, what="--gate-timeout"),
        gates_allow_no_data=spec.gates_allow_no_data,
        vs_parent=spec.vs_parent,
        parent_margin=parse_margin(spec.parent_margin),
        parent_confidence=parse_confidence(spec.parent_confidence),
        shadow_s=parse_duration(spec.shadow, what="--shadow"),
        shadow_every_wave=spec.shadow_waves == "all",
    )
