"""The server's Prometheus metrics, kept and rendered by ``prometheus_client``.

Counts the server increments itself are :class:`prometheus_client.Counter`\\ s;
figures another part already keeps (the broker's restart count, a queue's depth)
are read when ``/metrics`` is scraped, as a counter when they only ever grow
(``*_total``) and as a gauge otherwise.  Each server has its own registry, so
two servers in one process (the tests) never share a figure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics", "Samples"]

# ``*_created`` series would double every counter's series for a figure nothing reads.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

LabelValues = tuple[str, ...]
Samples = Callable[[], Iterable[tuple[LabelValues, float]]]
"""What a read-on-scrape metric calls: ``(label values, value)`` pairs."""


class _ReadOnScrape(Collector):
    def __init__(
        self,
        kind: type[CounterMetricFamily | GaugeMetricFamily],
        name: str,
        help: str,
        labels: tuple[str, ...],
        fn: Samples,
    ) -> None:
        self._kind, self._name, self._help, self._labels, self._fn = kind, name, help, labels, fn

    def collect(self) -> Iterator[Metric]:
        family = self._kind(self._name, self._help, labels=self._labels)
        for values, value in self._fn():
            family.add_metric(list(values), value)
        yield family

    def describe(self) -> Iterator[Metric]:  # so the registry refuses a duplicate name
        yield self._kind(self._name, self._help, labels=self._labels)


class Metrics:
    """One server's metrics; a name registered twice raises ``ValueError``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter this server increments (``name`` ends in ``_total``)."""
        return Counter(name, help, labels, registry=self.registry)

    def counted(self, name: str, help: str, labels: tuple[str, ...] = (), *, fn: Samples) -> None:
        """A counter another part keeps, read from ``fn`` at each scrape."""
        self.registry.register(_ReadOnScrape(CounterMetricFamily, name, help, labels, fn))

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = (), *, fn: Samples) -> None:
        """A figure that goes up and down, read from ``fn`` at each scrape."""
        self.registry.register(_ReadOnScrape(GaugeMetricFamily, name, help, labels, fn))

    def value(self, name: str, **labels: str) -> float:
        """The current value of one series (0 when it has none yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> str:
        """The text exposition format (version 0.0.4), as ``/metrics`` serves it."""
        return prometheus_client.generate_latest(self.registry).decode()
