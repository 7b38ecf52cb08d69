"""The MQTT grid's bookkeeping without a broker: a loop-back 'device' answers in-process."""

from __future__ import annotations

import threading

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from edgefleet_contract import flframes, flower_compat
from fleet_server.federation.grid import ERR_OFFLINE, MqttGrid, node_id_for
from fleet_server.federation.validate import UpdateCheck


class Loopback:
    """Answers train instructions by adding ``delta`` (or not at all for silent devices)."""

    def __init__(self, silent: set[str], delta: float = 0.5) -> None:
        self.silent = silent
        self.delta = delta
        self.grid: MqttGrid | None = None
        self.frames: dict[str, list[bytes]] = {}
        self.reassembler = flframes.Reassembler()

    def send(self, device_id: str, frame: bytes) -> None:
        self.frames.setdefault(device_id, []).append(frame)
        data = self.reassembler.feed(device_id, frame, 0.0)
        if data is None or device_id in self.silent:
            return
        message = flower_compat.decode(data)
        arrays = message.content.array_records["arrays"]
        new = ArrayRecord({k: Array(v.numpy() + self.delta) for k, v in arrays.items()})
        reply = Message(
            RecordDict({"arrays": new, "metrics": MetricRecord({"num-examples": 10})}),
            reply_to=message,
        )
        assert self.grid is not None
        for f in flframes.split(flower_compat.encode(reply), 300):
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
    forged = Message(
        RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=messages[0]
    )
    grid.deliver("b", flframes.split(flower_compat.encode(forged), 10_000)[0])
    assert grid.rejected["wrong_sender"] == 1
    assert list(grid.pull_messages([messages[0].metadata.message_id])) == []


def test_absurd_update_is_replaced_by_an_error_reply() -> None:
    loop = Loopback(set(), delta=1000.0)
    grid = MqttGrid(loop.send, eligible=lambda: ["a"], validator=UpdateCheck(max_update_norm=10))
    loop.grid = grid
    replies = list(grid.send_and_receive(train_messages(grid), timeout=5))
    assert replies[0].has_error() and "absurd_norm" in replies[0].error.reason
    assert grid.rejected["absurd_norm"] == 1
