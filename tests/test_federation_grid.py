"""The MQTT grid's bookkeeping without a broker: a loop-back 'device' answers in-process."""

from __future__ import annotations

import threading

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from edgefleet_common import flower_compat
from edgefleet_contract import flframes, flwire
from fleet_server.federation.grid import ERR_OFFLINE, MqttGrid, node_id_for
from fleet_server.federation.validate import UpdateCheck


class Loopback:
    """Answers train instructions by adding ``delta`` (or not at all for silent devices);
    devices in ``refuse`` answer with that reason code instead, as an agent does."""

    def __init__(
        self, silent: set[str], delta: float = 0.5, refuse: dict[str, str] | None = None
    ) -> None:
        self.silent = silent
        self.delta = delta
        self.refuse = refuse or {}
        self.grid: MqttGrid | None = None
        self.frames: dict[str, list[bytes]] = {}
        self.reassembler = flframes.Reassembler()

    def send(self, device_id: str, frame: bytes) -> None:
        self.frames.setdefault(device_id, []).append(frame)
        data = self.reassembler.feed(device_id, frame, 0.0)
        if data is None or device_id in self.silent:
            return
        envelope, arrays, _ = flwire.decode(data)
        assert envelope.kind == "train"
        if device_id in self.refuse:
            reply = flwire.encode(flwire.error_reply(envelope, self.refuse[device_id], "because"))
        else:
            new = {k: v + self.delta for k, v in arrays.items()}
            reply = flwire.encode(flwire.reply(envelope, {"num-examples": 10}), new)
        assert self.grid is not None
        for f in flframes.split(reply, 300):
            self.grid.deliver(device_id, f)


def train_messages(grid: MqttGrid) -> list[Message]:
    flower_compat.set_task_identity(1)
    arrays = ArrayRecord({"w": Array(np.zeros((20, 10), np.float32))})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"x": 1})})
    return [Message(content, n, "train") for n in grid.get_node_ids()]


def test_chunked_round_trip_and_byte_counts() -> None:
    loop = Loopback(set())
    grid = MqttGrid(loop.send, eligible=lambda: ["a", "b"], max_payload=300)
    loop.grid = grid
    replies = list(grid.send_and_receive(train_messages(grid), timeout=5))
    assert len(replies) == 2 and not any(r.has_error() for r in replies)
    assert all(len(f) <= 300 for fs in loop.frames.values() for f in fs)
    assert len(loop.frames["a"]) > 1
    exchange = grid.exchanges[-1]
    assert exchange.replies == 2 and exchange.bytes_out > 800 and exchange.bytes_in > 800
    assert sorted(exchange.participants) == ["a", "b"]


def test_offline_device_turns_into_an_immediate_error_reply() -> None:
    loop = Loopback({"b"})
    grid = MqttGrid(loop.send, eligible=lambda: ["a", "b"])
    loop.grid = grid
    threading.Timer(0.2, grid.device_offline, args=("b",)).start()
    replies = list(grid.send_and_receive(train_messages(grid), timeout=None))
    errors = [r for r in replies if r.has_error()]
    assert len(replies) == 2 and len(errors) == 1
    assert errors[0].error.code == ERR_OFFLINE
    assert errors[0].metadata.src_node_id == node_id_for("b")
    assert grid.exchanges[-1].failures["offline"] == 1


def test_silent_device_times_out_and_late_reply_is_dropped() -> None:
    loop = Loopback({"b"})
    grid = MqttGrid(loop.send, eligible=lambda: ["a", "b"])
    loop.grid = grid
    replies = list(grid.send_and_receive(train_messages(grid), timeout=0.3))
    assert len(replies) == 1
    assert grid.exchanges[-1].failures["timeout"] == 1


def test_reply_from_another_device_is_never_accepted() -> None:
    loop = Loopback({"a", "b"})
    grid = MqttGrid(loop.send, eligible=lambda: ["a", "b"])
    messages = train_messages(grid)
    grid.push_messages(messages)
    instruction = flwire.FlEnvelope(kind="train", message_id=messages[0].metadata.message_id)
    forged = flwire.encode(flwire.reply(instruction, {"num-examples": 1}))
    grid.deliver("b", flframes.split(forged, 10_000)[0])
    assert grid.rejected["wrong_sender"] == 1
    assert list(grid.pull_messages([messages[0].metadata.message_id])) == []


def test_a_refusing_device_fails_at_once_with_its_reason() -> None:
    loop = Loopback(set(), refuse={"b": flwire.NO_SAMPLES})
    grid = MqttGrid(loop.send, eligible=lambda: ["a", "b"])
    loop.grid = grid
    replies = list(grid.send_and_receive(train_messages(grid), timeout=None))
    assert len(replies) == 2 and sum(r.has_error() for r in replies) == 1
    exchange = grid.exchanges[-1]
    assert exchange.failures == {"no_samples": 1} and exchange.participants == ["a"]
    assert exchange.failed == {"b": "no_samples: because"}


def test_plain_rounds_travel_natively_and_dp_rounds_as_flower() -> None:
    from fleet_server.federation import wire

    flower_compat.set_task_identity(1)
    arrays = ArrayRecord({"w": Array(np.ones((2, 3), np.float64))})
    plain = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"lr": 0.1})}), 7, "train")
    flower_compat.assign_message_id(plain)
    envelope, got, _ = flwire.decode(wire.encode_instruction(plain))
    assert envelope.kind == "train" and envelope.config == {"lr": 0.1}
    assert got["w"].dtype == np.float64 and got["w"].shape == (2, 3)
    dp = ConfigRecord({"lr": 0.1, "local-dp-epsilon": 1.0})
    private = Message(RecordDict({"arrays": arrays, "config": dp}), 7, "train")
    flower_compat.assign_message_id(private)
    envelope, _, body = flwire.decode(wire.encode_instruction(private))
    assert envelope.kind == "flower"
    assert flower_compat.decode(body).metadata.message_id == private.metadata.message_id


def test_absurd_update_is_replaced_by_an_error_reply() -> None:
    loop = Loopback(set(), delta=1000.0)
    grid = MqttGrid(loop.send, eligible=lambda: ["a"], validator=UpdateCheck(max_update_norm=10))
    loop.grid = grid
    replies = list(grid.send_and_receive(train_messages(grid), timeout=5))
    assert replies[0].has_error() and "absurd_norm" in replies[0].error.reason
    assert grid.rejected["absurd_norm"] == 1


def test_replies_become_the_same_flower_arrays_as_array_of_ndarray() -> None:
    from fleet_server.federation import wire

    for value in (np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(5, np.float64)):
        made, stock = wire.to_array(value), Array(value)
        assert (made.data, made.dtype, made.shape, made.stype) == (
            stock.data,
            stock.dtype,
            stock.shape,
            stock.stype,
        )
        np.testing.assert_array_equal(made.numpy(), value)
