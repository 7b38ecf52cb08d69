"""The selector language: grammar, errors that point at the problem, version order."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet_contract.errors import SelectorError
from edgefleet_contract.messages import FirmwareRef, ModelRef, ReportedState
from fleet_server.selector import parse, version_key
from fleet_server.store.base import Device


def device(
    id: str,
    *,
    tags: dict[str, str] | None = None,
    groups: tuple[str, ...] = (),
    online: bool = True,
    model: str | None = "digits@1.4.0",
    fw: str = "1.2.0",
    health: str = "ok",
) -> Device:
    name, _, ver = (model or "@").partition("@")
    reported = ReportedState(
        device_id=id,
        ts=1,
        agent_version="0.1.0",
        hardware="rpi4",
        health=health,  # type: ignore[arg-type]
        model=ModelRef(name=name, version=ver, sha256="0" * 64, runtime="onnx") if model else None,
        firmware=FirmwareRef(version=fw),
    )
    return Device(
        id=id,
        name=id,
        tags=tags or {},
        groups=groups,
        state="enrolled",
        created_at=0,
        online=online,
        reported=reported,
        model_name=name or None,
        model_version=ver or None,
        firmware_version=fw,
        agent_version="0.1.0",
        hardware="rpi4",
        health=health,
    )


FLEET = [
    device("pump-1", tags={"site": "berlin"}, groups=("canary",)),
    device("pump-2", tags={"site": "berlin"}, online=False, model="digits@2.1.0"),
    device("cam-1", tags={"site": "paris"}, model="detector@1.0.0", fw="1.10.0", health="degraded"),
    device("cam-2", model=None),
]


def chosen(text: str) -> list[str]:
    sel = parse(text)
    return [d.id for d in FLEET if sel.matches(d)]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("all", ["pump-1", "pump-2", "cam-1", "cam-2"]),
        ("tag:site=berlin and model:digits<2.0 and online", ["pump-1"]),
        ("tag:site=berlin", ["pump-1", "pump-2"]),
        ("tag:site!=berlin", ["cam-1", "cam-2"]),
        ("tag:site", ["pump-1", "pump-2", "cam-1"]),
        ("group:canary or id:cam-*", ["pump-1", "cam-1", "cam-2"]),
        ("not online", ["pump-2"]),
        ("model:digits@2.1.0", ["pump-2"]),
        ("model:digits", ["pump-1", "pump-2"]),
        ("firmware:>=1.9.0", ["cam-1"]),  # 1.10 > 1.9: numeric, not lexical
        ("(tag:site=berlin or tag:site=paris) and not health:degraded", ["pump-1", "pump-2"]),
        (
            "hardware:rpi4 AND state:enrolled and agent:>=0.1",
            ["pump-1", "pump-2", "cam-1", "cam-2"],
        ),
    ],
)
def test_selects(text: str, ids: list[str]) -> None:
    assert chosen(text) == ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("tag:site=berlin and", "expected a condition at column 20, found the end"),
        ("colour:red", "expected one of tag, group"),
        ("online or (offline", "expected ')' at column 19"),
        ("online offline", "expected 'and', 'or' or the end at column 8"),
        ("firmware:>=", "a version after"),
        ("online & offline", "column 8"),
    ],
)
def test_errors_point_at_the_problem(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse(text)
    assert message in str(err.value)


@given(st.text(max_size=60))
def test_never_crashes(text: str) -> None:
    try:
        sel = parse(text)
    except SelectorError:
        return
    for d in FLEET:
        assert isinstance(sel.matches(d), bool)


@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=4),
    st.lists(st.integers(0, 30), min_size=1, max_size=4),
)
def test_version_order_is_numeric(a: list[int], b: list[int]) -> None:
    va, vb = ".".join(map(str, a)), ".".join(map(str, b))
    assert (version_key(va) < version_key(vb)) == (a < b)


def test_pre_releases_come_before_their_release_and_build_metadata_does_not_count() -> None:
    order = ["1.2.0", "1.3.0-rc1", "1.3.0-rc2", "1.3.0", "1.3.1-alpha.1", "1.10.0"]
    assert sorted(reversed(order), key=version_key) == order
    assert version_key("1.3.0+build5") == version_key("1.3.0")
    assert max(["1.3.0", "1.3.0-rc1", "1.3.0+build5"], key=version_key) in ("1.3.0", "1.3.0+build5")
    # A SemVer pre-release PEP 440 cannot read is never taken for the newest.
    assert max(["1.0.0-x.7.z", "0.9.0"], key=version_key) == "0.9.0"


def test_selectors_order_pre_releases_and_refuse_what_is_no_version() -> None:
    rc, build = device("rc", model="digits@2.0.0-rc1"), device("b", model="digits@2.0.0+build5")
    assert parse("model:digits<2.0.0").matches(rc)
    assert not parse("model:digits<2.0.0").matches(build)
    assert parse("model:digits>=2.0.0").matches(build)
    assert parse("model:digits=2.0.0").matches(build)
    odd = device("odd", fw="weekly build")
    assert not parse("firmware:>=0.0.1").matches(odd) and not parse("firmware:<99").matches(odd)
    assert parse("firmware:>=0.0.1").matches(device("ok", fw="0.0.1"))  # positive control
    for text in ("firmware:>=banana", "model:digits<2.x", "agent:=next"):
        with pytest.raises(SelectorError, match="is not one"):
            parse(text)


def test_the_next_candidate_version_ignores_pre_releases_and_build_metadata() -> None:
    from fleet_server.federation.candidate import next_version

    assert next_version("1.3.0-rc1") == "1.4.0"
    assert next_version("1.3.0+build5", ["1.4.0-rc1"]) == "1.5.0"
    assert next_version("1.9.0", ["1.10.0"]) == "1.11.0"


def test_the_newest_trainable_package_is_a_release_over_its_pre_release(tmp_path: Path) -> None:
    from fleet_server.federation.packages import DIST, find_package

    from .ota_server import model_version

    source = DIST / "digits-1.0.0-onnx-float32.efpkg"
    for version in ("1.3.0-rc1", "1.3.0", "1.2.9", "1.3.0-rc2"):
        model_version(tmp_path, version, source)
    assert find_package("digits", [tmp_path]).manifest.version == "1.3.0"
