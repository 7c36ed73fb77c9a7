"""The pool against a small reference model written from the specification.

Hypothesis drives a real :class:`Pool` on a :class:`ManualClock` and a model of
the same keys through random marks, clock moves and walks, and checks after
every step that both agree on every observable: state, reason, remaining
cooldown, what each walker hands out, and the exhausted error.
"""

import math
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from aibridge.keypool import (
    ErrorKind,
    Key,
    KeyPoolError,
    KeyState,
    ManualClock,
    Pool,
    Walker,
    mark_key_on_status,
)

# Durations from a small set so that deadlines collide and the clock lands on
# them exactly, where the boundary rules matter.
DURATIONS = st.sampled_from([-5.0, 0.0, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
STEPS = st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
REASONS = st.sampled_from(["rate_limited", "unauthorized", "forbidden"])
STATUSES = st.sampled_from([200, 400, 401, 403, 404, 429, 500, 503, 529])
# (headers, the wait they ask for in seconds, 0 meaning "no usable hint")
HINTS = st.sampled_from(
    [
        ({}, 0.0),
        ({"retry-after": "5"}, 5.0),
        ({"Retry-After-Ms": "2500"}, 2.5),
        ({"retry-after": "junk"}, 0.0),
        ({"retry-after": "-3"}, 0.0),
    ]
)


# -- the reference model --------------------------------------------------------


@dataclass
class ModelKey:
    permanent: bool = False
    deadline: float | None = None
    why: str | None = None

    def state(self, now: float) -> KeyState:
        if self.permanent:
            return KeyState.PERMANENT
        if self.deadline is not None and now < self.deadline:
            return KeyState.TEMPORARY
        return KeyState.VALID

    def reason(self, now: float) -> str | None:
        return None if self.state(now) is KeyState.VALID else self.why

    def remaining(self, now: float) -> float:
        if self.state(now) is not KeyState.TEMPORARY or self.deadline is None:
            return 0.0
        return self.deadline - now

    def mark_temporary(self, now: float, cooldown: float, reason: str) -> bool:
        if cooldown <= 0:
            cooldown = 60.0
        if self.permanent:
            return False
        deadline = now + cooldown
        if self.deadline is not None and self.deadline > deadline:
            return False  # never shortens
        was_valid = self.state(now) is KeyState.VALID
        self.deadline = deadline
        self.why = reason
        return was_valid

    def mark_permanent(self, reason: str) -> bool:
        if self.permanent:
            return False
        self.permanent = True
        self.why = reason
        return True


@dataclass
class Model:
    keys: list[ModelKey]
    now: float

    def exhausted(self) -> tuple[ErrorKind, float]:
        states = [k.state(self.now) for k in self.keys]
        if KeyState.VALID in states:
            return ErrorKind.RATE_LIMITED, 0.0
        cooling = [k for k in self.keys if k.state(self.now) is KeyState.TEMPORARY]
        if cooling:
            soonest = min(k.remaining(self.now) for k in cooling)
            if any(k.why == "rate_limited" for k in cooling):
                return ErrorKind.RATE_LIMITED, soonest
            return ErrorKind.UNAUTHORIZED, soonest
        return ErrorKind.PERMANENT, 0.0


@dataclass
class ModelWalker:
    pos: int = 0
    attempts: int = 0
    done: bool = False

    def next(self, model: Model) -> int | None:
        while self.pos < len(model.keys):
            i = self.pos
            self.pos += 1
            if model.keys[i].state(model.now) is KeyState.VALID:
                self.attempts += 1
                return i
        self.done = True
        return None


@dataclass
class WalkPair:
    real: Walker
    model: ModelWalker = field(default_factory=ModelWalker)


# -- the machine ----------------------------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    walkers = Bundle("walkers")

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(0.0)
        self.pool: Pool | None = None
        self.model = Model([], 0.0)

    @initialize(n=st.integers(min_value=1, max_value=4), start=st.sampled_from([0.0, 1e6]))
    def make_pool(self, n: int, start: float) -> None:
        self.clock = ManualClock(start)
        self.pool = Pool([f"sk-test-key-number-{i:04d}-xxxxxxxx" for i in range(n)], self.clock)
        self.model = Model([ModelKey() for _ in range(n)], start)

    def key(self, i: int) -> Key:
        assert self.pool is not None
        return self.pool.keys[i % len(self.pool.keys)]

    def model_key(self, i: int) -> ModelKey:
        return self.model.keys[i % len(self.model.keys)]

    @rule(dt=STEPS)
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)
        self.model.now += dt
        assert self.clock.now() == self.model.now

    @rule(i=st.integers(0, 3), cooldown=DURATIONS, reason=REASONS)
    def mark_temporary(self, i: int, cooldown: float, reason: str) -> None:
        got = self.key(i).mark_temporary(cooldown, reason)
        want = self.model_key(i).mark_temporary(self.model.now, cooldown, reason)
        assert got == want

    @rule(i=st.integers(0, 3), reason=REASONS)
    def mark_permanent(self, i: int, reason: str) -> None:
        got = self.key(i).mark_permanent(reason)
        want = self.model_key(i).mark_permanent(reason)
        assert got == want

    @rule(i=st.integers(0, 3), status=STATUSES, hint=HINTS)
    def mark_on_status(self, i: int, status: int, hint: tuple[dict[str, str], float]) -> None:
        headers, wait = hint
        got = mark_key_on_status(self.key(i), status, headers)
        model_key = self.model_key(i)
        if status == 429:
            model_key.mark_temporary(self.model.now, wait if wait > 0 else 60.0, "rate_limited")
            assert got is True
        elif status == 401:
            model_key.mark_temporary(self.model.now, 60.0, "unauthorized")
            assert got is True
        else:
            assert got is False

    @rule(target=walkers)
    def new_walker(self) -> WalkPair:
        assert self.pool is not None
        return WalkPair(self.pool.walker())

    @rule(pair=walkers)
    def walk(self, pair: WalkPair) -> None:
        assert self.pool is not None
        want = pair.model.next(self.model)
        if want is None:
            try:
                pair.real.next()
            except KeyPoolError as err:
                kind, retry_after = self.model.exhausted()
                assert err.kind is kind
                assert math.isclose(err.retry_after, retry_after, abs_tol=1e-9)
            else:
                raise AssertionError("walker handed out a key the model says is not there")
        else:
            assert pair.real.next() is self.pool.keys[want]
        assert pair.real.attempts == pair.model.attempts

    @precondition(lambda self: self.pool is not None)
    @invariant()
    def keys_agree(self) -> None:
        assert self.pool is not None
        now = self.model.now
        for key, model_key in zip(self.pool.keys, self.model.keys, strict=True):
            assert key.state() is model_key.state(now)
            assert key.reason == model_key.reason(now)
            assert math.isclose(key.cooldown_remaining(), model_key.remaining(now), abs_tol=1e-9)

    @precondition(lambda self: self.pool is not None)
    @invariant()
    def exhausted_error_agrees(self) -> None:
        assert self.pool is not None
        err = self.pool.exhausted_error()
        kind, retry_after = self.model.exhausted()
        assert err.kind is kind
        assert math.isclose(err.retry_after, retry_after, abs_tol=1e-9)
        if kind is ErrorKind.RATE_LIMITED:
            assert str(err) == (
                f"all configured keys are rate-limited (retry after {math.ceil(retry_after)}s)"
            )
        else:
            assert str(err).startswith("all configured keys failed authentication")


PoolMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, database=None
)
TestPool = PoolMachine.TestCase
