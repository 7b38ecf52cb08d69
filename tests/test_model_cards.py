"""Model cards: one for every registered version, as JSON and Markdown, behind the API's auth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgefleet_contract.messages import LatencySummary, Telemetry
from edgefleet_contract.package import MANIFEST_NAME, Manifest, pack_package, read_package
from fleet_server.cbpe import CALIBRATION_NAME, Calibration

from .harness import inference_stats, system_stats
from .ota_server import DIGITS, MODELS, make_env, model_version

FLOAT = MODELS / "digits-1.0.0-onnx-float32.efpkg"


def _batch(device: str, seq: int, version: str, labels: int, right: int) -> Telemetry:
    return Telemetry(
        device_id=device,
        batch_id=f"boot0-{seq}",
        seq=seq,
        ts=time.time() - 60,
        window_s=10,
        system=system_stats(
            cpu_percent=5, mem_used_bytes=10**8, mem_total_bytes=10**9, rss_bytes=50 * 2**20
        ),
        inference=inference_stats(
            version=version,
            count=100,
            latency=LatencySummary(p50_ms=1, p95_ms=4, p99_ms=5, max_ms=6, mean_ms=1),
            feedback_count=labels,
            feedback_correct=right,
        ),
    )


def test_every_registered_version_has_a_card_in_json_and_markdown(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    operator, viewer = env.login("olga"), env.login("vic")
    for path in (DIGITS, FLOAT, model_version(tmp_path, "2.0.0")):
        assert env.push("model", path, operator).status_code == 201
    for i, site in enumerate(("berlin", "paris")):
        env.store.create_device(f"d{i}", name=f"d{i}", tags={"site": site}, now=time.time())
    env.store.insert_telemetry(
        [_batch("d0", 1, "1.0.0", 200, 190), _batch("d1", 1, "1.0.0", 200, 150)],
        received_at=time.time(),
    )
    versions = {(a.name, a.version) for a in env.store.find_artifacts(kind="model").items}
    assert versions == {("digits", "1.0.0"), ("digits", "2.0.0")}
    for name, version in versions:
        r = env.client.get(f"/api/v1/models/{name}/{version}/card", headers=viewer)
        assert r.status_code == 200, r.text
        card = r.json()
        assert card["model_details"]["version"]["name"] == version
        assert card["model_parameters"]["input_format"] and card["model_parameters"]["labels"]
        assert card["edge"]["runtimes"][0]["opset"] > 0
        assert len(card["edge"]["drift_reference_sha256"][0]) == 64
        md = env.client.get(
            f"/api/v1/models/{name}/{version}/card", params={"format": "md"}, headers=viewer
        )
        assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
        assert md.text.startswith(f"# Model card: {name} {version}")

    one = env.client.get("/api/v1/models/digits/1.0.0/card", headers=viewer).json()
    flavors = {f["flavor"] for f in one["model_parameters"]["flavors"]}
    assert flavors == {"onnx-int8", "onnx-float32"}
    agreement = one["edge"]["int8_vs_float"]
    assert agreement is not None and 0.5 <= agreement["agreement"] <= 1
    overall = one["quantitative_analysis"]["performance_metrics"][0]
    assert (overall["labels"], overall["accuracy"]) == (400, 340 / 400)
    assert overall["low"] < 0.85 < overall["high"]
    slices = {s["slice"]: s for s in one["quantitative_analysis"]["slices"]}
    assert slices["tag:site=paris"]["accuracy"] == 0.75
    assert slices["tag:site=paris"]["high"] < slices["tag:site=berlin"]["low"]
    assert one["edge"]["hardware"][0]["rss_mb"] == 50.0
    # Over time, per cohort and device: one hour here, with its interval.
    paris = one["quantitative_analysis"]["slice_timelines"]["tag:site=paris"]
    assert [(h["labels"], h["accuracy"]) for h in paris] == [(200, 0.75)]
    assert paris[0]["low"] < 0.75 < paris[0]["high"]
    assert one["quantitative_analysis"]["slice_timelines"]["device:d0"][0]["accuracy"] == 0.95
    assert len(one["quantitative_analysis"]["timeline"]) == 1
    limits = [x["description"] for x in one["considerations"]["limitations"]]
    assert limits == ["lowest measured accuracy on slice tag:site=paris"]
    # 2.0.0 has no telemetry: its card says accuracy is unmeasured.
    two = env.client.get("/api/v1/models/digits/2.0.0/card", headers=viewer).json()
    assert two["quantitative_analysis"]["performance_metrics"][0]["accuracy"] is None
    assert "no feedback labels" in two["considerations"]["limitations"][0]["description"]
    no_estimate = two["quantitative_analysis"]["estimated_accuracy"]
    assert no_estimate["reasons"] == ["no answers"]  # the shipped package carries a calibration


def test_a_card_is_rebuilt_from_the_blob_when_its_facts_are_missing(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    operator = env.login("olga")
    sha = env.push("model", DIGITS, operator).json()["sha256"]
    kept = env.registry.cards.root / f"{sha}.json"
    assert kept.exists()  # taken at registration
    kept.unlink()  # as for a version registered before cards existed
    r = env.client.get("/api/v1/models/digits/1.0.0/card", headers=operator)
    assert r.status_code == 200 and kept.exists()


def test_the_card_route_checks_who_asks_and_what(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    viewer = env.login("vic")
    assert env.push("model", DIGITS, env.login("olga")).status_code == 201
    url = "/api/v1/models/digits/1.0.0/card"
    assert env.client.get(url).status_code == 401
    assert env.client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert env.client.get(url, params={"format": "md"}).status_code == 401
    missing = env.client.get("/api/v1/models/digits/9.9.9/card", headers=viewer)
    assert missing.status_code == 404 and "digits@9.9.9" in missing.json()["detail"]
    bad = env.client.get(url, params={"format": "pdf"}, headers=viewer)
    assert bad.status_code == 422
    assert env.client.get("/api/v1/models/..%2Fx/1.0.0/card", headers=viewer).status_code in (
        404,
        422,
    )


def test_a_calibrated_package_gets_a_label_free_estimate(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    viewer = env.login("vic")
    pkg = read_package(DIGITS)
    manifest = Manifest.model_validate({**pkg.manifest.model_dump(), "version": "4.0.0"})
    table = Calibration(counts=(0,) * 8 + (100, 900), correct=(0,) * 8 + (60, 810))
    members = {**pkg.members, CALIBRATION_NAME: json.dumps(table.to_json()).encode()}
    members.pop(MANIFEST_NAME, None)
    path = tmp_path / "digits-4.0.0-onnx-int8.efpkg"
    path.write_bytes(pack_package(manifest, members))
    assert env.push("model", path, env.login("olga")).status_code == 201
    env.store.create_device("d0", name="d0", tags={}, now=time.time())
    batch = _batch("d0", 1, "4.0.0", 0, 0)
    assert batch.inference is not None
    hist = [0] * 8 + [100, 100]
    batch = batch.model_copy(
        update={"inference": batch.inference.model_copy(update={"confidence_hist": hist})}
    )
    env.store.insert_telemetry([batch], received_at=time.time())
    card = env.client.get("/api/v1/models/digits/4.0.0/card", headers=viewer).json()
    est = card["quantitative_analysis"]["estimated_accuracy"]
    assert est["method"] == "CBPE" and est["trusted"], est
    assert est["accuracy"] == pytest.approx((60 + 90) / 200)  # 0.6 and 0.9 per bin
    assert est["low"] < est["accuracy"] < est["high"]
    plain = env.client.get("/api/v1/models/digits/1.0.0/card", headers=viewer)
    assert plain.status_code == 404  # only 4.0.0 was pushed here
