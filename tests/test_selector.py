"""The selector language: grammar, errors that point at the problem, version order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet_contract.errors import SelectorError
from edgefleet_contract.messages import FirmwareRef, ModelRef, ReportedState
from fleet_server.selector import parse, version_key
from fleet_server.store._conn import Dialect
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


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        # every comparison, on firmware (1.2.0 everywhere but cam-1's 1.10.0)
        ("firmware:<1.10", ["pump-1", "pump-2", "cam-2"]),
        ("firmware:<=1.2.0", ["pump-1", "pump-2", "cam-2"]),
        ("firmware:<1.2.0", []),
        ("firmware:>1.2.0", ["cam-1"]),
        ("firmware:>1.10.0", []),
        ("firmware:>=1.10.0", ["cam-1"]),
        ("firmware:=1.10.0", ["cam-1"]),
        ("firmware:1.10.0", ["cam-1"]),  # no operator means equal
        ("firmware:!=1.10.0", ["pump-1", "pump-2", "cam-2"]),
        ("agent:<0.1.0", []),
        ("agent:0.1.0", ["pump-1", "pump-2", "cam-1", "cam-2"]),
        # model versions (pump-1 digits 1.4.0, pump-2 digits 2.1.0, cam-1 detector, cam-2 none)
        ("model:digits>=2.1.0", ["pump-2"]),
        ("model:digits>2.1.0", []),
        ("model:digits<=1.4.0", ["pump-1"]),
        ("model:digits=1.4.0", ["pump-1"]),
        ("model:digits!=1.4.0", ["pump-2"]),
        ("model:detector<2", ["cam-1"]),
        ("not model:digits", ["cam-1", "cam-2"]),
        ("offline", ["pump-2"]),
        ("health:degraded", ["cam-1"]),
        ("state:enrolled and not hardware:rpi4", []),
        # keywords and keys are case-insensitive, values are not
        ("TAG:site=berlin AND NOT Online", ["pump-2"]),
        ("online OR offline", ["pump-1", "pump-2", "cam-1", "cam-2"]),
        ("id:PUMP-*", []),
        ("id:pump-?", ["pump-1", "pump-2"]),
        ("group:canary and group:canary", ["pump-1"]),
        ("((online))", ["pump-1", "cam-1", "cam-2"]),
    ],
)
def test_every_operator_and_keyword(text: str, ids: list[str]) -> None:
    assert chosen(text) == ids


def test_a_tag_value_may_hold_an_equals_sign() -> None:
    fleet = [device("a", tags={"k": "x=y"}), device("b", tags={"k": "x"})]
    sel = parse("tag:k=x=y")
    assert [d.id for d in fleet if sel.matches(d)] == ["a"]
    sel = parse("tag:k!=x=y")
    assert [d.id for d in fleet if sel.matches(d)] == ["b"]


def test_the_source_is_kept() -> None:
    assert parse(" online ").source == " online "


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("   ", "the selector is empty; use 'all' to choose every device"),
        (
            "online offline",
            "selector 'online offline': expected 'and', 'or' or the end at column 8,"
            " found 'offline'",
        ),
        (
            "online and",
            "selector 'online and': expected a condition at column 11, found the end",
        ),
        ("online)", "selector 'online)': expected 'and', 'or' or the end at column 7, found ')'"),
        ("(online", "selector '(online': expected ')' at column 8, found the end"),
        (
            "tag:",
            "selector 'tag:': expected a value after 'tag:' at column 1, found 'tag:'",
        ),
        (
            "online and colour:red",
            "selector 'online and colour:red': expected one of tag, group, id, model, firmware,"
            " agent, hardware, health, state before ':' at column 12, found 'colour:red'",
        ),
        (
            "model:@1.0",
            "selector 'model:@1.0': expected model:NAME, model:NAME@VERSION or"
            " model:NAME<VERSION at column 1, found 'model:@1.0'",
        ),
        (
            "agent:<",
            "selector 'agent:<': expected a version after 'agent:<' at column 1, found 'agent:<'",
        ),
        (
            "and",
            "selector 'and': expected a condition such as tag:site=berlin, online or (…)"
            " at column 1, found 'and'",
        ),
        ("x" * 2001, "the selector is longer than 2000 characters"),
    ],
)
def test_error_messages_in_full(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse(text)
    assert str(err.value) == message


def test_nesting_is_limited_to_max_depth() -> None:
    assert chosen("not " * 32 + "online") == ["pump-1", "cam-1", "cam-2"]
    assert chosen("(" * 32 + "online" + ")" * 32) == ["pump-1", "cam-1", "cam-2"]
    with pytest.raises(SelectorError, match=r"at most 32 levels of '\(' and 'not' at column 129"):
        parse("not " * 33 + "online")
    with pytest.raises(SelectorError, match=r"at most 32 levels .* at column 33, found '\('"):
        parse("(" * 33 + "online" + ")" * 33)
    assert parse("online" + " " * 1994).source  # 2000 characters: still accepted


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


def test_a_device_without_the_version_matches_no_comparison() -> None:
    bare = dataclasses.replace(device("bare"), firmware_version=None)
    for text in ("firmware:>=0", "firmware:<99", "firmware:!=1.0.0"):
        assert not parse(text).matches(bare), text
    assert parse("not firmware:>=0").matches(bare)


def test_a_tag_value_may_hold_a_colon() -> None:
    fleet = [device("a", tags={"url": "http:x"}), device("b", tags={"url": "http"})]
    sel = parse("tag:url=http:x")
    assert [d.id for d in fleet if sel.matches(d)] == ["a"]


def test_an_error_after_other_tokens_points_at_its_own_token() -> None:
    with pytest.raises(SelectorError) as err:
        parse("online and tag:")
    assert "at column 12, found 'tag:'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "versioned"),
    [
        ("online", False),
        ("tag:site=berlin and group:canary", False),
        ("model:digits", False),
        ("model:digits>=1.4.0", True),
        ("model:digits@1.4.0", True),
        ("firmware:<1.10.0", True),
        ("agent:>=0.1.0", True),
        ("not firmware:<1.10.0", True),
        ("online or firmware:<1.10.0", True),
        ("online and (offline or agent:>=0.1.0)", True),
    ],
)
def test_a_selector_that_compares_versions_says_so(text: str, versioned: bool) -> None:
    """The store filters such selectors in Python where SQL cannot order versions."""
    assert parse(text).versioned is versioned


def test_two_selectors_joined_with_and_match_what_both_match() -> None:
    online, berlin = parse("online"), parse("tag:site=berlin")
    both = online & berlin
    assert both.source == "(online) and (tag:site=berlin)"
    assert [d.id for d in FLEET if both.matches(d)] == [
        d.id for d in FLEET if online.matches(d) and berlin.matches(d)
    ]
    assert not both.versioned and (online & parse("firmware:>1.0.0")).versioned
    dialect = Dialect()
    (a, a_params), (b, b_params) = online.cond.sql(dialect), berlin.cond.sql(dialect)
    assert both.sql(dialect) == (f"COALESCE((({a}) AND ({b})), FALSE)", [*a_params, *b_params])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "online and firmware:>=x",
            "selector 'online and firmware:>=x': expected a version after 'firmware:>='"
            " ('x' is not one, e.g. 1.2.0) at column 12, found 'firmware:>=x'",
        ),
        (
            "online and model:digits@x",
            "selector 'online and model:digits@x': expected a version after 'model:digits@'"
            " ('x' is not one, e.g. 1.2.0) at column 12, found 'model:digits@x'",
        ),
        (
            "online and model:Digits<x",
            "selector 'online and model:Digits<x': expected a version after 'model:Digits<'"
            " ('x' is not one, e.g. 1.2.0) at column 12, found 'model:Digits<x'",
        ),
        (
            "online and model:@1.0",
            "selector 'online and model:@1.0': expected model:NAME, model:NAME@VERSION or"
            " model:NAME<VERSION at column 12, found 'model:@1.0'",
        ),
        (
            "online and agent:<",
            "selector 'online and agent:<': expected a version after 'agent:<' at column 12,"
            " found 'agent:<'",
        ),
    ],
)
def test_a_bad_version_after_other_tokens_is_named_at_its_own_token(
    text: str, message: str
) -> None:
    """The message quotes what came before the version and points at the term itself."""
    with pytest.raises(SelectorError) as err:
        parse(text)
    assert str(err.value) == message


def test_a_model_name_may_hold_capital_letters() -> None:
    upper = device("u", model="Digits@1.4.0")
    assert parse("model:Digits").matches(upper)
    assert parse("model:Digits>=1.0.0").matches(upper)
    assert not parse("model:digits").matches(upper)
