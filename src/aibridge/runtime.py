"""One configured provider, ready to serve: its key pool, marking policy, selection
strategy, timeouts and circuit breakers. Built from config at start and on reload."""

import itertools
import random
from types import ModuleType

from aibridge.circuit import BreakerConfig, BreakerRegistry, TripListener, failure_statuses_for
from aibridge.config import ProviderConfig
from aibridge.keypool import Clock, MarkPolicy, Pool, Walker
from aibridge.providers import PROVIDER_TYPES, ErrorResponse
from aibridge.upstream import Origin


class ProviderRuntime:
    """One configured provider, ready to serve: its pool, policy and timeouts."""

    def __init__(
        self, config: ProviderConfig, clock: Clock, on_trip: TripListener | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self.type: ModuleType = PROVIDER_TYPES[config.type]
        self.pool = Pool(config.keys, clock)
        # A key refused again and again cools down longer each time (60 s, 2 min, ... 1 h),
        # so a revoked key is tried a handful of times an hour and never benched for good.
        self.policy = MarkPolicy(
            on_unauthorized=config.on_unauthorized,
            on_forbidden=config.on_forbidden,
            auth_backoff=2.0,
        )
        self.origin = Origin(config.base_url)
        self.allow_byok = config.allow_byok
        t = config.timeouts
        self.connect_timeout = t.connect
        self.response_timeout = t.response
        self.idle_timeout = t.idle
        self._strategy = config.strategy
        self._turn = itertools.count()
        self._weights = config.weights
        self._rng = random.Random()
        self.breakers: BreakerRegistry | None = None
        cb = config.circuit_breaker
        if cb is not None:
            statuses = cb.failure_statuses or failure_statuses_for(config.type)
            self.breakers = BreakerRegistry(
                BreakerConfig(
                    failure_threshold=cb.failure_threshold,
                    open_timeout=cb.open_timeout,
                    half_open_probes=cb.half_open_probes,
                    failure_statuses=frozenset(statuses),
                ),
                clock,
                on_trip,
            )

    def walker(self) -> Walker:
        if self._strategy == "primary":
            return self.pool.walker()
        if self._strategy == "round_robin":
            return self.pool.walker(next(self._turn))
        assert self._weights is not None
        start = self._rng.choices(range(len(self.pool)), weights=self._weights)[0]
        return self.pool.walker(start)

    def error(self, status: int, message: str, request_id: str | None = None) -> ErrorResponse:
        response: ErrorResponse = self.type.error_response(
            status, None, message, request_id=request_id
        )
        return response
