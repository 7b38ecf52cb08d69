"""The wire contract: topics, payload models, and the codec that never raises."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import field_validator, model_validator

from edgefleet_common.backoff import Backoff
from edgefleet_common.logs import redact
from edgefleet_contract import topics
from edgefleet_contract.codec import Accepted, Codec, Rejected, RejectReason
from edgefleet_contract.ids import is_device_id
from edgefleet_contract.messages import (
    Command,
    CommandAck,
    DesiredState,
    DriftStats,
    FeatureDrift,
    InferenceStats,
    LatencySummary,
    Message,
    ModelRef,
    Reading,
    ReportedState,
    Status,
    SystemStats,
    TargetRef,
    Telemetry,
)
from edgefleet_contract.topics import Channel

SHA = "ab" * 32


def full_telemetry(device_id: str = "dev-1") -> Telemetry:
    return Telemetry(
        device_id=device_id,
        batch_id="boot1-7",
        seq=7,
        ts=1_700_000_000.0,
        window_s=10.0,
        system=SystemStats(
            cpu_percent=12.5,
            mem_used_bytes=1,
            mem_total_bytes=2,
            rss_bytes=3,
            disk_used_bytes=4,
            disk_total_bytes=5,
            temperature_c=48.0,
            uptime_s=100.0,
        ),
        inference=InferenceStats(
            model="digits",
            version="1.0.0",
            count=10,
            errors=0,
            throughput_per_s=1.0,
            latency=LatencySummary(p50_ms=1, p95_ms=2, p99_ms=3, max_ms=4, mean_ms=1.5),
            confidence_hist=[0] * 9 + [10],
            class_counts={"3": 10},
        ),
        drift=DriftStats(samples=10, score=0.3, features=[FeatureDrift(feature=5, psi=0.3)]),
        readings=[Reading(ts=1_700_000_000.0, name="temp.c", value=21.5)],
    )


EXAMPLES = [
    (Channel.TELEMETRY, full_telemetry()),
    (Channel.STATUS, Status(device_id="dev-1", online=True, reason="connected", ts=1.0)),
    (
        Channel.STATE,
        ReportedState(
            device_id="dev-1",
            ts=1.0,
            agent_version="0.1.0",
            model=ModelRef(name="digits", version="1.0.0", sha256=SHA, runtime="onnx"),
            health="ok",
        ),
    ),
    (Channel.ACK, CommandAck(device_id="dev-1", command_id="c1", ts=1.0, status="done")),
    (
        Channel.CMD,
        Command(
            id="c1",
            name="set_desired",
            ts=1.0,
            args=DesiredState(
                version=3,
                model=TargetRef(
                    kind="model", name="digits", version="1.1.0", target="models/digits-1.1.0"
                ),
            ).model_dump(),
        ),
    ),
]


@pytest.mark.parametrize(("channel", "message"), EXAMPLES, ids=[c.value for c, _ in EXAMPLES])
def test_every_payload_round_trips(channel: Channel, message: object) -> None:
    codec = Codec()
    data = codec.encode(message)  # type: ignore[arg-type]
    result = codec.decode(topics.topic("dev-1", channel), data)
    assert isinstance(result, Accepted), result
    assert result.message == message
    assert result.device_id == "dev-1"
    assert codec.rejections == {}


def test_topic_layout() -> None:
    assert topics.topic("dev-1", Channel.FL_IN) == "devices/dev-1/fl/in"
    assert topics.subscription(Channel.TELEMETRY) == "devices/+/telemetry"
    assert topics.parse("devices/dev-1/fl/out") == ("dev-1", Channel.FL_OUT)
    for bad in ["devices/dev-1", "devices/+/state", "other/dev-1/state", "devices/a/b/c", ""]:
        assert topics.parse(bad) is None
    with pytest.raises(ValueError, match="invalid device id"):
        topics.topic("a/#", Channel.STATE)


@given(st.text(max_size=80))
def test_device_id_rule(value: str) -> None:
    ok = is_device_id(value)
    assert ok == (
        0 < len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in value)
    )


def reason_of(payload: bytes, topic: str = "devices/dev-1/telemetry") -> RejectReason:
    result = Codec().decode(topic, payload)
    assert isinstance(result, Rejected), result
    return result.reason


def test_rejections_are_typed() -> None:
    good = json.loads(Codec().encode(full_telemetry()))
    assert reason_of(b"\xff\xfe garbage") is RejectReason.NOT_JSON
    assert reason_of(b"[1, 2]") is RejectReason.NOT_OBJECT
    assert reason_of(json.dumps({k: v for k, v in good.items() if k != "v"}).encode()) is (
        RejectReason.MISSING_VERSION
    )
    assert reason_of(json.dumps({**good, "v": 2}).encode()) is RejectReason.UNKNOWN_VERSION
    assert reason_of(json.dumps({**good, "seq": "x"}).encode()) is RejectReason.INVALID
    assert reason_of(json.dumps({**good, "extra": 1}).encode()) is RejectReason.INVALID
    assert reason_of(json.dumps(good).encode(), "devices/dev-2/telemetry") is (
        RejectReason.DEVICE_MISMATCH
    )
    assert reason_of(b"{}", "devices/dev-1/fl/out") is RejectReason.BINARY_CHANNEL
    assert reason_of(b"{}", "elsewhere/x") is RejectReason.UNKNOWN_TOPIC
    assert reason_of(b" " * (300 * 1024)) is RejectReason.TOO_LARGE
    # NaN and infinity are not numbers a reader can aggregate.
    nan = json.dumps(good).replace('"cpu_percent": 12.5', '"cpu_percent": NaN').encode()
    assert b"NaN" in nan
    assert reason_of(nan) in (RejectReason.INVALID, RejectReason.NOT_JSON)


def test_oversized_fields_are_refused() -> None:
    good = json.loads(Codec().encode(full_telemetry()))
    good["readings"] = [{"ts": 1.0, "name": "x", "value": 1.0}] * 10_001
    codec = Codec(max_payload=10 * 1024 * 1024)
    result = codec.decode("devices/dev-1/telemetry", json.dumps(good).encode())
    assert isinstance(result, Rejected) and result.reason is RejectReason.INVALID
    good = json.loads(Codec().encode(full_telemetry()))
    good["batch_id"] = "x" * 129
    assert reason_of(json.dumps(good).encode()) is RejectReason.INVALID


def test_rejections_are_counted() -> None:
    codec = Codec()
    for _ in range(3):
        codec.decode("devices/dev-1/status", b"nope")
    codec.decode("devices/dev-1/status", b"{}")
    assert codec.rejections == {RejectReason.NOT_JSON: 3, RejectReason.MISSING_VERSION: 1}


def test_rejection_details_say_what_is_wrong_and_where() -> None:
    """Each reason's detail, in full: it is what an operator reads in the logs."""
    codec = Codec()
    good = json.loads(codec.encode(full_telemetry()))
    on = "devices/dev-1/telemetry"

    def detail(payload: bytes, topic: str = on) -> str:
        result = codec.decode(topic, payload)
        assert isinstance(result, Rejected), result
        assert result.topic == topic
        return result.detail

    assert detail(b"[1, 2]") == "the payload must be a JSON object"
    nov = {k: v for k, v in good.items() if k != "v"}
    assert detail(json.dumps(nov).encode()) == "no schema version field 'v'"
    assert detail(json.dumps({**good, "v": 2}).encode()) == (
        "unsupported schema version (this reader knows v1)"
    )
    not_int = "seq: Input should be a valid integer, unable to parse string as an integer"
    assert detail(json.dumps({**good, "seq": "x"}).encode()) == not_int
    two = {**good, "seq": "x", "window_s": "y"}
    assert detail(json.dumps(two).encode()) == f"{not_int} (+1 more)"
    nested = {**good, "system": {**good["system"], "cpu_percent": 500}}
    assert detail(json.dumps(nested).encode()) == (
        "system.cpu_percent: Input should be less than or equal to 100"
    )
    not_a_dict = {**good, "system": [1]}  # a nested object that is not one is just invalid
    assert detail(json.dumps(not_a_dict).encode()) == ("system: Input should be an object")
    assert detail(json.dumps(good).encode(), "devices/dev-2/telemetry") == (
        "payload claims device 'dev-1' on the topic of 'dev-2'"
    )
    assert detail(b"{}", "devices/dev-1/fl/out") == "fl/out carries binary frames"
    assert detail(b"{}", "elsewhere/x") == "not a devices/{id}/... topic"
    assert detail(b"\xff garbage").startswith("not valid JSON: Invalid JSON: ")
    small = Codec(max_payload=5).decode("devices/dev-1/status", b"123456")
    assert isinstance(small, Rejected) and small.detail == "6 bytes exceeds the limit of 5"
    at_limit = Codec(max_payload=6).decode("devices/dev-1/status", b"123456")
    assert isinstance(at_limit, Rejected) and at_limit.reason is RejectReason.NOT_OBJECT


class _Loud(Message):
    """A schema whose validation message is longer than any log line should be."""

    text: str

    @field_validator("text")
    @classmethod
    def _never(cls, value: str) -> str:
        raise ValueError("x" * 1000)


def test_rejection_detail_is_capped_and_printed_with_its_topic() -> None:
    result = Codec().decode_as(_Loud, b'{"text": "a"}', topic="devices/dev-1/state")
    assert isinstance(result, Rejected) and result.reason is RejectReason.INVALID
    assert len(result.detail) == 500 and result.detail.startswith("text: Value error, xxx")
    assert str(result) == f"rejected on devices/dev-1/state: invalid: {result.detail}"
    bare = Codec().decode_as(_Loud, b"[", topic="")
    assert isinstance(bare, Rejected) and bare.topic == ""
    assert str(bare) == f"rejected: not_json: {bare.detail}"


class _Whole(Message):
    """A schema whose check is on the whole object, so its error has no field location."""

    a: int

    @model_validator(mode="after")
    def _never(self) -> _Whole:
        raise ValueError("never whole")


def test_an_error_about_the_whole_payload_says_so_and_topics_are_kept() -> None:
    codec = Codec()
    whole = codec.decode_as(_Whole, b'{"a": 1}')
    assert isinstance(whole, Rejected) and whole.topic == ""
    assert whole.detail == "payload: Value error, never whole"
    big = Codec(max_payload=5).decode_as(_Whole, b"123456", topic="devices/dev-1/state")
    assert isinstance(big, Rejected) and big.topic == "devices/dev-1/state"
    accepted = codec.decode("devices/dev-1/telemetry", codec.encode(full_telemetry()))
    assert isinstance(accepted, Accepted)
    assert (accepted.device_id, accepted.channel) == ("dev-1", Channel.TELEMETRY)
    assert accepted.message == full_telemetry()


def test_encoding_leaves_unset_fields_out() -> None:
    status = Status(device_id="dev-1", online=True, reason="connected")
    assert json.loads(Codec().encode(status)) == {
        "v": 1,
        "device_id": "dev-1",
        "online": True,
        "reason": "connected",
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(channel=st.sampled_from(list(Channel)), payload=st.binary(max_size=2048))
def test_codec_never_raises_on_random_bytes(channel: Channel, payload: bytes) -> None:
    result = Codec().decode(topics.topic("dev-1", channel), payload)
    assert isinstance(result, Accepted | Rejected)


@settings(max_examples=300)
@given(channel=st.sampled_from(list(Channel)), value=json_values)
def test_codec_never_raises_on_random_json(channel: Channel, value: object) -> None:
    result = Codec().decode(topics.topic("dev-1", channel), json.dumps(value).encode())
    assert isinstance(result, Accepted | Rejected)


@settings(max_examples=200)
@given(
    index=st.integers(0, len(EXAMPLES) - 1),
    field=st.text(min_size=1, max_size=12),
    value=json_values,
)
def test_codec_never_raises_on_mutated_messages(index: int, field: str, value: object) -> None:
    channel, message = EXAMPLES[index]
    body = json.loads(Codec().encode(message))  # type: ignore[arg-type]
    body[field] = value
    result = Codec().decode(topics.topic("dev-1", channel), json.dumps(body).encode())
    assert isinstance(result, Accepted | Rejected)


def test_backoff_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[5:]) > 4.0  # grew toward the cap
    assert len({round(d, 6) for d in delays[5:]}) > 1  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_redact_scrubs_secrets() -> None:
    line = 'Authorization: Bearer abc.def password="hunter2" token=XYZ123'
    cleaned = redact(line)
    assert "abc.def" not in cleaned and "hunter2" not in cleaned and "XYZ123" not in cleaned
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----"
    assert "MHc" not in redact(f"key: {pem}")
