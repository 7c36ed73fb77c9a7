"""Prometheus metrics, with label children cached so the hot path does no label work.

Label values that come from clients or models (model names, tool names) are
capped: past ``MAX_LABEL_VALUES`` distinct values new ones are reported as
``other``, so a client sending random model names cannot grow the registry
without bound.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aibridge.circuit import BreakerRegistry, CircuitState
from aibridge.keypool import KeyState, Pool
from aibridge.metric_families import (
    CounterFamily,
    FamiliesCollector,
    GaugeFamily,
    HistogramFamily,
)
from aibridge.recorder.records import Interception

F = TypeVar("F", CounterFamily, GaugeFamily, HistogramFamily)

MAX_LABEL_VALUES = 500
_STATE_VALUE = {KeyState.VALID: 0.0, KeyState.TEMPORARY: 1.0, KeyState.PERMANENT: 2.0}

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_ATTEMPT_BUCKETS = (0, 1, 2, 3, 4, 5, 8, 16)


class _CappedValues:
    """Passes the first ``limit`` distinct values through, then says ``other``."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(value)
        return value


class _KeyPoolCollector(Collector):
    """``aibridge_key_pool_state``, computed from the pools at scrape time."""

    def __init__(self, pools: Callable[[], Iterable[tuple[str, Pool]]]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "aibridge_key_pool_state",
            "State of each pool key: 0 valid, 1 temporary (cooling down), 2 permanent.",
            labels=["provider", "key"],
        )
        for provider, pool in self._pools():
            for key in pool.keys:
                family.add_metric([provider, key.hint], _STATE_VALUE[key.state()])
        yield family


_CIRCUIT_VALUE = {CircuitState.CLOSED: 0.0, CircuitState.OPEN: 1.0, CircuitState.HALF_OPEN: 2.0}


class _BreakerCollector(Collector):
    """``aibridge_circuit_breaker_state``: 0 closed, 1 open, 2 half-open, at scrape time."""

    def __init__(self, registries: Callable[[], Iterable[BreakerRegistry]]) -> None:
        self._registries = registries

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "aibridge_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            labels=["provider", "endpoint", "model"],
        )
        for registry in self._registries():
            for provider, endpoint, model, state in registry.snapshot():
                family.add_metric([provider, endpoint, model], _CIRCUIT_VALUE[state])
        yield family


class Metrics:
    def __init__(
        self,
        pools: Callable[[], Iterable[tuple[str, Pool]]],
        breakers: Callable[[], Iterable[BreakerRegistry]] = tuple,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._families: list[Any] = []
        self.interceptions = self._add(
            CounterFamily(
                "aibridge_interceptions",
                "Bridged requests, by final status.",
                ["provider", "model", "route", "status", "client"],
            )
        )
        self.inflight = self._add(
            GaugeFamily(
                "aibridge_interceptions_inflight",
                "Bridged requests in flight.",
                ["provider", "route"],
            )
        )
        self.duration = self._add(
            HistogramFamily(
                "aibridge_interceptions_duration_seconds",
                "Duration of bridged requests, to the last byte.",
                ["provider", "model"],
                _LATENCY_BUCKETS,
            )
        )
        self.passthrough = self._add(
            CounterFamily(
                "aibridge_passthrough", "Passthrough requests.", ["provider", "route", "method"]
            )
        )
        self.tokens = self._add(
            CounterFamily(
                "aibridge_tokens",
                "Tokens used, by type (input, output, cache_read, cache_write, extras).",
                ["provider", "model", "type", "user"],
            )
        )
        self.prompts = self._add(
            CounterFamily("aibridge_prompts", "User prompts seen.", ["provider", "model", "user"])
        )
        self.tool_calls = self._add(
            CounterFamily(
                "aibridge_tool_calls", "Tool calls the model made.", ["provider", "model", "name"]
            )
        )
        self.transitions = self._add(
            CounterFamily(
                "aibridge_key_pool_state_transitions",
                "Key state changes, by reason.",
                ["provider", "reason"],
            )
        )
        self.exhaustions = self._add(
            CounterFamily(
                "aibridge_key_pool_exhaustions",
                "Requests for which no key could serve.",
                ["provider", "kind"],
            )
        )
        self.failover_attempts = self._add(
            HistogramFamily(
                "aibridge_key_pool_failover_attempts",
                "Keys tried per request.",
                ["provider"],
                _ATTEMPT_BUCKETS,
            )
        )
        self.upstream_duration = self._add(
            HistogramFamily(
                "aibridge_upstream_duration_seconds",
                "Time spent waiting on and reading from the upstream.",
                ["provider", "route"],
                _LATENCY_BUCKETS,
            )
        )
        self.overhead = self._add(
            HistogramFamily(
                "aibridge_overhead_seconds",
                "Time the gateway adds: total minus upstream time.",
                ["route"],
                _OVERHEAD_BUCKETS,
            )
        )
        r.register(_KeyPoolCollector(pools))
        self.breaker_trips = self._add(
            CounterFamily(
                "aibridge_circuit_breaker_trips",
                "Times a circuit breaker opened.",
                ["provider", "endpoint", "model"],
            )
        )
        self.breaker_rejects = self._add(
            CounterFamily(
                "aibridge_circuit_breaker_rejects",
                "Requests answered 503 without an upstream call because a circuit was open.",
                ["provider", "endpoint", "model"],
            )
        )
        r.register(_BreakerCollector(breakers))
        r.register(FamiliesCollector(self._families))
        self.model_label = _CappedValues()
        self.tool_label = _CappedValues()

    def _add(self, family: F) -> F:
        self._families.append(family)
        return family

    def on_breaker_trip(self, provider: str, endpoint: str, model: str) -> None:
        self.breaker_trips.get(provider, endpoint, model).inc()  # already bounded

    def observe_interception(self, rec: Interception, upstream_seconds: float) -> None:
        p, m = rec.provider, self.model_label(rec.model)
        self.interceptions.get(p, m, rec.route, str(rec.status), rec.client).inc()
        total = rec.ended_at - rec.started_at
        self.duration.get(p, m).observe(total)
        self.failover_attempts.get(p).observe(rec.attempts)
        self.upstream_duration.get(p, rec.route).observe(upstream_seconds)
        self.overhead.get(rec.route).observe(max(0.0, total - upstream_seconds))
        usage = rec.usage
        if usage is not None:
            u = rec.user
            if usage.input:
                self.tokens.get(p, m, "input", u).inc(usage.input)
            if usage.output:
                self.tokens.get(p, m, "output", u).inc(usage.output)
            if usage.cache_read:
                self.tokens.get(p, m, "cache_read", u).inc(usage.cache_read)
            if usage.cache_write:
                self.tokens.get(p, m, "cache_write", u).inc(usage.cache_write)
            for kind, count in usage.extra.items():
                if count:
                    self.tokens.get(p, m, kind, u).inc(count)
        if rec.prompt is not None:
            self.prompts.get(p, m, rec.user).inc()
        for call in rec.tool_calls:
            self.tool_calls.get(p, m, self.tool_label(call.name)).inc()
