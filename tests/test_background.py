"""The shared daemon-thread holder: restartable, stoppable mid-wait, a failed step survived."""

from __future__ import annotations

import logging
import threading

import pytest

from edgefleet_common.background import BackgroundThread, IntervalThread

log = logging.getLogger(__name__)


def test_a_failed_step_is_logged_counted_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    errors: list[int] = []
    third = threading.Event()

    def step() -> None:
        calls.append(1)
        if len(calls) == 3:
            third.set()
        if len(calls) == 1:
            raise RuntimeError("boom")

    loop = IntervalThread(
        "t-fail",
        step,
        interval_s=lambda: 0.0,
        log=log,
        failure="step failed; will retry",
        on_error=lambda: errors.append(1),
    )
    with caplog.at_level(logging.ERROR):
        loop.start()
        assert third.wait(10)
        loop.stop(10)
    assert errors == [1]
    assert "step failed; will retry" in caplog.text


def test_stop_ends_a_long_wait_and_start_runs_the_loop_again() -> None:
    ran = threading.Event()

    def step() -> float:
        ran.set()
        return 3600.0  # the next run would be an hour away

    loop = IntervalThread(
        "t-restart", step, interval_s=lambda: 3600.0, log=log, failure="x", first_wait_s=0.0
    )
    for _ in range(2):
        ran.clear()
        loop.start()
        assert ran.wait(10)
        thread = loop.thread
        assert thread is not None
        loop.stop(10)
        assert not thread.is_alive()
        assert loop.thread is None


def test_a_background_thread_sees_its_stop_event() -> None:
    started = threading.Event()
    seen: list[bool] = []

    def run() -> None:
        started.set()
        seen.append(holder.stopping.wait(10))

    holder = BackgroundThread("t-plain", run)
    holder.start()
    assert started.wait(10)
    holder.stop(10)
    assert seen == [True]
