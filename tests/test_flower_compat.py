"""The one module touching Flower's non-public names, and the frame codec: checked on their own."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from edgefleet_common import flower_compat
from edgefleet_contract import flframes
from edgefleet_contract.errors import ContractError


def instruction() -> Message:
    flower_compat.set_task_identity(7)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))}),
            "config": ConfigRecord({"lr": 0.1, "server-round": 2}),
        }
    )
    return Message(content, 123456789, "train", group_id="2")


def test_installed_flwr_is_the_checked_version() -> None:
    flower_compat.check_version()


def test_task_identity_stamps_run_and_source_node() -> None:
    message = instruction()
    assert message.metadata.run_id == 7
    assert message.metadata.src_node_id == flower_compat.SERVER_NODE_ID


def test_message_id_is_assigned_and_survives_the_wire() -> None:
    message = instruction()
    assert message.metadata.message_id == ""
    message_id = flower_compat.assign_message_id(message)
    back = flower_compat.decode(flower_compat.encode(message))
    assert back.metadata.message_id == message_id
    assert back.metadata.dst_node_id == 123456789
    np.testing.assert_array_equal(
        back.content.array_records["arrays"]["w"].numpy(), np.arange(6).reshape(2, 3)
    )
    assert back.content.config_records["config"]["lr"] == 0.1


def test_replies_and_error_replies_point_back_at_the_instruction() -> None:
    message = instruction()
    message_id = flower_compat.assign_message_id(message)
    ok = Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=message)
    err = Message(Error(901, "gone"), reply_to=message)
    for reply in (ok, err):
        back = flower_compat.decode(flower_compat.encode(reply))
        assert back.metadata.reply_to_message_id == message_id
    assert flower_compat.decode(flower_compat.encode(err)).error.reason == "gone"


@pytest.mark.parametrize("junk", [b"", b"\x00\x01garbage", b"\xff" * 64])
def test_garbage_is_a_contract_error(junk: bytes) -> None:
    with pytest.raises(ContractError):
        flower_compat.decode(junk)


def test_empty_run_has_the_id() -> None:
    assert flower_compat.empty_run(42).run_id == 42


def test_frames_split_and_reassemble_in_any_order() -> None:
    payload = bytes(range(256)) * 40
    frames = flframes.split(payload, 1000)
    assert len(frames) > 1 and all(len(f) <= 1000 for f in frames)
    r = flframes.Reassembler()
    out = [r.feed("d", f, 0.0) for f in reversed(frames)]
    assert out[-1] == payload and all(o is None for o in out[:-1])
    assert r.pending == 0


def test_reassembly_limits_are_counted_not_raised() -> None:
    r = flframes.Reassembler(max_message=5000, max_partial=1, timeout_s=10)
    big = flframes.split(b"x" * 6000, 1000)
    assert r.feed("d", big[0], 0.0) is None
    assert r.dropped["oversized"] == 1
    assert r.feed("d", b"nonsense", 0.0) is None
    assert r.dropped["malformed"] == 1
    a = flframes.split(b"a" * 3000, 1000)
    b = flframes.split(b"b" * 3000, 1000)
    r.feed("d", a[0], 0.0)
    r.feed("e", b[0], 0.0)  # only one partial message may be in flight
    assert r.dropped["evicted"] == 1
    r.feed("e", b[1], 20.0)  # the partial is too old by now
    assert r.dropped["timeout"] == 1
    with pytest.raises(ContractError):
        flframes.split(b"x", flframes.HEADER_SIZE)
