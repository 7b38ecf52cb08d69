"""What a federated training run is asked to do (validated; stored as JSON with the run)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ..rollouts.plan import PlanSpec

StrategyName = Literal[
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavgm",
    "krum",
    "trimmed-mean",
    "fedbuff",
]
_VERSION = r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$"
SERVER_OPTIMISERS = ("fedadam", "fedyogi", "fedadagrad", "fedavgm")
"""Strategies that step the global model with a server-side optimiser (``server_lr``)."""


class Eligibility(BaseModel):
    """Which selected devices may take part, judged on their latest telemetry."""

    model_config = ConfigDict(extra="forbid")

    online: bool = True
    min_new_samples: Annotated[int, Field(ge=0)] = 0
    min_samples: Annotated[int, Field(ge=0)] = 1
    idle: bool = True
    """Skip devices whose telemetry says a round is already running (``learning.busy``)."""
    allow_battery: bool = False
    model_version: str | None = None
    """Only devices running this version of the run's model (``model:`` selector syntax)."""


class LocalTraining(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: Annotated[int, Field(ge=1, le=100)] = 5
    lr: Annotated[float, Field(gt=0, le=10)] = 0.1
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 16
    proximal_mu: Annotated[float, Field(ge=0, le=100)] = 0.0


class Privacy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    central_dp: bool = False
    """Flower's server-side fixed clipping wrapper around the strategy."""
    noise_multiplier: Annotated[float, Field(ge=0)] = 0.1
    clipping_norm: Annotated[float, Field(gt=0)] = 10.0
    local_dp_epsilon: Annotated[float, Field(ge=0)] = 0.0
    """> 0: every device clips and noises its update with Flower's ``LocalDpMod``."""
    local_dp_clip: Annotated[float, Field(gt=0)] = 10.0
    local_dp_sensitivity: Annotated[float, Field(ge=0)] = 1.0
    local_dp_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")] = "digits"
    parent_version: Annotated[str, Field(pattern=_VERSION)] | None = None
    """The version of the model the run starts from (unset: the newest trainable one).  The
    run pins what it started from here, so a version registered meanwhile (or found by a
    resumed run) never changes the weights a run continues or the parent it is judged by."""
    target: Annotated[str, Field(min_length=1, max_length=2000)] = "all"
    """A device selector (fleet_server.selector)."""
    rounds: Annotated[int, Field(ge=1, le=1000)] = 10
    min_clients: Annotated[int, Field(ge=1, le=100_000)] = 2
    """Quorum: a round needs this many devices sampled and this many good updates."""
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    round_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 120.0
    quorum_wait_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    """How long a round may wait for enough eligible devices before the run fails."""
    over_select: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Sample this much more than a round needs (0.3: 30% more) and close the round as soon
    as the needed good updates are in; the slowest devices are counted as stragglers."""
    round_deadline_s: Annotated[float, Field(gt=0, le=86400)] | None = None
    """Close a round this long after it started with what arrived, if that meets the quorum
    (else it waits, up to ``round_timeout_s``); devices still training are stragglers."""
    strategy: StrategyName = "fedadam"
    """The default is the best measured at its defaults on harshly non-IID data (docs/federated.md,
    bench_federated); a secagg run without one aggregates with FedAvg."""
    krum_malicious: Annotated[int, Field(ge=0)] = 0
    trim_beta: Annotated[float, Field(ge=0, lt=0.5)] = 0.2
    server_lr: Annotated[float, Field(gt=0, le=10)] | None = None
    """The server optimiser's step (FedAdam/FedYogi/FedAdagrad ``eta``, FedAvgM's server
    learning rate); unset: the strategy's measured default (strategies.SERVER_LR)."""
    server_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """FedAvgM's server momentum."""
    tau: Annotated[float, Field(gt=0, le=1)] = 1e-3
    """FedAdam/FedYogi/FedAdagrad's adaptivity (added to the root of the second moment)."""
    buffer_size: Annotated[int, Field(ge=1, le=100_000)] = 5
    """fedbuff: aggregate every this many updates (a "round" is one aggregation)."""
    max_staleness: Annotated[int, Field(ge=0, le=1000)] = 30
    """fedbuff: drop an update trained on a global version this many aggregations old."""
    staleness_exponent: Annotated[float, Field(ge=0, le=4)] = 0.5
    """fedbuff: an update ``tau`` versions stale counts ``(1 + tau) ** -exponent``."""
    concurrency: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """fedbuff: devices training at once (unset: every eligible device)."""
    local: LocalTraining = LocalTraining()
    eligibility: Eligibility = Eligibility()
    privacy: Privacy = Privacy()
    max_update_norm: Annotated[float, Field(gt=0)] = 100.0
    """Updates whose L2 distance from the global weights exceeds this are refused."""
    rollout: Annotated[str, Field(max_length=500)] | None = None
    """A rollout plan (e.g. "canary 10%, waves 25% 50% 100%") for the candidate, in the
    operator's words (kept as written, for the record); parsed once, into :attr:`release`."""
    secagg: bool = False
    """Secure aggregation (Flower's SecAgg+): the server only ever sees masked updates."""
    secagg_shares: Annotated[int, Field(ge=3)] = 3
    secagg_threshold: Annotated[int, Field(ge=2)] = 2
    client_evaluate: bool = False
    """Federated evaluation: devices hold out every 5th labelled sample and evaluate the global
    model on it (never sent); the server evaluates on its own held-out set anyway."""
    evaluate_every: Annotated[int, Field(ge=1, le=1000)] = 1
    """With ``client_evaluate``: devices evaluate every this many rounds, and the final round."""
    evaluate_by: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    """A device tag (e.g. ``site``) whose values group the federated evaluation into cohorts."""
    accept_by: Literal["auto", "server", "federated"] = "auto"
    """How the candidate is judged against its parent: on the server's held-out set, or on
    the devices' held-out samples (the parent is evaluated before round 1); ``auto`` is
    federated when the server holds no labelled evaluation rows for the model."""
    accept_margin: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Federated acceptance: 0 means the candidate must beat the parent; above 0 it may trail
    the parent's federated accuracy by at most this much."""

    _release: PlanSpec | None = PrivateAttr(None)

    @property
    def release(self) -> PlanSpec | None:
        """The rollout plan for the run's candidate (None: no ``rollout`` was asked for)."""
        return self._release

    @model_validator(mode="before")
    @classmethod
    def _secagg_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("secagg") and data.get("strategy") is None:
            return {**data, "strategy": "fedavg"}
        return data

    @model_validator(mode="after")
    def _coherent(self) -> RunSpec:
        if self.secagg:
            if self.strategy not in ("fedavg", "fedprox") or self.privacy.central_dp:
                raise ValueError(
                    "secagg runs aggregate with FedAvg (FedProx's client term is allowed); "
                    "robust strategies and central DP need the individual updates"
                )
            if self.privacy.local_dp_epsilon > 0:
                raise ValueError("local DP is not available together with secagg")
            if not self.secagg_threshold <= self.secagg_shares:
                raise ValueError("secagg_threshold must not exceed secagg_shares")
            if self.min_clients < max(self.secagg_threshold, 3):
                raise ValueError("secagg needs min_clients >= 3 and >= secagg_threshold")
        if self.round_deadline_s is not None and self.round_deadline_s > self.round_timeout_s:
            raise ValueError("round_deadline_s must not exceed round_timeout_s")
        if self.strategy == "fedbuff":
            if self.over_select or self.round_deadline_s is not None:
                raise ValueError(
                    "over_select and round_deadline_s shape synchronous rounds; fedbuff never "
                    "waits for a round (use max_staleness and round_timeout_s)"
                )
            if self.privacy.central_dp:
                raise ValueError("central DP needs synchronous rounds; use another strategy")
            if self.min_clients > self.buffer_size:
                raise ValueError(
                    "fedbuff aggregates every buffer_size updates: min_clients must not exceed it"
                )
        self._evaluation_coherent()
        self._release = (
            None if self.rollout is None else PlanSpec.parse(self.rollout, target=self.target)
        )
        if self.strategy == "krum" and self.min_clients <= 2 * self.krum_malicious + 2:
            raise ValueError("krum needs min_clients > 2 * krum_malicious + 2")
        return self

    def _evaluation_coherent(self) -> None:
        asks = self.evaluate_every > 1 or self.evaluate_by or self.accept_by == "federated"
        if asks and not self.client_evaluate:
            raise ValueError(
                "evaluate_every, evaluate_by and accept_by=federated need client_evaluate "
                "(fleetctl train start --client-evaluate)"
            )
        if self.client_evaluate and (self.secagg or self.strategy == "fedbuff"):
            raise ValueError(
                "federated evaluation runs with synchronous, non-secagg rounds; "
                "drop client_evaluate or pick another strategy"
            )
