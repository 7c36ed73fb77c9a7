"""The lock-free metric families against prometheus_client's own parser and semantics."""

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aibridge.metric_families import CounterFamily, FamiliesCollector, GaugeFamily, HistogramFamily


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counter_and_gauge_expose_their_values() -> None:
    registry = CollectorRegistry()
    counter = CounterFamily("t_requests", "Requests.", ["route"])
    gauge = GaugeFamily("t_inflight", "In flight.", ["route"])
    registry.register(FamiliesCollector([counter, gauge]))
    counter.get("chat").inc()
    counter.get("chat").inc(2)
    counter.get("messages").inc()
    gauge.get("chat").inc()
    gauge.get("chat").inc()
    gauge.get("chat").dec()
    got = samples(registry)
    assert got[("t_requests_total", (("route", "chat"),))] == 3
    assert got[("t_requests_total", (("route", "messages"),))] == 1
    assert got[("t_inflight", (("route", "chat"),))] == 1


def test_histogram_matches_prometheus_client_exactly() -> None:
    """Same observations, same buckets: the same samples as prometheus_client's Histogram."""
    buckets = (0, 1, 2, 3, 5, 8)
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = HistogramFamily("t_attempts", "Attempts.", ["provider"], buckets)
    ours_registry.register(FamiliesCollector([ours]))
    theirs = Histogram(
        "t_attempts", "Attempts.", ["provider"], buckets=buckets, registry=theirs_registry
    )
    values = [0, 1, 1, 2, 3, 3, 4, 5, 8, 9, 100, 0.5, 2.0000001]
    for v in values:
        ours.get("openai").observe(v)
        theirs.labels("openai").observe(v)
    expected = {k: v for k, v in samples(theirs_registry).items() if not k[0].endswith("_created")}
    assert samples(ours_registry) == expected
    assert expected[("t_attempts_bucket", (("le", "1.0"), ("provider", "openai")))] == 4
    assert expected[("t_attempts_count", (("provider", "openai"),))] == len(values)


def test_families_added_after_registration_are_exposed() -> None:
    registry = CollectorRegistry()
    families: list[CounterFamily | GaugeFamily | HistogramFamily] = []
    registry.register(FamiliesCollector(families))
    late = CounterFamily("t_late", "Late.", ["x"])
    families.append(late)
    late.get("y").inc()
    assert samples(registry)[("t_late_total", (("x", "y"),))] == 1
