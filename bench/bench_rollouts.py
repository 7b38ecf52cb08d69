"""Rollout engine throughput, no devices: what the server side can drive, not a rollout.

Engine only.  No device downloads, verifies, installs or serves anything: the
"devices" are one thread of this benchmark that answers every ``set_desired``
command at once by writing "update committed" as the device's reported state,
and the plan sets ``gates_allow_no_data`` because nothing serves, so its gate
passes on no data.  What is real is the server path: the rollout engine and its
driver, the SQLite store (every transition saved), desired state stored and
published as a QoS 1 ``set_desired`` command through the real server MQTT link
to the real mosquitto (mTLS), and the answer fed back the way ingest's hook
does.  Canary 1%, waves 10%/50%/100%, no probation, one gate
(``error_rate<0.01``, evaluated over the wave's devices from the store).  The
driver ticks every 0.25 s.  Figures: devices/min the engine drives with pacing
at 1,200/min (the ratio to the pace should be ~1: pacing is the only limit)
and with pacing effectively off (the engine's capacity, as a multiple of the
1,000/min goal).  The rollout figure to quote is the simulator section's row
"rollout of a 43 KiB model to 1,000 real agents" (real agents: TUF refresh,
download, self-test, A/B switch, probation); this one only shows that the
engine is not what limits a real rollout.  Measured on a shared 2-core machine
under load, so the unpaced figure is noisy from run to run.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from pathlib import Path

from edgefleet_common.mqtt import Endpoint
from edgefleet_contract.messages import Command, ModelRef, ReportedState, UpdateReport
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.rollouts.artifacts import ResolvedArtifact
from fleet_server.rollouts.driver import RolloutDriver
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.plan import RolloutPlan, Share
from fleet_server.store import open_store
from fleet_server.store.base import Store

from ._lab import Lab

DEVICES = 1000
ARTIFACT = ResolvedArtifact(
    "model", "digits", "2.0.0", "models/digits/2.0.0/digits-2.0.0.efpkg", "ab" * 32, 1000
)


class Wire:
    """The server link, plus a note of what was sent so the simulated devices can answer."""

    def __init__(self, link: ServerLink) -> None:
        self.link = link
        self.sent: queue.SimpleQueue[tuple[str, Command]] = queue.SimpleQueue()
        self.count = 0

    def send_command(self, device_id: str, command: Command) -> None:
        self.link.send_command(device_id, command)
        self.count += 1
        self.sent.put((device_id, command))


def devices_answer(store: Store, wire: Wire, driver: RolloutDriver, stop: threading.Event) -> None:
    model = ModelRef(name="digits", version="2.0.0", sha256="ab" * 32, runtime="onnx")
    while not stop.is_set():
        try:
            device_id, command = wire.sent.get(timeout=0.05)
        except queue.Empty:
            continue
        version = int(command.args["version"])
        now = time.time()
        update = UpdateReport(
            desired_version=version,
            kind="model",
            target=ARTIFACT.target_path,
            phase="committed",
            ts=now,
        )
        state = ReportedState(
            device_id=device_id,
            ts=now,
            agent_version="bench",
            health="ok",
            model=model,
            desired_version=version,
            update=update,
        )
        store.set_reported(device_id, state, now)
        driver.device_updated(device_id)


def one_run(lab: Lab, pace_per_min: float) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(dir=lab.dir))
    store = open_store(folder / "fleet.db")
    now = time.time()
    for i in range(DEVICES):
        d = f"bench-{i:04d}"
        store.create_device(d, name=d, tags={"fleet": "bench"}, now=now)
        store.add_certificate(d, 10_000 + i, now + 86400, now)
        store.set_presence(d, online=True, ts=now)
    ingest = Ingest(store)
    link = ServerLink(Endpoint("127.0.0.1", lab.broker.port, lab.server), ingest)
    ingest.start()
    link.start()
    link.wait_connected(15)
    wire = Wire(link)
    driver = RolloutDriver(store, wire)
    stop = threading.Event()
    responder = threading.Thread(target=devices_answer, args=(store, wire, driver, stop))
    responder.start()
    plan = RolloutPlan(
        selector="tag:fleet=bench",
        artifact=ARTIFACT,
        canary=Share(fraction=0.01),
        waves=(0.1, 0.5, 1.0),
        pace_per_min=pace_per_min,
        probation_s=0.0,
        gates=(parse_gate("error_rate<0.01"),),
        # The simulated devices commit but serve nothing: the gate is measured from the
        # store (its cost is in the figure) and passes with no data, as for an idle fleet.
        gates_allow_no_data=True,
        seed=1,
    )
    try:
        start = time.time()
        rollout = driver.create(plan, actor="bench", now=start)
        rid = rollout.state.id
        while driver.get(rid).status not in ("completed", "halted", "rolled_back"):
            if time.time() - start > 600:
                raise RuntimeError("the rollout did not finish in 10 minutes")
            time.sleep(0.25)
            driver.step()
        elapsed = time.time() - start
        final = driver.get(rid)
        ok = sum(1 for d in final.devices.values() if d.status == "succeeded")
        assert final.status == "completed" and ok == DEVICES, (final.status, ok)
    finally:
        stop.set()
        responder.join()
        link.stop()
        ingest.stop()
        store.close()
    rate = DEVICES / elapsed * 60
    paced = pace_per_min < 100_000
    pace = f"paced at {pace_per_min:,.0f}/min" if paced else "unpaced"
    return {
        "benchmark": f"engine only, no real devices (a thread answers committed), {pace}",
        "pacing (devices/min)": f"{pace_per_min:,.0f}",
        "simulated devices": DEVICES,
        "commands published": wire.count,
        "elapsed s": f"{elapsed:.1f}",
        "engine devices/min": f"{rate:,.0f}",
        "achieved / pacing": f"{rate / pace_per_min:.2f}" if paced else "unpaced",
        "engine / 1,000 goal": f"{rate / 1000:.2f}",
    }


def run() -> list[dict[str, object]]:
    lab = Lab()
    try:
        return [one_run(lab, 1200.0), one_run(lab, 1_000_000.0)]
    finally:
        lab.close()
