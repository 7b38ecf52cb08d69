"""fleetctl models/firmware/keys against a real fleet server, and a device's TUF client over
real HTTP (python-tuf's own fetcher) following the key ceremony."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tuf.ngclient import Updater

from fleet_server.server import FleetServer
from fleet_server.tuf import offline

from .fleetctl_kit import fleetctl, login_admin
from .ota_server import DIGITS, FIRMWARE


@pytest.fixture(autouse=True)
def config(fleetctl_config: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "correct horse")
    return fleetctl_config


def _device(fleet: FleetServer, directory: Path, root: bytes) -> Updater:
    (directory / "metadata").mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(directory / "metadata"),
        metadata_base_url=f"{fleet.settings.api_url}/tuf/metadata/",
        target_dir=str(directory),
        target_base_url=f"{fleet.settings.api_url}/tuf/targets/",
        bootstrap=root,
    )


def test_push_list_and_key_ceremony(fleet: FleetServer, tmp_path: Path) -> None:
    api = fleet.settings.api_url
    login_admin(api)
    first_root = fleet.tuf.root_bytes()
    metrics = httpx.get(f"{api}/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("edgefleet_tuf_timestamp_expires"))
    assert 3600 < float(line.split()[-1]) <= 86400

    code, out, err = fleetctl(["models", "push", str(DIGITS)])
    assert code == 0, err
    assert "registered digits@1.0.0:onnx-int8" in out
    code, out, err = fleetctl(
        ["--json", "firmware", "push", str(FIRMWARE / "edge-os-1.0.0.efbundle")]
    )
    assert code == 0 and json.loads(out)["hardware"] == ["rpi4", "rpi5"]
    code, out, _ = fleetctl(["--json", "models", "list"])
    assert [a["spec"] for a in json.loads(out)["items"]] == ["digits@1.0.0:onnx-int8"]
    code, out, _ = fleetctl(["firmware", "list"])
    assert code == 0 and "edge-os" in out and "1 firmware artifacts" in out
    code, out, err = fleetctl(["models", "card", "digits@1.0.0"])
    assert code == 0 and out.startswith("# Model card: digits 1.0.0"), err
    code, out, _ = fleetctl(["--json", "models", "card", "digits@1.0.0"])
    assert code == 0 and json.loads(out)["edge"]["runtimes"][0]["flavor"] == "onnx-int8"
    code, _, err = fleetctl(["models", "card", "digits@9.9.9"])
    assert code == 1 and "digits@9.9.9" in err and "Traceback" not in err
    code, _, err = fleetctl(["models", "card", "digits"])
    assert code == 2 and "name@version" in err
    code, _, err = fleetctl(["firmware", "push", str(DIGITS)])
    assert code == 1 and "exactly manifest.json and one image" in err and "Traceback" not in err

    # The device enrolled with root v1 and fetches over real HTTP.
    device_dir = tmp_path / "device"
    _device(fleet, device_dir, first_root).refresh()

    # Ceremony: offline 2-of-3 root keys, then move the root to them.
    airgap = tmp_path / "airgap"
    code, out, err = fleetctl(["keys", "init", "--out", str(airgap)])
    assert code == 0, err
    demo_key = fleet.settings.data_dir / "offline" / "root-key-1.pem"
    k1, k2 = offline.key_file(airgap, 1), offline.key_file(airgap, 2)
    code, out, err = fleetctl(
        [
            "keys",
            "rotate",
            "--role",
            "root",
            "--root-keys",
            str(airgap / "root-keys.json"),
            "--sign-with",
            str(demo_key),
            "--sign-with",
            str(k1),
            "--sign-with",
            str(k2),
        ]
    )
    assert code == 0, err
    assert "installed root version 2" in out

    # Rotate the timestamp key the air-gapped way: proposal -> sign-root -> install-root.
    proposal, signed = tmp_path / "p.json", tmp_path / "s.json"
    code, out, err = fleetctl(["keys", "rotate", "--role", "timestamp", "--out", str(proposal)])
    assert code == 0 and "sign-root" in out, err
    code, _, err = fleetctl(
        ["keys", "sign-root", str(proposal), "--key", str(k1), "--out", str(signed)]
    )
    assert code == 0, err
    code, _, err = fleetctl(["keys", "install-root", str(signed)])
    assert code == 1 and "1 valid signature(s)" in err and "2 are required" in err
    code, _, err = fleetctl(
        ["keys", "sign-root", str(signed), "--key", str(k2), "--out", str(signed)]
    )
    assert code == 0, err
    code, out, err = fleetctl(["keys", "install-root", str(signed)])
    assert code == 0 and "installed root version 3" in out, err
    code, out, _ = fleetctl(["--json", "keys", "show"])
    shown = json.loads(out)
    assert shown["version"] == 3
    assert {r["role"]: r["threshold"] for r in shown["roles"]}["root"] == 2

    # The same device, still holding root v1, follows the chain and downloads.
    device = _device(fleet, device_dir, first_root)
    device.refresh()
    info = device.get_targetinfo("models/digits/1.0.0/digits-1.0.0-onnx-int8.efpkg")
    assert info is not None
    assert Path(device.download_target(info)).read_bytes() == DIGITS.read_bytes()

    code, _, err = fleetctl(
        [
            "keys",
            "sign-root",
            str(proposal),
            "--key",
            str(demo_key),
            "--out",
            str(tmp_path / "x.json"),
        ]
    )
    assert code == 0  # signing works, but that key is no longer a root key:
    code, _, err = fleetctl(["keys", "install-root", str(tmp_path / "x.json")])
    assert code == 1 and "version 4 is expected" in err


def test_federated_candidate_is_registered(fleet: FleetServer, tmp_path: Path) -> None:
    from .ota_server import model_version

    lineage: dict[str, object] = {
        "source": "federated",
        "run_id": "run-7",
        "parent": "digits@1.0.0",
    }
    fleet._register_candidate(model_version(tmp_path, "1.2.0"), lineage)
    artifact = fleet.artifacts.resolve("digits@1.2.0:onnx-int8")
    assert artifact.uploaded_by == "federation:run-7"
    assert artifact.lineage["run_id"] == "run-7" and artifact.lineage["parent"] == "digits@1.0.0"
    assert artifact.target_path in fleet.tuf.targets().signed.targets
