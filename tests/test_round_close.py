"""Over-selection and round deadlines: a round closes with the quorum, stragglers counted.

The grid's clock is a counter and the straggling devices never answer, so nothing
depends on real time."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from edgefleet_common import flower_compat
from edgefleet_contract import flframes, flwire
from fleet_server.federation.deadline import RoundClose, round_close
from fleet_server.federation.grid import MqttGrid, node_id_for
from fleet_server.federation.spec import RunSpec

from .test_federation_strategies import federate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Clock:
    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def answering_grid(
    devices: list[str], silent: set[str], close: RoundClose, clock: Clock
) -> MqttGrid:
    """Devices reply at once with a training result, except the silent ones."""
    grid: MqttGrid

    def send(device: str, frame: bytes) -> None:
        if device in silent:
            return
        envelope, _, _ = flwire.decode(frame[flframes.HEADER_SIZE :])
        answer = {"w": np.ones(2, np.float32)}
        reply = flwire.encode(flwire.reply(envelope, {"num-examples": 1}), answer)
        for f in flframes.split(reply, 10**6):
            grid.deliver(device, f)

    grid = MqttGrid(send, eligible=lambda: devices, max_payload=10**6, close=close, clock=clock)
    return grid


def instructions(grid: MqttGrid, kind: str = "train") -> list[Message]:
    flower_compat.set_task_identity(5)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))})})
    return [Message(content, n, kind) for n in grid.get_node_ids()]


def test_deadline_closes_the_round_with_the_quorum_and_counts_stragglers() -> None:
    devices = [f"d{i}" for i in range(5)]
    grid = answering_grid(devices, {"d3", "d4"}, RoundClose(3, deadline_s=10), Clock(4.0))
    replies = list(grid.send_and_receive(instructions(grid), timeout=1000))
    assert len(replies) == 3
    exchange = grid.exchanges[-1]
    assert exchange.replies == 3 and dict(exchange.failures) == {"straggler": 2}
    assert sorted(exchange.participants) == ["d0", "d1", "d2"]
    assert grid.owed("d3") == 0  # a straggler's late reply is no longer awaited


def test_deadline_without_the_quorum_waits_until_the_timeout() -> None:
    devices = [f"d{i}" for i in range(5)]
    grid = answering_grid(devices, {"d2", "d3", "d4"}, RoundClose(3, deadline_s=10), Clock(4.0))
    replies = list(grid.send_and_receive(instructions(grid), timeout=40))
    assert len(replies) == 2
    assert dict(grid.exchanges[-1].failures) == {"timeout": 3}


def test_evaluation_rounds_are_not_cut_short() -> None:
    devices = ["d0", "d1", "d2"]
    grid = answering_grid(devices, {"d2"}, RoundClose(1, over_select=0.5, deadline_s=1), Clock(4.0))
    list(grid.send_and_receive(instructions(grid, "evaluate"), timeout=40))
    assert dict(grid.exchanges[-1].failures) == {"timeout": 1}


def test_over_selection_needs_what_the_round_would_have_sampled() -> None:
    rule = RoundClose(2, over_select=0.3)
    assert rule.needed(13) == 10 and rule.needed(4) == 3 and rule.needed(2) == 2
    assert round_close(RunSpec()) is None
    assert round_close(RunSpec(over_select=0.3, min_clients=4)) == RoundClose(4, 0.3, None)


def test_over_selected_run_trains_on_the_fastest_and_counts_the_rest() -> None:
    """A real run (Flower FedAvg, the agent's worker): 5 devices sampled, 2 never answer;
    with over_select 0.6 each round closes at 3 good updates instead of waiting 5 minutes."""
    spec = RunSpec(
        model="digits",
        rounds=2,
        min_clients=3,
        over_select=0.6,
        round_timeout_s=300,
        local={"epochs": 2},  # type: ignore[arg-type]
    )
    curve, grid = federate(spec, silent={"s3", "s4"})
    train = [e for e in grid.exchanges if e.message_type == "train"]
    assert [e.sent for e in train] == [5, 5]
    assert [e.replies for e in train] == [3, 3]
    assert all(dict(e.failures) == {"straggler": 2} for e in train)
    assert curve[-1] > 0.4, curve
    assert node_id_for("s3") != node_id_for("s4")
