"""The fleet server's federated-training service, built from its settings and MQTT link."""

from __future__ import annotations

from edgefleet_contract.topics import Channel

from ..config import ServerSettings
from ..factory_models import DIST
from ..link import ServerLink
from ..metrics import Metrics
from ..registry import ArtifactRegistry
from ..store.base import Store
from .candidate import CandidateHook, heldout_for
from .packages import find_package, registered
from .runner import TrainingService


def make_training(
    settings: ServerSettings,
    store: Store,
    link: ServerLink,
    *,
    on_candidate: CandidateHook | None = None,
    metrics: Metrics | None = None,
    artifacts: ArtifactRegistry | None = None,
    shared: bool = False,
) -> TrainingService:
    """``on_candidate(path, lineage)`` is the registry hand-over (``ArtifactRegistry.add_model``);
    ``artifacts`` (the artifact registry) is searched first for the package a run starts
    from; ``shared``: other server processes share the store (runs go to the training
    lease's holder)."""
    models = settings.data_dir / "models"
    service = TrainingService(
        store,
        lambda device_id, frame: link.send_raw(device_id, Channel.FL_IN, frame),
        packages=lambda name, version: find_package(
            name,
            [models, DIST],
            files=registered(artifacts, name) if artifacts else (),
            version=version,
        ),
        heldout=heldout_for(settings.data_dir / "heldout"),
        candidates_dir=settings.data_dir / "candidates",
        on_candidate=on_candidate,
        max_payload=settings.telemetry.max_payload,
        shared=shared,
    )
    if metrics is not None:
        metrics.counted(
            "edgefleet_fl_rejected_updates_total",
            "Federated updates refused before aggregation, by reason",
            ("reason",),
            fn=lambda: [((k,), float(v)) for k, v in sorted(service.rejected_total.items())],
        )
        metrics.counted(
            "edgefleet_fl_dropped_frames_total",
            "Federated frames dropped by reassembly in the current run, by reason",
            ("reason",),
            fn=lambda: [
                ((k,), float(v))
                for k, v in sorted((service.grid.dropped_frames if service.grid else {}).items())
            ],
        )
    return service
