"""Circuit breakers per (provider, endpoint, model): stop hammering a failing upstream.

Theory of operation
-------------------
A breaker watches the statuses an upstream answers for one (provider, endpoint,
model). It has three states:

* CLOSED: every request is admitted. ``failure_threshold`` consecutive failing
  statuses (503/504 by default, plus 529 for Anthropic) trip it OPEN. Any other
  status (2xx, 4xx, 500, ...) resets the count.
* OPEN: every request is rejected, with the seconds left until the breaker
  turns half-open, for the client's ``retry-after``. After ``open_timeout`` it
  is HALF_OPEN; like a key's recovery, this happens lazily, on the next read.
* HALF_OPEN: up to ``half_open_probes`` requests are admitted at once as probes;
  the rest are rejected. The first non-failing status closes the breaker; a
  failing status reopens it for a fresh ``open_timeout``.

Rules:

* The caller calls :meth:`CircuitBreaker.admit` once before sending and then
  exactly one of :meth:`CircuitBreaker.record` (an upstream status arrived) or
  :meth:`CircuitBreaker.release` (the request ended without one, e.g. the client
  went away) for every admitted request.
* Results of requests admitted before a trip are ignored, even when they arrive
  after the breaker turned half-open (a stream can outlive ``open_timeout``): they
  say nothing about the upstream after the trip, and they hold no probe slot. The
  caller reads :attr:`CircuitBreaker.generation` right after ``admit()`` and passes
  it to ``record``/``release``; each trip starts a new generation.
* In CLOSED, the common case, ``admit()`` and a success ``record()`` take no lock
  and allocate nothing. Every transition happens under the breaker's lock.

No I/O, no asyncio; time comes from an injected :class:`aibridge.keypool.Clock`.
"""

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from aibridge.keypool import Clock, SystemClock

DEFAULT_FAILURE_STATUSES = frozenset({503, 504})
ANTHROPIC_FAILURE_STATUSES = frozenset({503, 504, 529})

# Model name of the breaker shared by every model past the registry's cap.
OTHER_MODEL = "(other)"


def failure_statuses_for(provider_type: str) -> frozenset[int]:
    """The statuses that count as upstream failures for a provider type."""
    return ANTHROPIC_FAILURE_STATUSES if provider_type == "anthropic" else DEFAULT_FAILURE_STATUSES


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    open_timeout: float = 30.0
    half_open_probes: int = 3
    failure_statuses: frozenset[int] = DEFAULT_FAILURE_STATUSES
    # The retry-after given to requests rejected because every probe slot is taken.
    busy_retry_after: float = 1.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.half_open_probes < 1:
            raise ValueError("half_open_probes must be at least 1")
        if not (math.isfinite(self.open_timeout) and self.open_timeout >= 0):
            raise ValueError("open_timeout must be a finite number of seconds >= 0")
        if not (math.isfinite(self.busy_retry_after) and self.busy_retry_after >= 0):
            raise ValueError("busy_retry_after must be a finite number of seconds >= 0")
        # Accept any iterable of ints, keep a frozenset.
        statuses: Iterable[int] = self.failure_statuses
        object.__setattr__(self, "failure_statuses", frozenset(statuses))


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN


class CircuitBreaker:
    """One upstream target's breaker. Thread-safe; see the module's rules."""

    __slots__ = (
        "_clock",
        "_failing",
        "_failures",
        "_lock",
        "_on_trip",
        "_open_until",
        "_probes",
        "_state",
        "config",
        "generation",
        "model",
        "rejects",
        "trips",
    )

    def __init__(
        self,
        config: BreakerConfig | None = None,
        clock: Clock | None = None,
        on_trip: Callable[[], None] | None = None,
        model: str = "",
    ) -> None:
        self.model = model  # the (bounded) model this breaker stands for: a metric label
        self.config = config if config is not None else BreakerConfig()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._on_trip = on_trip
        self._failing = self.config.failure_statuses
        self._lock = threading.Lock()
        self._state = _CLOSED
        self._failures = 0  # consecutive failing statuses while CLOSED
        self._open_until = 0.0
        self._probes = 0  # probes in flight while HALF_OPEN
        self.generation = 0  # trips so far: tells results from before a trip apart
        self.trips = 0
        self.rejects = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.state().value}, trips={self.trips})"

    # -- reading -----------------------------------------------------------

    def state(self) -> CircuitState:
        state = self._state
        if state is _OPEN and self._clock.now() >= self._open_until:
            return _HALF_OPEN
        return state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def probes_in_flight(self) -> int:
        return self._probes

    # -- the request path ----------------------------------------------------

    def admit(self) -> float | None:
        """None to admit the request; else reject it, retrying after that many seconds."""
        if self._state is _CLOSED:
            return None
        with self._lock:
            if self._state is _OPEN:
                remaining = self._open_until - self._clock.now()
                if remaining > 0:
                    self.rejects += 1
                    return remaining
                self._state = _HALF_OPEN
                self._probes = 0
            if self._state is _HALF_OPEN:
                if self._probes < self.config.half_open_probes:
                    self._probes += 1
                    return None
                self.rejects += 1
                return self.config.busy_retry_after
            return None  # closed by a concurrent success since the unlocked read

    def record(self, status: int, generation: int | None = None) -> None:
        """The upstream answered an admitted request with ``status``; ``generation``
        is what :attr:`generation` was at its ``admit()`` (None: trust it is current)."""
        if generation is not None and generation != self.generation:
            return  # admitted before a trip: ignore it
        if status not in self._failing:
            if self._state is _CLOSED and self._failures == 0:
                return  # nothing to change: the common case, lock-free
            with self._lock:
                if self._state is _CLOSED:
                    self._failures = 0
                elif self._state is _HALF_OPEN:
                    self._state = _CLOSED
                    self._failures = 0
                    self._probes = 0
                # OPEN: a request from before the trip; ignore it.
            return
        with self._lock:
            if self._state is _CLOSED:
                self._failures += 1
                if self._failures < self.config.failure_threshold:
                    return
            elif self._state is _OPEN:
                return  # a request from before the trip; ignore it
            self._trip()
        if self._on_trip is not None:
            self._on_trip()

    def release(self, generation: int | None = None) -> None:
        """An admitted request ended without an upstream status (client gone, timeout)."""
        if self._state is not _HALF_OPEN:
            return
        if generation is not None and generation != self.generation:
            return  # admitted before the trip: it holds no probe slot
        with self._lock:
            if self._state is _HALF_OPEN and self._probes > 0:
                self._probes -= 1

    def _trip(self) -> None:
        # Caller holds the lock.
        self._state = _OPEN
        self._open_until = self._clock.now() + self.config.open_timeout
        self._failures = 0
        self._probes = 0
        self.trips += 1
        self.generation += 1


TripListener = Callable[[str, str, str], None]


class BreakerRegistry:
    """All breakers of a gateway, created on first use.

    ``provider`` and ``endpoint`` come from configuration and the route table;
    ``model`` comes from the client and is bounded: past ``max_models`` distinct
    (provider, endpoint, model) breakers, or for a model name longer than
    ``max_model_length``, the request shares one breaker per (provider,
    endpoint), reported under the model name ``(other)``.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        clock: Clock | None = None,
        on_trip: TripListener | None = None,
        *,
        overrides: dict[str, BreakerConfig] | None = None,
        max_models: int = 1000,
        max_model_length: int = 256,
    ) -> None:
        self.config = config if config is not None else BreakerConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._on_trip = on_trip
        self._overrides = dict(overrides or {})
        self._max_models = max_models
        self._max_model_length = max_model_length
        self._lock = threading.Lock()
        self._breakers: dict[tuple[str, str, str], CircuitBreaker] = {}
        self._other: dict[tuple[str, str], CircuitBreaker] = {}

    def config_for(self, provider: str) -> BreakerConfig:
        return self._overrides.get(provider, self.config)

    def get(self, provider: str, endpoint: str, model: str) -> CircuitBreaker:
        breaker = self._breakers.get((provider, endpoint, model))
        if breaker is not None:
            return breaker
        with self._lock:
            key = (provider, endpoint, model)
            breaker = self._breakers.get(key)
            if breaker is not None:
                return breaker
            if len(self._breakers) < self._max_models and len(model) <= self._max_model_length:
                breaker = self._new(provider, endpoint, model)
                self._breakers[key] = breaker
                return breaker
            other = self._other.get((provider, endpoint))
            if other is None:
                other = self._new(provider, endpoint, OTHER_MODEL)
                self._other[(provider, endpoint)] = other
            return other

    def _new(self, provider: str, endpoint: str, model: str) -> CircuitBreaker:
        on_trip: Callable[[], None] | None = None
        listener = self._on_trip
        if listener is not None:

            def on_trip() -> None:
                listener(provider, endpoint, model)

        return CircuitBreaker(self.config_for(provider), self.clock, on_trip, model)

    def __len__(self) -> int:
        return len(self._breakers) + len(self._other)

    def snapshot(self) -> list[tuple[str, str, str, CircuitState]]:
        """(provider, endpoint, model, state) of every breaker, for metrics."""
        with self._lock:
            named = list(self._breakers.items())
            others = list(self._other.items())
        rows = [(p, e, m, b.state()) for (p, e, m), b in named]
        rows += [(p, e, OTHER_MODEL, b.state()) for (p, e), b in others]
        return rows
