"""The key pool: states, errors, masking, marking, the walker and the exhausted error.

Every expectation here is written from the key pool's specification (issue 2),
not read back from the code.
"""

import itertools
import math
import pickle
import string
import threading
import time
from dataclasses import FrozenInstanceError

import pytest

from aibridge.keypool import (
    DuplicateKeyError,
    ErrorKind,
    Key,
    KeyPoolError,
    KeyState,
    ManualClock,
    MarkPolicy,
    NoKeysError,
    Pool,
    SystemClock,
    mark_key_on_status,
    mask_key,
)

SECRET_A = "sk-proj-AAAAaaaaBBBBbbbbCCCCcccc1111"
SECRET_B = "sk-proj-DDDDddddEEEEeeeeFFFFffff2222"
SECRET_C = "sk-proj-GGGGggggHHHHhhhhIIIIiiii3333"


def make_pool(n: int = 3, start: float = 1000.0) -> tuple[Pool, ManualClock]:
    clock = ManualClock(start)
    secrets = [SECRET_A, SECRET_B, SECRET_C, "sk-fourth-key-0000000000", "sk-fifth-key-00000000000"]
    return Pool(secrets[:n], clock), clock


# -- enums and errors ---------------------------------------------------------


def test_key_state_values() -> None:
    assert [(s.name, s.value) for s in KeyState] == [
        ("VALID", "valid"),
        ("TEMPORARY", "temporary"),
        ("PERMANENT", "permanent"),
    ]
    assert KeyState.VALID == "valid"
    assert isinstance(KeyState.TEMPORARY, str)


def test_error_kind_values() -> None:
    assert [(k.name, k.value) for k in ErrorKind] == [
        ("RATE_LIMITED", "rate_limited"),
        ("UNAUTHORIZED", "unauthorized"),
        ("PERMANENT", "permanent"),
    ]
    assert ErrorKind.PERMANENT == "permanent"
    assert isinstance(ErrorKind.RATE_LIMITED, str)


def test_key_pool_error_attributes_and_default() -> None:
    err = KeyPoolError(ErrorKind.UNAUTHORIZED)
    assert err.kind is ErrorKind.UNAUTHORIZED
    assert err.retry_after == 0.0
    err = KeyPoolError(ErrorKind.RATE_LIMITED, retry_after=12.5)
    assert err.kind is ErrorKind.RATE_LIMITED
    assert err.retry_after == 12.5
    assert isinstance(err, Exception)


def test_key_pool_error_kind_accepts_its_string_value() -> None:
    assert KeyPoolError("rate_limited", 1.0).kind is ErrorKind.RATE_LIMITED  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("retry_after", "shown"),
    [(0.0, 0), (0.001, 1), (0.5, 1), (1.0, 1), (1.0001, 2), (29.2, 30), (59.999, 60), (60.0, 60)],
)
def test_rate_limited_message_rounds_retry_after_up(retry_after: float, shown: int) -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, retry_after)
    assert str(err) == f"all configured keys are rate-limited (retry after {shown}s)"
    assert shown == math.ceil(retry_after)


@pytest.mark.parametrize("kind", [ErrorKind.UNAUTHORIZED, ErrorKind.PERMANENT])
@pytest.mark.parametrize("retry_after", [0.0, 42.3])
def test_auth_failure_messages(kind: ErrorKind, retry_after: float) -> None:
    assert str(KeyPoolError(kind, retry_after)).startswith(
        "all configured keys failed authentication"
    )


def test_key_pool_error_never_negative_and_survives_pickling() -> None:
    assert KeyPoolError(ErrorKind.RATE_LIMITED, -3.0).retry_after == 0.0
    err = pickle.loads(pickle.dumps(KeyPoolError(ErrorKind.RATE_LIMITED, 7.25)))
    assert (err.kind, err.retry_after) == (ErrorKind.RATE_LIMITED, 7.25)
    assert str(err) == "all configured keys are rate-limited (retry after 8s)"


def test_no_keys_error() -> None:
    with pytest.raises(NoKeysError) as info:
        Pool([], ManualClock())
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "no keys provided"


@pytest.mark.parametrize(
    ("keys", "index"),
    [
        ([SECRET_A, SECRET_A], 1),
        ([SECRET_A, SECRET_B, SECRET_A], 2),
        ([SECRET_A, SECRET_B, SECRET_C, SECRET_B], 3),
    ],
)
def test_duplicate_key_error_names_the_index_not_the_key(keys: list[str], index: int) -> None:
    with pytest.raises(DuplicateKeyError) as info:
        Pool(keys, ManualClock())
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err) == f"duplicate key at index {index}"
    for secret in keys:
        assert secret not in str(err)
        assert secret not in repr(err)


def test_no_error_message_contains_a_key() -> None:
    pool, clock = make_pool(3)
    pool.keys[0].mark_temporary(10, "rate_limited")
    pool.keys[1].mark_temporary(20, "unauthorized")
    pool.keys[2].mark_permanent()
    messages = [str(pool.exhausted_error()), repr(pool.exhausted_error())]
    clock.advance(15)
    messages.append(str(pool.exhausted_error()))
    pool.keys[1].mark_permanent()
    messages.append(str(pool.exhausted_error()))
    messages += [repr(k) for k in pool.keys]
    for message in messages:
        for key in pool.keys:
            assert key.value not in message


# -- clocks -------------------------------------------------------------------


def test_manual_clock_starts_where_told_and_moves_only_when_advanced() -> None:
    assert ManualClock().now() == 0.0
    clock = ManualClock(100.0)
    assert clock.now() == 100.0
    assert clock.now() == 100.0
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.advance(0.5)
    assert clock.now() == 103.0


def test_system_clock_is_monotonic() -> None:
    clock = SystemClock()
    before = time.monotonic()
    readings = [clock.now() for _ in range(1000)]
    after = time.monotonic()
    assert before <= readings[0]
    assert readings[-1] <= after
    assert all(a <= b for a, b in itertools.pairwise(readings))


# -- masking ------------------------------------------------------------------


def expected_hint(value: str) -> str:
    """The masking rule, straight from the spec."""
    n = len(value)
    if n >= 20:
        keep = 4
    elif n >= 10:
        keep = 2
    elif n >= 5:
        keep = 1
    else:
        keep = 0
    if n <= 2 * keep or keep == 0:
        return "..."
    return value[:keep] + "..." + value[n - keep :]


@pytest.mark.parametrize("length", range(41))
def test_hint_by_length(length: int) -> None:
    alphabet = string.ascii_letters + string.digits
    value = "".join(alphabet[i % len(alphabet)] for i in range(length))
    key = Key(value, ManualClock())
    assert key.hint == expected_hint(value)
    assert mask_key(value) == expected_hint(value)
    if length:
        assert value not in key.hint


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("sk-abcdefghijklmnopqrstuvwxyz", "sk-a...wxyz"),
        ("abcdefghijklmnopqrst", "abcd...qrst"),  # 20: keep 4
        ("abcdefghijklmnopqrs", "ab...rs"),  # 19: keep 2
        ("abcdefghij", "ab...ij"),  # 10: keep 2
        ("abcdefghi", "a...i"),  # 9: keep 1
        ("abcde", "a...e"),  # 5: keep 1
        ("abcd", "..."),  # 4: keep 0
        ("a", "..."),
        ("", "..."),
    ],
)
def test_hint_examples(value: str, hint: str) -> None:
    assert Key(value, ManualClock()).hint == hint


def test_repr_shows_hint_not_value() -> None:
    key = Key(SECRET_A, ManualClock())
    assert SECRET_A not in repr(key)
    assert key.hint in repr(key)


# -- derived state ------------------------------------------------------------


def test_fresh_key_is_valid() -> None:
    key = Key(SECRET_A, ManualClock(5.0))
    assert key.state() is KeyState.VALID
    assert key.reason is None
    assert key.cooldown_remaining() == 0.0


def test_temporary_strictly_before_deadline_valid_at_deadline() -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    key.mark_temporary(10.0)
    assert key.state() is KeyState.TEMPORARY
    clock.advance(9.75)
    assert key.state() is KeyState.TEMPORARY
    clock.advance(0.25)  # exactly the deadline
    assert clock.now() == 10.0
    assert key.state() is KeyState.VALID
    assert key.reason is None


def test_recovery_is_lazy() -> None:
    # No call on the key between marking and reading: the state is derived at read time.
    clock = ManualClock(50.0)
    key = Key(SECRET_A, clock)
    key.mark_temporary(30.0, "rate_limited")
    clock.advance(1000.0)
    assert key.state() is KeyState.VALID
    assert key.cooldown_remaining() == 0.0
    assert key.reason is None


def test_permanent_whatever_the_clock() -> None:
    clock = ManualClock()
    key = Key(SECRET_A, clock)
    key.mark_permanent()
    for _ in range(3):
        assert key.state() is KeyState.PERMANENT
        clock.advance(1e6)
    assert key.cooldown_remaining() == 0.0


# -- mark_temporary -----------------------------------------------------------


@pytest.mark.parametrize("cooldown", [0.0, -1.0, -100.0])
def test_non_positive_cooldown_means_sixty_seconds(cooldown: float) -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    assert key.mark_temporary(cooldown) is True
    assert key.cooldown_remaining() == 60.0
    clock.advance(59.5)
    assert key.state() is KeyState.TEMPORARY
    clock.advance(0.5)
    assert key.state() is KeyState.VALID


def test_mark_temporary_true_only_for_valid_to_temporary() -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    assert key.mark_temporary(10.0) is True
    assert key.mark_temporary(10.0) is False  # same deadline: nothing new
    assert key.mark_temporary(50.0) is False  # extending is not a transition
    assert key.cooldown_remaining() == 50.0
    clock.advance(50.0)
    assert key.state() is KeyState.VALID
    assert key.mark_temporary(5.0) is True  # recovered, so VALID -> TEMPORARY again


def test_cooldown_never_shortens() -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    key.mark_temporary(100.0, "rate_limited")
    assert key.mark_temporary(10.0, "unauthorized") is False
    assert key.cooldown_remaining() == 100.0
    assert key.reason == "rate_limited"  # no change at all
    clock.advance(40.0)
    assert key.mark_temporary(59.0, "unauthorized") is False  # 99 < 100: still shorter
    assert key.cooldown_remaining() == 60.0
    assert key.reason == "rate_limited"
    clock.advance(60.0)
    assert key.state() is KeyState.VALID


def test_extending_moves_deadline_and_reason() -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    key.mark_temporary(10.0, "rate_limited")
    clock.advance(5.0)
    assert key.mark_temporary(30.0, "unauthorized") is False
    assert key.cooldown_remaining() == 30.0
    assert key.reason == "unauthorized"
    clock.advance(29.0)
    assert key.state() is KeyState.TEMPORARY
    clock.advance(1.0)
    assert key.state() is KeyState.VALID


def test_mark_temporary_leaves_permanent_key_alone() -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    assert key.mark_permanent() is True
    assert key.mark_temporary(10.0, "rate_limited") is False
    assert key.state() is KeyState.PERMANENT
    assert key.reason == "unauthorized"
    clock.advance(3600.0)
    assert key.mark_temporary(0.0) is False
    assert key.state() is KeyState.PERMANENT


def test_mark_permanent_is_terminal_and_true_only_once() -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    key.mark_temporary(10.0)
    assert key.mark_permanent() is True
    assert key.mark_permanent() is False
    assert key.mark_permanent("forbidden") is False
    clock.advance(20.0)
    assert key.state() is KeyState.PERMANENT


def test_reason_follows_the_state() -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    assert key.reason is None
    key.mark_temporary(10.0, "rate_limited")
    assert key.reason == "rate_limited"
    clock.advance(10.0)
    assert key.reason is None
    key.mark_temporary(10.0, "unauthorized")
    assert key.reason == "unauthorized"
    clock.advance(10.0)
    assert key.reason is None


def test_default_reason_is_rate_limited() -> None:
    key = Key(SECRET_A, ManualClock())
    key.mark_temporary(10.0)
    assert key.reason == "rate_limited"


def test_cooldown_remaining_counts_down() -> None:
    clock = ManualClock(7.0)
    key = Key(SECRET_A, clock)
    assert key.cooldown_remaining() == 0.0
    key.mark_temporary(60.0)
    assert key.cooldown_remaining() == 60.0
    clock.advance(15.0)
    assert key.cooldown_remaining() == 45.0
    clock.advance(45.0)
    assert key.cooldown_remaining() == 0.0
    clock.advance(45.0)
    assert key.cooldown_remaining() == 0.0


@pytest.mark.parametrize("round_", range(20))
def test_concurrent_marks_keep_the_latest_deadline(round_: int) -> None:
    clock = ManualClock(0.0)
    key = Key(SECRET_A, clock)
    barrier = threading.Barrier(10)
    results: list[bool] = []
    lock = threading.Lock()

    def mark(cooldown: float) -> None:
        barrier.wait()
        changed = key.mark_temporary(cooldown, "rate_limited")
        with lock:
            results.append(changed)

    cooldowns = [60.0, 10.0] * 5
    threads = [threading.Thread(target=mark, args=(c,)) for c in cooldowns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 10
    assert results.count(True) == 1  # exactly one VALID -> TEMPORARY transition
    assert key.cooldown_remaining() == 60.0
    clock.advance(50.0)
    assert key.state() is KeyState.TEMPORARY
    clock.advance(15.0)
    assert key.state() is KeyState.VALID


# -- walker -------------------------------------------------------------------


def test_walker_hands_out_keys_in_order_then_raises() -> None:
    pool, _ = make_pool(3)
    walker = pool.walker()
    assert walker.attempts == 0
    assert walker.next() is pool.keys[0]
    assert walker.next() is pool.keys[1]
    assert walker.next() is pool.keys[2]
    assert walker.attempts == 3
    with pytest.raises(KeyPoolError):
        walker.next()
    with pytest.raises(KeyPoolError):  # stays exhausted
        walker.next()
    assert walker.attempts == 3


def test_every_walker_starts_at_key_zero() -> None:
    pool, _ = make_pool(3)
    first = pool.walker()
    first.next()
    first.next()
    assert pool.walker().next() is pool.keys[0]
    assert pool.walker().next() is pool.keys[0]


def test_walker_skips_keys_that_are_not_valid() -> None:
    pool, _ = make_pool(4)
    pool.keys[0].mark_temporary(30.0)
    pool.keys[2].mark_permanent()
    walker = pool.walker()
    assert walker.next() is pool.keys[1]
    assert walker.next() is pool.keys[3]
    assert walker.attempts == 2  # skipped keys are not attempts
    with pytest.raises(KeyPoolError):
        walker.next()
    assert walker.attempts == 2


def test_walker_never_goes_back_even_to_a_recovered_key() -> None:
    pool, clock = make_pool(3)
    walker = pool.walker()
    assert walker.next() is pool.keys[0]
    pool.keys[0].mark_temporary(5.0)
    assert walker.next() is pool.keys[1]
    pool.keys[1].mark_temporary(5.0)
    clock.advance(5.0)  # keys 0 and 1 recover
    assert pool.keys[0].state() is KeyState.VALID
    assert walker.next() is pool.keys[2]
    pool.keys[2].mark_temporary(5.0)
    with pytest.raises(KeyPoolError) as info:
        walker.next()
    # Key 0 is VALID again: the client may retry at once.
    assert info.value.kind is ErrorKind.RATE_LIMITED
    assert info.value.retry_after == 0.0


def test_walker_sees_a_key_that_recovers_ahead_of_it() -> None:
    pool, clock = make_pool(3)
    pool.keys[1].mark_temporary(5.0)
    walker = pool.walker()
    assert walker.next() is pool.keys[0]
    clock.advance(5.0)
    assert walker.next() is pool.keys[1]


def test_walking_does_not_change_the_pool() -> None:
    pool, _ = make_pool(4)
    pool.keys[1].mark_temporary(30.0, "unauthorized")
    pool.keys[3].mark_permanent()

    def snapshot() -> list[tuple[KeyState, str | None, float]]:
        return [(k.state(), k.reason, k.cooldown_remaining()) for k in pool.keys]

    before = snapshot()
    walker = pool.walker()
    handed = []
    with pytest.raises(KeyPoolError):
        while True:
            handed.append(walker.next())
    assert handed == [pool.keys[0], pool.keys[2]]
    assert snapshot() == before


# -- the exhausted error ------------------------------------------------------


def exhaust(pool: Pool) -> KeyPoolError:
    walker = pool.walker()
    with pytest.raises(KeyPoolError) as info:
        while True:
            walker.next()
    return info.value


def test_all_permanent_is_permanent_with_no_retry() -> None:
    pool, _ = make_pool(3)
    for key in pool.keys:
        key.mark_permanent()
    err = exhaust(pool)
    assert err.kind is ErrorKind.PERMANENT
    assert err.retry_after == 0.0
    assert str(err).startswith("all configured keys failed authentication")


def test_all_rate_limited_reports_the_soonest_recovery() -> None:
    pool, clock = make_pool(3)
    pool.keys[0].mark_temporary(40.0, "rate_limited")
    pool.keys[1].mark_temporary(15.0, "rate_limited")
    pool.keys[2].mark_temporary(25.0, "rate_limited")
    clock.advance(2.0)
    err = exhaust(pool)
    assert err.kind is ErrorKind.RATE_LIMITED
    assert err.retry_after == 13.0
    assert str(err) == "all configured keys are rate-limited (retry after 13s)"


def test_all_unauthorized_cooling_is_unauthorized_with_soonest_recovery() -> None:
    pool, _ = make_pool(2)
    pool.keys[0].mark_temporary(60.0, "unauthorized")
    pool.keys[1].mark_temporary(45.5, "unauthorized")
    err = exhaust(pool)
    assert err.kind is ErrorKind.UNAUTHORIZED
    assert err.retry_after == 45.5
    assert str(err).startswith("all configured keys failed authentication")


def test_one_rate_limited_key_makes_it_rate_limited_with_the_overall_minimum() -> None:
    pool, _ = make_pool(3)
    pool.keys[0].mark_temporary(20.0, "unauthorized")
    pool.keys[1].mark_temporary(50.0, "rate_limited")
    pool.keys[2].mark_temporary(30.0, "unauthorized")
    err = exhaust(pool)
    assert err.kind is ErrorKind.RATE_LIMITED
    assert err.retry_after == 20.0  # smallest among ALL temporary keys


def test_other_cooling_reasons_are_not_rate_limits() -> None:
    pool, _ = make_pool(2)
    pool.keys[0].mark_temporary(20.0, "forbidden")
    pool.keys[1].mark_temporary(10.0, "unauthorized")
    err = exhaust(pool)
    assert err.kind is ErrorKind.UNAUTHORIZED
    assert err.retry_after == 10.0


def test_permanent_keys_do_not_count_towards_retry_after() -> None:
    pool, _ = make_pool(3)
    pool.keys[0].mark_permanent()
    pool.keys[1].mark_temporary(30.0, "rate_limited")
    pool.keys[2].mark_permanent()
    err = exhaust(pool)
    assert err.kind is ErrorKind.RATE_LIMITED
    assert err.retry_after == 30.0


def test_a_permanent_key_once_rate_limited_is_not_a_rate_limit() -> None:
    pool, _ = make_pool(2)
    pool.keys[0].mark_temporary(10.0, "rate_limited")
    pool.keys[0].mark_permanent()
    pool.keys[1].mark_temporary(30.0, "unauthorized")
    err = exhaust(pool)
    assert err.kind is ErrorKind.UNAUTHORIZED
    assert err.retry_after == 30.0


def test_key_recovered_during_the_walk_means_retry_now() -> None:
    pool, clock = make_pool(3)
    pool.keys[2].mark_permanent()
    walker = pool.walker()
    walker.next().mark_temporary(10.0, "unauthorized")
    walker.next().mark_temporary(100.0, "rate_limited")
    clock.advance(10.0)
    with pytest.raises(KeyPoolError) as info:
        walker.next()
    assert info.value.kind is ErrorKind.RATE_LIMITED
    assert info.value.retry_after == 0.0
    assert str(info.value) == "all configured keys are rate-limited (retry after 0s)"


def test_walker_error_equals_pool_exhausted_error() -> None:
    pool, _ = make_pool(3)
    pool.keys[0].mark_temporary(12.0, "unauthorized")
    pool.keys[1].mark_permanent()
    pool.keys[2].mark_temporary(7.0, "unauthorized")
    err = exhaust(pool)
    direct = pool.exhausted_error()
    assert (err.kind, err.retry_after) == (direct.kind, direct.retry_after)
    assert (err.kind, err.retry_after) == (ErrorKind.UNAUTHORIZED, 7.0)


# -- mark_key_on_status -------------------------------------------------------


def fresh_key(start: float = 0.0) -> tuple[Key, ManualClock]:
    clock = ManualClock(start)
    return Key(SECRET_A, clock), clock


@pytest.mark.parametrize(
    ("headers", "cooldown"),
    [
        ({}, 60.0),  # no hint: sixty seconds
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "20", "retry-after-ms": "250"}, 0.25),
        ({"retry-after": "0"}, 60.0),
        ({"retry-after": "garbage"}, 60.0),
        ({"retry-after": "999999"}, 3600.0),
    ],
)
def test_429_uses_the_retry_hint(headers: dict[str, str], cooldown: float) -> None:
    key, _ = fresh_key()
    assert mark_key_on_status(key, 429, headers) is True
    assert key.state() is KeyState.TEMPORARY
    assert key.reason == "rate_limited"
    assert key.cooldown_remaining() == cooldown


def test_401_cools_sixty_seconds_by_default() -> None:
    key, clock = fresh_key()
    assert mark_key_on_status(key, 401, {"retry-after": "5"}) is True
    assert key.state() is KeyState.TEMPORARY
    assert key.reason == "unauthorized"
    assert key.cooldown_remaining() == 60.0
    clock.advance(60.0)
    assert key.state() is KeyState.VALID


def test_401_disables_when_the_policy_says_so() -> None:
    key, clock = fresh_key()
    assert mark_key_on_status(key, 401, {}, MarkPolicy(on_unauthorized="disable")) is True
    assert key.state() is KeyState.PERMANENT
    clock.advance(1e6)
    assert key.state() is KeyState.PERMANENT


def test_403_is_ignored_by_default() -> None:
    key, _ = fresh_key()
    assert mark_key_on_status(key, 403, {"retry-after": "5"}) is False
    assert key.state() is KeyState.VALID
    assert key.reason is None
    assert key.cooldown_remaining() == 0.0


def test_403_cooldown_when_opted_in() -> None:
    key, _ = fresh_key()
    assert mark_key_on_status(key, 403, {}, MarkPolicy(on_forbidden="cooldown")) is True
    assert key.state() is KeyState.TEMPORARY
    assert key.cooldown_remaining() == 60.0


def test_403_disable_when_opted_in() -> None:
    key, _ = fresh_key()
    assert mark_key_on_status(key, 403, {}, MarkPolicy(on_forbidden="disable")) is True
    assert key.state() is KeyState.PERMANENT


@pytest.mark.parametrize("status", [200, 201, 204, 400, 404, 408, 409, 422, 500, 502, 503, 529])
def test_other_statuses_leave_the_key_alone(status: int) -> None:
    key, _ = fresh_key()
    assert mark_key_on_status(key, status, {"retry-after": "30"}) is False
    assert key.state() is KeyState.VALID
    assert key.cooldown_remaining() == 0.0
    # ...and do not touch a cooling key either.
    key.mark_temporary(10.0, "unauthorized")
    assert mark_key_on_status(key, status, {"retry-after": "30"}) is False
    assert key.cooldown_remaining() == 10.0
    assert key.reason == "unauthorized"


@pytest.mark.parametrize("status", [429, 401])
def test_failover_even_when_the_key_was_already_cooling(status: int) -> None:
    key, _ = fresh_key()
    key.mark_temporary(600.0, "rate_limited")
    assert mark_key_on_status(key, status, {}) is True
    assert key.cooldown_remaining() == 600.0  # never shortened
    key.mark_permanent()
    assert mark_key_on_status(key, status, {}) is True
    assert key.state() is KeyState.PERMANENT


def test_429_extends_a_shorter_cooldown() -> None:
    key, _ = fresh_key()
    key.mark_temporary(5.0, "unauthorized")
    assert mark_key_on_status(key, 429, {"retry-after": "90"}) is True
    assert key.cooldown_remaining() == 90.0
    assert key.reason == "rate_limited"


def test_mark_policy_is_frozen_with_documented_defaults() -> None:
    policy = MarkPolicy()
    assert policy.on_unauthorized == "cooldown"
    assert policy.on_forbidden == "ignore"
    assert policy.default_cooldown == 60.0
    assert policy.max_cooldown == 3600.0
    assert policy.auth_backoff == 1.0  # the seed's flat 60 s; the gateway passes 2.0
    with pytest.raises(FrozenInstanceError):
        policy.on_forbidden = "disable"  # type: ignore[misc]
    assert MarkPolicy() == MarkPolicy()


def test_nan_cooldown_means_sixty_seconds() -> None:
    key, clock = fresh_key()
    assert key.mark_temporary(float("nan")) is True
    assert key.state() is KeyState.TEMPORARY
    assert key.cooldown_remaining() == 60.0
    clock.advance(60.0)
    assert key.state() is KeyState.VALID


def test_a_very_long_failure_streak_does_not_overflow() -> None:
    # A key refused for days: 2.0 ** 1100 overflows a float; the cooldown is capped instead.
    key, _ = fresh_key()
    key.auth_streak = 1100
    assert mark_key_on_status(key, 401, {}, MarkPolicy(auth_backoff=2.0)) is True
    assert key.cooldown_remaining() == 3600.0


def test_rate_limits_do_not_lengthen_the_next_auth_cooldown() -> None:
    key, clock = fresh_key()
    for _ in range(5):
        key.record_failure(429)
        assert mark_key_on_status(key, 429, {"retry-after": "1"}) is True
        clock.advance(1.0)
    key.record_failure(401)
    assert mark_key_on_status(key, 401, {}, MarkPolicy(auth_backoff=2.0)) is True
    assert key.cooldown_remaining() == 60.0


def test_repeated_401s_back_off_and_a_success_resets() -> None:
    key, clock = fresh_key()
    policy = MarkPolicy(auth_backoff=2.0)
    seen = []
    for _ in range(8):
        assert mark_key_on_status(key, 401, {}, policy) is True
        seen.append(key.cooldown_remaining())
        clock.advance(key.cooldown_remaining())
    assert seen == [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    key.record_success()
    assert mark_key_on_status(key, 401, {}, policy) is True
    assert key.cooldown_remaining() == 60.0


def test_the_default_policy_keeps_401_flat_at_sixty_seconds() -> None:
    key, clock = fresh_key()
    for _ in range(3):
        assert mark_key_on_status(key, 401, {}) is True
        assert key.cooldown_remaining() == 60.0
        clock.advance(60.0)
