"""Counters, gauges and histograms for the event loop's thread, without locks.

prometheus_client guards every increment with a lock, since its metrics may be
touched from any thread: about 11 µs per request across our dozen updates. Every
update here happens on the event loop's one thread, and so does the scrape
(``/metrics`` is served by the same loop), so plain attribute arithmetic is
enough: a child's ``inc``/``observe`` costs a few hundred nanoseconds.
The families are exposed through prometheus_client's own registry and text format.
"""

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        # The first bound >= value: Prometheus buckets are "less than or equal".
        self.counts[bisect_left(self.bounds, value)] += 1


Child = TypeVar("Child", CounterChild, GaugeChild, HistogramChild)


class _Family(Generic[Child]):
    """One metric name with its labelled children, created on first use and cached."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.children: dict[tuple[str, ...], Child] = {}

    def _new(self) -> Child:
        raise NotImplementedError

    def get(self, *labels: str) -> Child:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self._new()
        return child

    def collect(self) -> Metric:
        raise NotImplementedError


def _scalar_collect(family: "CounterFamily | GaugeFamily", metric: Metric) -> Metric:
    for labels, child in list(family.children.items()):
        metric.add_metric(list(labels), child.value)  # type: ignore[attr-defined]
    return metric


class CounterFamily(_Family[CounterChild]):
    def _new(self) -> CounterChild:
        return CounterChild()

    def collect(self) -> Metric:
        return _scalar_collect(
            self, CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        )


class GaugeFamily(_Family[GaugeChild]):
    def _new(self) -> GaugeChild:
        return GaugeChild()

    def collect(self) -> Metric:
        return _scalar_collect(
            self, GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        )


class HistogramFamily(_Family[HistogramChild]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(float(b) for b in sorted(buckets))
        self._le = [repr(b) for b in self.bounds] + ["+Inf"]  # 0.005, 1.0, 600.0: as Go writes them

    def _new(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in list(self.children.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, child.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(labels), buckets, child.sum)
        return family


class FamiliesCollector(Collector):
    """Exposes families through a prometheus_client registry."""

    def __init__(self, families: Sequence[CounterFamily | GaugeFamily | HistogramFamily]) -> None:
        # The caller's list, not a copy: families added later are exposed too.
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()
