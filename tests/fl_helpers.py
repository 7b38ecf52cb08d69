"""Shared pieces of the federated tests: devices with the real agent learning code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from agent.learning.worker import LearningWorker
from agent.link import DeviceLink
from agent.samples import SampleStore
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import LearningStats, Telemetry
from edgefleet_contract.package import Lineage
from edgefleet_contract.topics import Channel
from fleet_server.federation.spec import LocalTraining, RunSpec
from fleet_server.modelkit.build import build_package
from fleet_server.modelkit.digits import LABELS, PREPROCESSING, split
from fleet_server.modelkit.partition import dirichlet_parts
from fleet_server.server import FleetServer

from .harness import HTTP_TIMEOUT, enroll_agent, fleet_link, system_stats, wait_for

MODEL = "digits-fl"
BIN = Path(sys.executable).parent


def write_start_package(models_dir: Path, *, seed: int = 7) -> None:
    """A freshly initialised (untrained) 64-32-10 package of MODEL for runs to start from."""
    from models.build import REFERENCES
    from models.train import init_network

    ref = REFERENCES["digits"]
    network = init_network(ref.input_shape, ref.layers, ref.widths, seed=seed)
    data = split()
    blob = build_package(
        network,
        name=MODEL,
        version="1.0.0",
        flavor="onnx-float32",
        preprocessing=PREPROCESSING,
        labels=LABELS,
        reference=data.x_train,
        lineage=Lineage(source="build"),
    )
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / f"{MODEL}-1.0.0-onnx-float32.efpkg").write_bytes(blob)


@dataclass
class Device:
    link: DeviceLink
    worker: LearningWorker
    samples: SampleStore

    def stop(self) -> None:
        self.worker.stop()
        self.link.stop()
        self.samples.close()


def make_device(
    server: FleetServer,
    tmp: Path,
    device_id: str,
    rows: np.ndarray,
    labels: np.ndarray,
    *,
    worker_cls: type[LearningWorker] = LearningWorker,
    data: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Device:
    server.store.create_device(device_id, name=device_id, tags={"fl": "yes"}, now=time.time())
    folder = tmp / device_id
    folder.mkdir(parents=True)
    samples = SampleStore(folder / "samples.db", max_samples=10_000)
    for row, label in zip(rows, labels, strict=True):
        samples.add(row, int(label))
    holder: list[DeviceLink] = []
    worker = worker_cls(
        lambda frame: holder[0].send_frame(frame),
        data or samples.dataset,
        max_payload=16 * 1024,
        on_trained=samples.mark_trained,
    )
    link = fleet_link(server, folder, device_id, on_frame=worker.on_frame)
    holder.append(link)
    link.start()
    stats = samples.stats()
    batch = Telemetry(
        device_id=device_id,
        batch_id=f"fl-{time.time_ns()}",
        seq=1,
        ts=time.time(),
        window_s=1,
        learning=LearningStats(
            labelled_samples=stats.labelled_samples, new_samples=stats.new_samples
        ),
        system=system_stats("ac"),
    )
    link.send(Channel.TELEMETRY, Codec().encode(batch))
    return Device(link, worker, samples)


def fl_spec(
    target: str,
    clients: int,
    epochs: int,
    round_timeout_s: float,
    fields: Mapping[str, object] | None = None,
) -> RunSpec:
    """Three rounds of MODEL over ``clients`` devices of ``target``, ``epochs`` local epochs
    each at the step these small digit shares learn with (lr 0.2, batches of 16);
    ``fields`` sets any other field of the spec, or overrides these."""
    base: dict[str, object] = {
        "model": MODEL,
        "target": target,
        "rounds": 3,
        "min_clients": clients,
        "round_timeout_s": round_timeout_s,
        "local": LocalTraining(epochs=epochs, lr=0.2, batch_size=16),
    }
    return RunSpec.model_validate({**base, **(fields or {})})


def release_spec(target: str, clients: int, *, epochs: int = 5) -> RunSpec:
    """A short run of MODEL over all ``clients`` whose winner is rolled out to them at once
    (one canary, then everyone; a one-second probation gated on crash loops).  The devices
    label too little for the default champion/challenger gate (it would wait for some 350
    labels from the canary), so the release plan turns it off."""
    plan = "canary 1, waves 100%, pace 600/min, probation 1s, gate crash_loops==0, no-parent-gate"
    return fl_spec(target, clients, epochs, 300, {"rollout": plan})


def reported_samples(server: FleetServer, device_id: str) -> bool:
    """Whether the device's latest telemetry counts labelled samples (it can train)."""
    t = server.store.latest_telemetry(device_id)  # type: ignore[attr-defined]
    return bool(t and t.learning and t.learning.labelled_samples > 0)


def committed(server: FleetServer, device_id: str, name: str, version: str) -> bool:
    """Whether the device reports serving ``name@version`` with its update committed."""
    reported = server.store.get_device(device_id).reported
    model = reported.model if reported else None
    update = reported.update if reported else None
    return bool(
        model is not None
        and (model.name, model.version) == (name, version)
        and update is not None
        and update.phase == "committed"
    )


class Rest:
    """The server's REST API as one logged-in user."""

    def __init__(self, api: str, token: str) -> None:
        self.api = api
        self.auth = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.api}/api/v1{path}", headers=self.auth, timeout=HTTP_TIMEOUT)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(
            f"{self.api}/api/v1{path}", headers=self.auth, json=body, timeout=HTTP_TIMEOUT
        )

    def finished_run(self, run_id: str, timeout: float) -> dict[str, Any]:
        """The training run once it left pending/running (with its rounds)."""
        wait_for(
            lambda: self.get(f"/training/runs/{run_id}")["status"] not in ("pending", "running"),
            timeout,
            f"training run {run_id} to finish",
        )
        doc: dict[str, Any] = self.get(f"/training/runs/{run_id}")
        return doc

    def finished_rollout(self, rollout_id: str, timeout: float) -> dict[str, Any]:
        """The rollout once it left pending/canary/wave (with its devices' detail)."""
        wait_for(
            lambda: (
                self.get(f"/rollouts/{rollout_id}")["status"] not in ("pending", "canary", "wave")
            ),
            timeout,
            f"rollout {rollout_id} to finish",
        )
        doc: dict[str, Any] = self.get(f"/rollouts/{rollout_id}")
        return doc


@contextmanager
def learning_agents(
    fleet: FleetServer,
    token: str,
    ids: list[str],
    directory: Path,
    *,
    seed: int,
    env: Mapping[str, str] = {},
    bin_dir: Path = BIN,
    dataset: tuple[np.ndarray, np.ndarray] | None = None,
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Real ``edge-agent run`` processes, one per id, each holding its share of the digits set.

    The shares are a Dirichlet(0.5) label split (``seed``), so the devices are
    non-IID as in the field.  Yields once every agent is online and has reported
    its labelled samples (a run started earlier would find too few clients);
    ``dataset`` (raw rows, labels) replaces the digits training rows;
    each logs to ``directory/<id>.log``.  ``bin_dir`` holds the ``edge-agent`` to run
    (another install's, e.g. one made with the agent extra only).  On exit the agents get
    SIGTERM, and SIGKILL if they have not stopped within 20 s.
    """
    api = fleet.settings.api_url
    data = split()
    rows, labels = dataset if dataset is not None else (data.x_train, data.y_train)
    parts = dirichlet_parts(labels, len(ids), 0.5, seed)
    agent_env = {
        **os.environ,
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.3",
        "EDGE_AGENT_LOG_FORMAT": "text",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        **env,
    }
    agents: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for device_id, part in zip(ids, parts, strict=True):
            folder = directory / device_id
            enroll_agent(api, token, device_id, folder, tags={"fl": "proc"}, bin_dir=bin_dir)
            samples = SampleStore(folder / "samples.db", max_samples=10_000)
            for row, label in zip(rows[part], labels[part], strict=True):
                samples.add(row, int(label))
            samples.close()
            with (directory / f"{device_id}.log").open("wb") as log:
                agents[device_id] = subprocess.Popen(
                    [str(bin_dir / "edge-agent"), "run", "--data-dir", str(folder)],
                    env=agent_env,
                    cwd=directory,
                    stdout=log,
                    stderr=log,
                )
        store = fleet.store
        wait_for(lambda: all(store.get_device(d).online for d in ids), 60, "agents online")
        wait_for(lambda: all(reported_samples(fleet, d) for d in ids), 60, "learning telemetry")
        yield agents
    finally:
        for proc in agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in agents.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


class Nodes(Grid):
    """Just enough of a grid for ``configure_train``: the eligible node ids."""

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    # The rest of the Grid interface is not used by these tests.
    def set_run(self, run_id: int) -> None: ...  # type: ignore[override]
    @property
    def run(self):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def,override]
        raise NotImplementedError
