"""The device's updater against the fleet server's own registry and TUF repository.

The artifacts are pushed through the API, signed by the server's online keys,
served by the app's ``/tuf/`` routes (metadata, Range-capable targets, bsdiff
deltas); the device trusts the server's first root, as enrollment hands it out.
"""

from __future__ import annotations

from pathlib import Path

from agent.serving import ModelService
from agent.updates.health import HealthTally
from agent.updates.slots import ModelSlots
from agent.updates.trust import save_root
from agent.updates.updater import UpdatePolicy, Updater
from edgefleet_contract.messages import TargetRef

from .ota_server import DIGITS, make_env, model_version


def test_device_installs_a_pushed_model_with_a_delta(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    headers = env.login("olga")
    assert env.push("model", DIGITS, headers).status_code == 201
    v2 = model_version(tmp_path, "1.1.0")
    pushed = env.push("model", v2, headers)
    assert pushed.status_code == 201, pushed.text
    target = pushed.json()["target_path"]

    device = tmp_path / "device"
    save_root(device, (env.tuf.metadata_dir / "1.root.json").read_text())
    ModelSlots(device).install_initial(DIGITS)
    service = ModelService(recorder=None)
    active = ModelSlots(device).active()
    assert active is not None
    service.replace(active.package)
    updater = Updater(
        device,
        "http://testserver",
        host=service,
        health=HealthTally(),
        policy=UpdatePolicy(probation_s=0.1, poll_s=0.02),
        client=env.client,
    )
    ref = TargetRef(kind="model", name="digits", version="1.1.0", target=target)
    final = updater.run(ref, desired_version=2)
    assert final.phase == "committed", final.error
    assert service.model is not None and service.model.manifest.version == "1.1.0"
    assert final.delta == "used" and 0 < final.bytes_transferred < v2.stat().st_size
