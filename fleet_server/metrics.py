"""A minimal Prometheus registry: counters and gauges rendered in the text format.

Operators already scrape ``/metrics``; this keeps the server free of a metrics
client dependency while speaking exactly the exposition format (version 0.0.4).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class Metric:
    name: str
    help: str
    kind: str  # "counter" | "gauge"
    labels: tuple[str, ...] = ()
    _values: dict[LabelValues, float] = field(default_factory=dict)
    _fn: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self._values[labels] = value

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def samples(self) -> list[tuple[LabelValues, float]]:
        if self._fn is not None:
            return list(self._fn())
        with self._lock:
            return sorted(self._values.items())

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples():
            if labels:
                pairs = ",".join(
                    f'{k}="{_escape(v)}"' for k, v in zip(self.labels, labels, strict=True)
                )
                lines.append(f"{self.name}{{{pairs}}} {value:g}")
            else:
                lines.append(f"{self.name} {value:g}")
        return "\n".join(lines)


class Metrics:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Metric:
        return self._add(Metric(name, help, "counter", labels))

    def gauge(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...] = (),
        fn: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None,
    ) -> Metric:
        return self._add(Metric(name, help, "gauge", labels, _fn=fn))

    def _add(self, metric: Metric) -> Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        return "\n".join(m.render() for m in self._metrics.values()) + "\n"
