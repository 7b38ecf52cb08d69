"""Shadow runs: what running a candidate beside the active model costs the app's answer.

``ModelService.predict`` on one raw digits row (the MLP, int8, recorder off) with and
without a shadow run, the sides alternating call by call, medians compared (see the
inference section).  "queue only": the shadow worker is not started, so the figure is
the copy and enqueue the answer path pays; "worker running": the candidate really runs
on a second thread, competing for the GIL and the two cores with the measured calls.
With the worker running, the sides are measured in alternating one-second blocks, not
call by call: the candidate's work for one call lands on the next one, which would bill
the side without the shadow for it.
Then the bounded queue under a candidate slower than the active model (the CNN, float32,
behind the MLP, int8), the app calling as fast as it can for a few seconds: the share
of inputs dropped (counted, never waited for) and the agreement on the ones it ran.
Three runs each; median and worst shown."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from agent.serving import ModelService
from agent.shadow import ShadowRunner

from .bench_inference import _best_us

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "fleet_server" / "factory_models"
ACTIVE = DIST / "digits-1.0.0-onnx-int8.efpkg"
SAME = DIST / "digits-1.0.0-onnx-float32.efpkg"
SLOW = DIST / "digits-cnn-1.0.0-onnx-float32.efpkg"
RUNS = 3


def _rows() -> np.ndarray:
    data = np.load(ROOT / "tests" / "data" / "digits_holdout.npz")
    rows: np.ndarray = data["x"].astype(np.float32)
    return rows


def _service() -> ModelService:
    service = ModelService(recorder=None)
    service.replace(ACTIVE)
    return service


def _queue_only() -> tuple[float, float]:
    """Median µs per predict without and with a shadow run whose worker is not started."""
    row = _rows()[0]
    plain, shadowed = _service(), _service()
    # The service's own slot, filled without starting the worker: the queue only grows.
    shadowed._shadow = ShadowRunner(shadowed.load(SAME), capacity=100_000)
    off, on = _best_us([lambda: plain.predict(row), lambda: shadowed.predict(row)], 2.0)
    return off, on


def _block_us(service: ModelService, row: np.ndarray, seconds: float) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = clock()
        service.predict(row)
        out.append(clock() - start)
    return out


def _worker_running() -> tuple[float, float]:
    """Median µs per predict, plain and shadowed (worker running), in alternating blocks."""
    row = _rows()[0]
    plain, shadowed = _service(), _service()
    runner = shadowed.start_shadow(shadowed.load(SAME))
    off: list[int] = []
    on: list[int] = []
    for _ in range(2):
        off += _block_us(plain, row, 1.0)
        on += _block_us(shadowed, row, 1.0)
        runner.idle()  # the next plain block starts with the candidate idle
    shadowed.stop_shadow()
    return float(np.median(off)) / 1000, float(np.median(on)) / 1000


def _drops(seconds: float = 3.0) -> tuple[float, float]:
    rows = _rows()
    service = _service()
    runner = service.start_shadow(service.load(SLOW), capacity=64)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        service.predict(rows[i % len(rows)])
        i += 1
    runner.idle()
    stats = runner.snapshot()
    service.stop_shadow()
    offered = stats.samples + stats.dropped
    return stats.dropped / offered, stats.agreed / max(stats.samples, 1)


def run() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for worker in (False, True):
        ratios, offs, ons = [], [], []
        for _ in range(RUNS):
            off, on = _worker_running() if worker else _queue_only()
            offs.append(off)
            ons.append(on)
            ratios.append(on / off)
        label = "worker running" if worker else "queue only"
        rows.append(
            {
                "measure": f"predict with a shadow run vs without, {label}",
                "figure": f"{np.median(ratios):.2f}x (worst {max(ratios):.2f}x)",
                "detail": f"{np.median(ons):.1f} µs vs {np.median(offs):.1f} µs (median)",
            }
        )
    drops = [_drops() for _ in range(RUNS)]
    dropped = [d for d, _ in drops]
    rows.append(
        {
            "measure": "inputs dropped, CNN candidate behind the MLP at full speed",
            "figure": f"{np.median(dropped):.1%} (worst {max(dropped):.1%})",
            "detail": f"agreement on the inputs run {np.median([a for _, a in drops]):.1%}",
        }
    )
    return rows
