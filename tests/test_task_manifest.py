"""Format-2 manifests (task, several inputs/outputs, state) and the one preprocessing function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edgefleet_contract.errors import InputRejected, PackageError
from edgefleet_contract.package import (
    Manifest,
    manifest_json,
    pack_package,
    parse_package,
    read_package,
)
from edgefleet_contract.preprocess import (
    InputPlan,
    Preprocessing,
    canonical,
    drift_view,
    prepare,
    resize,
)

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
DATA = Path(__file__).resolve().parent / "data"


def test_format_1_packages_load_and_are_written_exactly_as_before() -> None:
    for path in sorted(DIST.glob("*.efpkg")):
        package = read_package(path)
        assert package.manifest.format == 1 and package.manifest.task is None
        doc = json.loads(manifest_json(package.manifest))
        assert "task" not in doc and "rtol" not in doc["self_test"]
        assert set(doc["preprocessing"]) == {"scale", "offset"}
        again = pack_package(package.manifest, dict(package.members))
        assert parse_package(again).manifest == package.manifest


def _format2(tmp_path: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    from fleet_server.modelkit.pack import PackRequest, pack

    spec = tmp_path / "iforest.toml"
    spec.write_text('[task]\noutput = "scores"\nhigher_is_anomalous = false\n')
    package, _ = pack(
        PackRequest(
            model=DATA / "sensor_iforest.onnx",
            name="pump",
            version="1.0.0",
            task="anomaly",
            calibration=DATA / "sensor_normal.csv",
            spec=spec,
            output=tmp_path / "p.efpkg",
        )
    )
    return package.manifest.model_dump(), dict(package.members)


def test_a_newer_task_version_or_kind_is_refused_with_upgrade_the_agent(tmp_path: Path) -> None:
    doc, _members = _format2(tmp_path)
    for change in ({"version": 2}, {"kind": "segmentation"}):
        bad = json.loads(json.dumps(doc))
        bad["task"].update(change)
        with pytest.raises(ValueError, match="upgrade the agent"):
            Manifest.model_validate(bad)


def test_format_2_rules_name_the_tensor_at_fault(tmp_path: Path) -> None:
    doc, _ = _format2(tmp_path)
    cases = [
        (("task", "output"), "nope", "the task names output 'nope'"),
        (("labels",), ["a", "b"], "a anomaly task has no labels"),
        (("task",), None, "format 2 needs a task section"),
    ]
    for path, value, message in cases:
        bad = json.loads(json.dumps(doc))
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(ValueError, match=message):
            Manifest.model_validate(bad)
    bad = json.loads(json.dumps(doc))
    bad["format"] = 1
    with pytest.raises(ValueError, match="a task section needs format 2"):
        Manifest.model_validate(bad)


def test_an_agent_that_reads_only_format_1_refuses_format_2_saying_upgrade(tmp_path: Path) -> None:
    from edgefleet_contract import safezip

    _format2(tmp_path)  # writes p.efpkg
    raw = (tmp_path / "p.efpkg").read_bytes()
    package = parse_package(raw)
    kind = safezip.ArchiveKind(noun="package", title="model package")
    with pytest.raises(PackageError, match="upgrade the agent"):
        safezip.load_manifest(
            manifest_json(package.manifest), Manifest, format_version=1, kind=kind
        )


def test_image_preprocessing_resizes_normalises_and_transposes_once() -> None:
    prep = Preprocessing(
        scale=1 / 255,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.5, 1.0],
        layout="nchw",
        image={"height": 4, "width": 4, "channels": 3},
    )
    image = np.full((8, 8, 3), 255, dtype=np.uint8)
    image[:, :, 1] = 0
    x = prepare(image, prep, shape=[-1, 3, 4, 4], dtype="float32")
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 2.0)  # (1 - 0.5) / 0.25
    np.testing.assert_allclose(x[0, 1], -1.0)  # (0 - 0.5) / 0.5
    gray = canonical(np.zeros((10, 6), np.uint8), prep, shape=[-1, 3, 4, 4])
    assert gray.shape == (1, 4, 4, 3)
    with pytest.raises(InputRejected, match="input 'image' is an image"):
        prepare(np.zeros(7), prep, shape=[-1, 3, 4, 4], dtype="float32", name="image")


def test_compiled_plan_computes_what_the_declared_steps_say() -> None:
    """The plan fuses scale/offset/mean/std into one gain and bias, laid out channel-first
    for an nchw model: the numbers must be the steps done one by one, in float32."""
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.5, 2.0, 2 * 3 * 3).astype(np.float32).tolist()  # per raw value
    prep = Preprocessing(
        scale=scale,
        offset=0.25,
        mean=[0.1, 0.2, 0.3],
        std=[0.5, 1.0, 2.0],
        layout="nchw",
        image={"height": 2, "width": 3, "channels": 3},
    )
    images = rng.integers(0, 256, (4, 2, 3, 3)).astype(np.float32)
    plan = InputPlan(prep, shape=[-1, 3, 2, 3], dtype="float32", name="image")
    got = plan.tensor(plan.canonical(images))
    mean, std = np.float32([0.1, 0.2, 0.3]), np.float32([0.5, 1.0, 2.0])
    gain = np.float32(scale).reshape(2, 3, 3) / std
    bias = (np.float32(0.25) - mean) / std
    want = np.ascontiguousarray((images * gain + bias).transpose(0, 3, 1, 2))
    assert got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # The same through the one-shot function the packer and the trainer call.
    np.testing.assert_array_equal(prepare(images, prep, shape=[-1, 3, 2, 3], dtype="float32"), want)


def test_a_camera_image_keeps_its_integers_until_the_tensor_and_gives_the_same_numbers() -> None:
    """A uint8 (or int16) image needing no conversion skips the float32 copy: the tensor is
    the float32 copy's, bit for bit, whatever the layout and steps declared."""
    rng = np.random.default_rng(8)
    image = {"height": 4, "width": 5, "channels": 3}
    steps: list[dict[str, object]] = [
        {},
        {"scale": 1 / 255},
        {"scale": 1 / 255, "mean": [0.4] * 3, "std": [0.2] * 3},
    ]
    for layout in ("nchw", "nhwc"):
        shape = [-1, 3, 4, 5] if layout == "nchw" else [-1, 4, 5, 3]
        for declared in steps:
            prep = Preprocessing.model_validate({"layout": layout, "image": image, **declared})
            plan = InputPlan(prep, shape=shape, dtype="float32")
            for dtype in (np.uint8, np.int16):
                pixels = rng.integers(0, 256, (2, 4, 5, 4)).astype(dtype)  # RGBA: alpha dropped
                kept = plan.samples(pixels)
                assert kept.dtype == dtype and plan.canonical(pixels).dtype == np.float32
                got = plan.tensor(kept)
                want = plan.tensor(pixels[..., :3].astype(np.float32))
                assert got.dtype == np.float32 and got.flags.c_contiguous
                np.testing.assert_array_equal(got, want)
    small = Preprocessing.model_validate({"image": {"height": 2, "width": 2, "channels": 3}})
    resized = InputPlan(small, shape=[-1, 2, 2, 3], dtype="float32")
    assert resized.samples(np.zeros((4, 4, 3), np.uint8)).dtype == np.float32


def test_plan_refuses_non_finite_values_and_keeps_huge_finite_ones() -> None:
    plan = InputPlan(Preprocessing(), shape=[-1, 4], dtype="float32")
    big = np.full((1, 4), 3e38, np.float32)  # finite, but their sum overflows to inf
    np.testing.assert_array_equal(plan.tensor(plan.canonical(big)), big)
    wide = InputPlan(Preprocessing(), shape=[-1, 400], dtype="float32")  # numpy's check
    for bad in (np.nan, np.inf, -np.inf):
        for where in (plan, wide):
            row = np.zeros((1, where.shape[1]), np.float32)
            row[0, 2] = bad
            with pytest.raises(InputRejected, match="NaN or infinite"):
                where.tensor(where.canonical(row))
    overflow = InputPlan(Preprocessing(scale=1e30), shape=[-1, 4], dtype="float32")
    with pytest.raises(InputRejected, match="NaN or infinite"):
        overflow.tensor(overflow.canonical(big))  # scaled past float32's range


def test_channel_drift_view_is_each_channels_mean_and_std() -> None:
    images = np.random.default_rng(5).integers(0, 256, (3, 7, 5, 3)).astype(np.float32)
    prep = Preprocessing(image={"height": 7, "width": 5, "channels": 3})
    view = drift_view(images, prep, "channels")
    flat = images.reshape(3, -1, 3).astype(np.float64)
    np.testing.assert_allclose(view, np.concatenate([flat.mean(1), flat.std(1)], axis=1))


def test_antialias_resize_matches_pillow_when_it_shrinks() -> None:
    """``resize = "antialias"`` is Pillow's BILINEAR (a filter widened by the shrink factor):
    equal to its rounding, where plain bilinear sampling is far off."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for (h, w), (height, width) in [((64, 48), (16, 12)), ((100, 37), (7, 5)), ((13, 9), (26, 18))]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        shrunk = Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR)
        pil = np.asarray(shrunk, np.float32)
        ours = resize(img.astype(np.float32)[None], height, width, "antialias")[0]
        assert ours.shape == (height, width, 3) and np.abs(ours - pil).max() <= 1.0
        if h > height:  # positive control: sampling 2x2 pixels is not what Pillow does
            plain = resize(img.astype(np.float32)[None], height, width, "bilinear")[0]
            assert np.abs(plain - pil).max() > 20
    prep = Preprocessing(image={"height": 8, "width": 8, "channels": 3, "resize": "antialias"})
    x = canonical(np.zeros((40, 30, 3), np.uint8), prep, shape=[-1, 8, 8, 3])
    assert x.shape == (1, 8, 8, 3)


def test_bilinear_resize_matches_pillow_on_an_upscale() -> None:
    """Upscaling agrees with Pillow to its rounding (both use half-pixel centres).  When it
    shrinks, Pillow widens its filter (an antialiasing average) and this resize does not,
    so shrinking is not compared: the packer and the device share this one function."""
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, (13, 9), dtype=np.uint8)
    up = resize(img.astype(np.float32)[None, :, :, None], 26, 18)[0, :, :, 0]
    pil_up = np.asarray(
        Image.fromarray(img).resize((18, 26), Image.Resampling.BILINEAR), np.float32
    )
    assert up.shape == (26, 18) and np.abs(up - pil_up).max() <= 1.0


def test_integer_and_quantized_inputs_are_cast_by_the_tensor_spec() -> None:
    x = prepare([[0.5, -1.0]], Preprocessing(), shape=[-1, 2], dtype="int8", quantization=(0.5, 1))
    assert x.dtype == np.int8 and x.tolist() == [[2, -1]]
    y = prepare([3.6], Preprocessing(), shape=[1], dtype="int64")
    assert y.dtype == np.int64 and y.tolist() == [4]


def test_detection_filters_by_score_and_suppresses_overlaps() -> None:
    from edgefleet_contract import interpret
    from edgefleet_contract.task import Detection, InputRole

    task = Detection(
        kind="detection",
        inputs=[InputRole(name="image")],
        boxes="boxes",
        scores="scores",
        box_format="cxcywh",
        postprocess="nms",
        score_threshold=0.3,
        iou_threshold=0.5,
    )
    boxes = np.array(
        [[[10, 10, 4, 4], [10.5, 10, 4, 4], [30, 30, 2, 2], [50, 50, 2, 2]]], np.float32
    )
    scores = np.array([[[0.1, 0.9], [0.2, 0.8], [0.7, 0.1], [0.2, 0.1]]], np.float32)
    (answer,) = interpret.results(task, {"boxes": boxes, "scores": scores}, ["cat", "dog"])
    found = [(d["label"], round(d["score"], 2), d["box"]) for d in answer["detections"]]
    assert found == [("dog", 0.9, [8.0, 8.0, 12.0, 12.0]), ("cat", 0.7, [29.0, 29.0, 31.0, 31.0])]


def test_multi_label_logits_turn_into_the_labels_over_the_threshold() -> None:
    from edgefleet_contract import interpret
    from edgefleet_contract.task import Classification, InputRole

    task = Classification(
        kind="classification",
        inputs=[InputRole(name="x")],
        output="y",
        scores="logits",
        multi_label=True,
        threshold=0.6,
    )
    logits = np.array([[2.0, -2.0, 0.5], [-3.0, 3.0, 3.0]], np.float32)
    answers = interpret.results(task, {"y": logits}, ["rain", "wind", "fog"])
    assert [a["labels"] for a in answers] == [["rain", "fog"], ["wind", "fog"]]


def test_an_image_bomb_is_refused_from_its_header() -> None:
    import io

    from PIL import Image

    from edgefleet_contract.preprocess import MAX_IMAGE_PIXELS, decode_image

    buffer = io.BytesIO()
    Image.new("L", (MAX_IMAGE_PIXELS // 1000 + 1, 1001)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000  # small on the wire, ~8 MB of pixels
    with pytest.raises(InputRejected, match="pixel limit; scale it down"):
        decode_image(buffer.getvalue())
    with pytest.raises(InputRejected, match="not a readable image file"):
        decode_image(b"GIF89a broken")


def _refusal(doc: dict[str, object]) -> str:
    """The one message a manifest that fails validation is refused with."""
    with pytest.raises(ValidationError) as err:
        Manifest.model_validate(doc)
    return str(err.value.errors()[0]["msg"])


def test_format_2_and_format_1_refusals_in_full(tmp_path: Path) -> None:
    from edgefleet_contract.package import read_package

    doc, _ = _format2(tmp_path)
    assert _refusal({**doc, "task": None}) == "Value error, format 2 needs a task section"
    scaled = {**doc, "preprocessing": {"scale": 2.0}}
    assert _refusal(scaled) == (
        "Value error, format 2 declares preprocessing per input, in task.inputs"
    )
    head = read_package(DIST / "digits-1.0.0-onnx-float32.efpkg").manifest.trainable
    assert head is not None
    with_head = {**doc, "trainable": head.model_dump()}
    assert _refusal(with_head) == (
        "Value error, a format 2 trainable part is a head over an embedding: name it"
    )
    assert _refusal({**doc, "format": 1}) == "Value error, a task section needs format 2"
