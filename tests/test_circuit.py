"""The circuit breaker and its registry, on a manual clock."""

import threading
from dataclasses import FrozenInstanceError

import pytest

from aibridge.circuit import (
    ANTHROPIC_FAILURE_STATUSES,
    DEFAULT_FAILURE_STATUSES,
    OTHER_MODEL,
    BreakerConfig,
    BreakerRegistry,
    CircuitBreaker,
    CircuitState,
    failure_statuses_for,
)
from aibridge.keypool import ManualClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def breaker(**config: object) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock(100.0)
    return CircuitBreaker(BreakerConfig(**config), clock), clock  # type: ignore[arg-type]


def fail(b: CircuitBreaker, times: int, status: int = 503) -> None:
    for _ in range(times):
        assert b.admit() is None
        b.record(status)


def tripped(**config: object) -> tuple[CircuitBreaker, ManualClock]:
    b, clock = breaker(**config)
    fail(b, b.config.failure_threshold)
    assert b.state() is OPEN
    return b, clock


# -- config -------------------------------------------------------------------


def test_config_defaults_and_frozen() -> None:
    config = BreakerConfig()
    assert config.failure_threshold == 5
    assert config.open_timeout == 30.0
    assert config.half_open_probes == 3
    assert config.failure_statuses == frozenset({503, 504})
    with pytest.raises(FrozenInstanceError):
        config.failure_threshold = 1  # type: ignore[misc]


def test_config_accepts_any_iterable_of_statuses() -> None:
    config = BreakerConfig(failure_statuses={503, 529})  # type: ignore[arg-type]
    assert config.failure_statuses == frozenset({503, 529})
    assert isinstance(config.failure_statuses, frozenset)


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_threshold": 0},
        {"half_open_probes": 0},
        {"open_timeout": -1.0},
        {"open_timeout": float("nan")},
        {"open_timeout": float("inf")},
        {"busy_retry_after": -1.0},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**bad)  # type: ignore[arg-type]


def test_failure_statuses_by_provider_type() -> None:
    assert failure_statuses_for("openai") == DEFAULT_FAILURE_STATUSES == {503, 504}
    assert failure_statuses_for("anthropic") == ANTHROPIC_FAILURE_STATUSES == {503, 504, 529}


def test_state_values() -> None:
    assert [s.value for s in CircuitState] == ["closed", "open", "half_open"]


# -- closed -------------------------------------------------------------------


def test_starts_closed_and_admits() -> None:
    b, _ = breaker()
    assert b.state() is CLOSED
    for _ in range(100):
        assert b.admit() is None
        b.record(200)
    assert (b.trips, b.rejects) == (0, 0)


def test_opens_after_threshold_consecutive_failures() -> None:
    b, _ = breaker()
    fail(b, 4)
    assert b.state() is CLOSED
    assert b.consecutive_failures == 4
    fail(b, 1, 504)
    assert b.state() is OPEN
    assert b.trips == 1


@pytest.mark.parametrize("status", [200, 201, 204, 400, 401, 404, 429, 500, 502])
def test_non_failing_status_resets_the_count(status: int) -> None:
    b, _ = breaker()
    fail(b, 4)
    assert b.admit() is None
    b.record(status)
    assert b.consecutive_failures == 0
    fail(b, 4)
    assert b.state() is CLOSED
    fail(b, 1)
    assert b.state() is OPEN


def test_529_is_not_a_failure_by_default_but_is_for_anthropic() -> None:
    b, _ = breaker()
    fail(b, 10, 529)
    assert b.state() is CLOSED
    b, _ = breaker(failure_statuses=ANTHROPIC_FAILURE_STATUSES)
    fail(b, 5, 529)
    assert b.state() is OPEN


def test_custom_threshold() -> None:
    b, _ = breaker(failure_threshold=1)
    fail(b, 1)
    assert b.state() is OPEN


def test_release_in_closed_changes_nothing() -> None:
    b, _ = breaker()
    fail(b, 3)
    assert b.admit() is None
    b.release()
    assert b.state() is CLOSED
    assert b.consecutive_failures == 3


# -- open ---------------------------------------------------------------------


def test_open_rejects_with_time_until_half_open() -> None:
    b, clock = tripped()
    assert b.admit() == 30.0
    clock.advance(12.5)
    assert b.admit() == 17.5
    clock.advance(17.0)
    assert b.admit() == pytest.approx(0.5)
    assert b.rejects == 3
    assert b.state() is OPEN


def test_open_turns_half_open_exactly_at_the_timeout() -> None:
    b, clock = tripped()
    clock.advance(30.0)
    assert b.state() is HALF_OPEN  # derived lazily, before any admit
    assert b.admit() is None
    assert b.state() is HALF_OPEN
    assert b.probes_in_flight == 1


def test_custom_open_timeout() -> None:
    b, clock = tripped(open_timeout=5.0)
    assert b.admit() == 5.0
    clock.advance(5.0)
    assert b.admit() is None


def test_results_of_requests_from_before_the_trip_are_ignored_while_open() -> None:
    b, clock = breaker()
    for _ in range(7):
        assert b.admit() is None  # seven requests in flight
    for _ in range(5):
        b.record(503)
    assert b.state() is OPEN
    b.record(503)  # stragglers: no new trip, no longer timeout
    b.record(200)  # and no closing either
    assert b.state() is OPEN
    assert b.trips == 1
    assert b.admit() == 30.0
    clock.advance(30.0)
    assert b.admit() is None


def test_stale_failure_after_timeout_before_any_probe_is_ignored() -> None:
    b, clock = tripped()
    clock.advance(31.0)
    b.record(503)
    assert b.state() is HALF_OPEN
    assert b.trips == 1


# -- half-open ------------------------------------------------------------------


def test_half_open_admits_only_the_probe_budget() -> None:
    b, clock = tripped()
    clock.advance(30.0)
    assert [b.admit() for _ in range(3)] == [None, None, None]
    assert b.probes_in_flight == 3
    assert b.admit() == 1.0  # busy: come back shortly
    assert b.admit() == 1.0
    assert b.rejects == 2
    assert b.state() is HALF_OPEN


def test_custom_probe_budget_and_busy_retry() -> None:
    b, clock = tripped(half_open_probes=1, busy_retry_after=2.5)
    clock.advance(30.0)
    assert b.admit() is None
    assert b.admit() == 2.5


def test_success_in_half_open_closes() -> None:
    b, clock = tripped()
    clock.advance(30.0)
    assert b.admit() is None
    assert b.admit() is None
    b.record(200)
    assert b.state() is CLOSED
    assert b.probes_in_flight == 0
    assert b.consecutive_failures == 0
    # The other probe's late failure counts as a first failure in CLOSED.
    b.record(503)
    assert b.state() is CLOSED
    assert b.consecutive_failures == 1
    assert b.admit() is None


@pytest.mark.parametrize("status", [200, 400, 404, 500])
def test_any_non_failing_status_in_half_open_closes(status: int) -> None:
    b, clock = tripped()
    clock.advance(30.0)
    assert b.admit() is None
    b.record(status)
    assert b.state() is CLOSED


def test_failure_in_half_open_reopens_with_a_new_timeout() -> None:
    b, clock = tripped()
    clock.advance(30.0)
    assert b.admit() is None
    clock.advance(4.0)
    b.record(504)
    assert b.state() is OPEN
    assert b.trips == 2
    assert b.admit() == 30.0  # counted from the reopening, not the first trip
    clock.advance(29.0)
    assert b.state() is OPEN
    clock.advance(1.0)
    assert b.state() is HALF_OPEN
    assert [b.admit() for _ in range(4)] == [None, None, None, 1.0]  # a fresh probe budget


def test_release_frees_a_probe_slot() -> None:
    b, clock = tripped()
    clock.advance(30.0)
    for _ in range(3):
        assert b.admit() is None
    assert b.admit() == 1.0
    b.release()
    assert b.probes_in_flight == 2
    assert b.state() is HALF_OPEN
    assert b.admit() is None
    assert b.admit() == 1.0


def test_release_never_goes_below_zero() -> None:
    b, clock = tripped()
    clock.advance(30.0)
    assert b.admit() is None
    b.release()
    b.release()
    assert b.probes_in_flight == 0
    assert [b.admit() for _ in range(4)] == [None, None, None, 1.0]


def test_release_while_open_changes_nothing() -> None:
    b, _ = tripped()
    b.release()
    assert b.state() is OPEN
    assert b.admit() == 30.0


def test_full_cycle_twice() -> None:
    b, clock = breaker(failure_threshold=2, open_timeout=10.0, half_open_probes=1)
    for _ in range(2):
        fail(b, 2)
        assert b.state() is OPEN
        assert b.admit() == 10.0
        clock.advance(10.0)
        assert b.admit() is None
        assert b.admit() == 1.0
        b.record(200)
        assert b.state() is CLOSED
    assert b.trips == 2
    assert b.rejects == 4


# -- on_trip --------------------------------------------------------------------


def test_on_trip_called_on_every_trip_and_reopen() -> None:
    calls: list[CircuitState] = []
    clock = ManualClock()
    b = CircuitBreaker(BreakerConfig(failure_threshold=2), clock, lambda: calls.append(b.state()))
    fail(b, 1)
    assert calls == []
    fail(b, 1)
    assert calls == [OPEN]  # called after the transition, outside the lock
    clock.advance(30.0)
    fail(b, 1)
    assert calls == [OPEN, OPEN]


# -- concurrency ----------------------------------------------------------------


def test_concurrent_probes_never_exceed_the_budget() -> None:
    b, clock = tripped(half_open_probes=3)
    clock.advance(30.0)
    barrier = threading.Barrier(16)
    admitted: list[bool] = []
    lock = threading.Lock()

    def probe() -> None:
        barrier.wait()
        got = b.admit() is None
        with lock:
            admitted.append(got)

    threads = [threading.Thread(target=probe) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(admitted) == 16
    assert admitted.count(True) == 3
    assert b.rejects == 13


def test_concurrent_failures_trip_once() -> None:
    b, _ = breaker(failure_threshold=5)
    barrier = threading.Barrier(20)

    def hit() -> None:
        barrier.wait()
        if b.admit() is None:
            b.record(503)

    threads = [threading.Thread(target=hit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert b.state() is OPEN
    assert b.trips == 1


# -- registry -------------------------------------------------------------------


def test_registry_creates_lazily_and_reuses() -> None:
    registry = BreakerRegistry(BreakerConfig(), ManualClock())
    assert len(registry) == 0
    a = registry.get("openai", "chat", "gpt-4o")
    assert registry.get("openai", "chat", "gpt-4o") is a
    assert registry.get("openai", "responses", "gpt-4o") is not a
    assert registry.get("azure", "chat", "gpt-4o") is not a
    assert registry.get("openai", "chat", "gpt-4o-mini") is not a
    assert len(registry) == 4


def test_registry_breakers_are_independent() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(BreakerConfig(failure_threshold=1), clock)
    registry.get("anthropic", "messages", "claude-a").record(503)
    assert registry.get("anthropic", "messages", "claude-a").state() is OPEN
    assert registry.get("anthropic", "messages", "claude-b").state() is CLOSED
    assert registry.get("anthropic", "messages", "claude-b").admit() is None


def test_registry_uses_the_shared_clock() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(BreakerConfig(failure_threshold=1, open_timeout=5.0), clock)
    b = registry.get("p", "e", "m")
    b.record(503)
    assert b.admit() == 5.0
    clock.advance(5.0)
    assert b.state() is HALF_OPEN


def test_registry_per_provider_overrides() -> None:
    registry = BreakerRegistry(
        BreakerConfig(),
        ManualClock(),
        overrides={"claude": BreakerConfig(failure_statuses=ANTHROPIC_FAILURE_STATUSES)},
    )
    claude = registry.get("claude", "messages", "m")
    other = registry.get("openai", "chat", "m")
    assert claude.config.failure_statuses == {503, 504, 529}
    assert other.config.failure_statuses == {503, 504}


def test_registry_on_trip_names_the_breaker() -> None:
    trips: list[tuple[str, str, str]] = []
    registry = BreakerRegistry(
        BreakerConfig(failure_threshold=1),
        ManualClock(),
        on_trip=lambda p, e, m: trips.append((p, e, m)),
    )
    registry.get("openai", "chat", "gpt-4o").record(503)
    registry.get("anthropic", "messages", "claude").record(200)
    assert trips == [("openai", "chat", "gpt-4o")]


def test_registry_caps_distinct_models() -> None:
    trips: list[tuple[str, str, str]] = []
    registry = BreakerRegistry(
        BreakerConfig(failure_threshold=1),
        ManualClock(),
        on_trip=lambda p, e, m: trips.append((p, e, m)),
        max_models=3,
    )
    named = [registry.get("openai", "chat", f"model-{i}") for i in range(3)]
    assert len(set(map(id, named))) == 3
    spill = [registry.get("openai", "chat", f"random-{i}") for i in range(100)]
    assert all(b is spill[0] for b in spill)
    assert spill[0] not in named
    assert registry.get("openai", "responses", "random-x") is not spill[0]  # per endpoint
    assert registry.get("azure", "chat", "random-x") is not spill[0]  # per provider
    assert registry.get("openai", "chat", "model-1") is named[1]  # known ones still found
    assert len(registry) == 6
    spill[0].record(503)
    assert trips == [("openai", "chat", OTHER_MODEL)]
    # The label the gateway puts on rejects: the breaker's own bounded model, never the
    # client's (which would grow a metric child per invented model name).
    assert {b.model for b in spill} == {OTHER_MODEL}
    assert [b.model for b in named] == ["model-0", "model-1", "model-2"]


def test_registry_sends_huge_model_names_to_other() -> None:
    registry = BreakerRegistry(BreakerConfig(), ManualClock(), max_model_length=10)
    a = registry.get("p", "e", "x" * 11)
    b = registry.get("p", "e", "y" * 5000)
    assert a is b
    assert registry.get("p", "e", "short") is not a
    assert ("p", "e", "x" * 11, CLOSED) not in registry.snapshot()


def test_registry_snapshot() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(BreakerConfig(failure_threshold=1, open_timeout=10.0), clock)
    assert registry.snapshot() == []
    registry.get("openai", "chat", "a")
    registry.get("openai", "chat", "b").record(503)
    rows = registry.snapshot()
    assert sorted(rows) == [
        ("openai", "chat", "a", CLOSED),
        ("openai", "chat", "b", OPEN),
    ]
    clock.advance(10.0)
    assert ("openai", "chat", "b", HALF_OPEN) in registry.snapshot()


def test_registry_snapshot_includes_other() -> None:
    registry = BreakerRegistry(BreakerConfig(), ManualClock(), max_models=1)
    registry.get("p", "e", "a")
    registry.get("p", "e", "b")
    assert sorted(registry.snapshot()) == [("p", "e", "(other)", CLOSED), ("p", "e", "a", CLOSED)]


def test_registry_concurrent_get_creates_one_breaker() -> None:
    registry = BreakerRegistry(BreakerConfig(), ManualClock())
    barrier = threading.Barrier(16)
    got: list[CircuitBreaker] = []
    lock = threading.Lock()

    def get() -> None:
        barrier.wait()
        b = registry.get("p", "e", "m")
        with lock:
            got.append(b)

    threads = [threading.Thread(target=get) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(got) == 16
    assert all(b is got[0] for b in got)
    assert len(registry) == 1


def test_registry_defaults() -> None:
    registry = BreakerRegistry()
    b = registry.get("p", "e", "m")
    assert b.config == BreakerConfig()
    assert b.admit() is None


def test_a_request_from_before_the_trip_holds_no_probe_slot_and_decides_nothing() -> None:
    """A stream admitted while CLOSED can end after the breaker turned half-open: its
    release must not free a probe slot it never held, and its status must neither
    close nor reopen the breaker."""
    clock = ManualClock()
    breaker = CircuitBreaker(
        BreakerConfig(failure_threshold=1, open_timeout=10.0, half_open_probes=1), clock
    )
    assert breaker.admit() is None
    old = breaker.generation  # the long stream, admitted while CLOSED
    assert breaker.admit() is None
    breaker.record(503, breaker.generation)  # another request trips it
    assert breaker.state() is OPEN
    clock.advance(10.0)
    assert breaker.admit() is None  # the one probe
    assert breaker.admit() is not None  # busy
    breaker.release(old)
    assert breaker.probes_in_flight == 1
    assert breaker.admit() is not None  # still busy: the old stream freed nothing
    breaker.record(200, old)
    assert breaker.state() is HALF_OPEN
    breaker.record(503, old)
    assert breaker.state() is HALF_OPEN
    assert breaker.trips == 1
