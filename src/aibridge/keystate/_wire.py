"""What travels through Redis: key entries, channel messages, and clock conversions.

Deadlines cross process boundaries as wall-clock epoch milliseconds, because
each replica's pool clock is monotonic and means nothing to another process.
A key is named only by its fingerprint; neither its value nor its hint leaves
the process.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from aibridge.keypool import Key, KeyState, Pool

WallClock = Callable[[], float]

# Tolerance for "local is later than Redis": conversions between clocks jitter
# by a few milliseconds, and re-publishing every key on each reconnect for that
# would be churn, not information.
PUSH_BACK_SLACK_MS = 250


@dataclass(frozen=True, slots=True)
class Mark:
    """A non-VALID key state as the replicas share it."""

    deadline_ms: int  # wall-clock epoch ms; 0 when permanent
    reason: str
    permanent: bool

    def later_than(self, other: "Mark | None", slack_ms: int = 0) -> bool:
        """Keep-later order: permanent beats any cooldown, else the later deadline."""
        if other is None:
            return True
        if other.permanent:
            return False
        if self.permanent:
            return True
        return self.deadline_ms > other.deadline_ms + slack_ms


@dataclass(slots=True)
class Pending:
    """The coalesced, not-yet-written change of one key.

    ``enable`` survives coalescing with a later mark: an operator's enable must
    still delete the shared entry before the new mark is written, or the old
    permanent entry would swallow both.
    """

    enable: bool = False
    mark: Mark | None = None

    def absorb(self, newer: "Pending") -> None:
        """Fold a newer change into this older one (this one stays in the queue)."""
        if newer.enable:
            self.enable = True
            self.mark = newer.mark
        elif newer.mark is not None:
            self.mark = newer.mark


def to_wall_ms(pool: Pool, deadline: float, wall_clock: WallClock) -> int:
    return round((wall_clock() + (deadline - pool.clock.now())) * 1000.0)


def to_pool_deadline(pool: Pool, deadline_ms: int, wall_clock: WallClock) -> float:
    return pool.clock.now() + (deadline_ms / 1000.0 - wall_clock())


def snapshot(pool: Pool, key: Key, wall_clock: WallClock) -> Pending:
    """The key's current local state as a change to share (read right after it changed)."""
    state = key.state()
    if state is KeyState.PERMANENT:
        return Pending(mark=Mark(0, key.reason or "unauthorized", True))
    if math.isinf(key.deadline):
        return Pending(enable=True)  # only enable() resets the deadline to -inf
    return Pending(
        mark=Mark(to_wall_ms(pool, key.deadline, wall_clock), key.reason or "rate_limited", False)
    )


def local_mark(pool: Pool, key: Key, wall_clock: WallClock) -> Mark | None:
    """The key's local state as a Mark, or None while it is VALID."""
    state = key.state()
    if state is KeyState.VALID:
        return None
    return snapshot(pool, key, wall_clock).mark


def merge_mark(pool: Pool, key: Key, mark: Mark, wall_clock: WallClock) -> bool:
    """Apply a remote mark with the keep-later rule; True if the key changed."""
    before = (key.deadline, key.state())
    if mark.permanent:
        key.merge_remote(0.0, mark.reason, True)
    else:
        deadline = to_pool_deadline(pool, mark.deadline_ms, wall_clock)
        if deadline <= pool.clock.now():
            return False  # already over here; nothing to cool down
        key.merge_remote(deadline, mark.reason, False)
    return (key.deadline, key.state()) != before


def encode_message(*, provider: str, fp: str, op: str, mark: Mark | None, replica: str) -> bytes:
    return orjson.dumps(
        {
            "provider": provider,
            "fp": fp,
            "op": op,
            "deadline_ms": mark.deadline_ms if mark else 0,
            "reason": mark.reason if mark else None,
            "permanent": mark.permanent if mark else False,
            "replica": replica,
        }
    )


@dataclass(frozen=True, slots=True)
class Message:
    provider: str
    fp: str
    op: str  # "mark" | "enable"
    mark: Mark | None
    replica: str


def decode_message(data: bytes) -> Message:
    """Parse a channel message; raises ValueError on anything malformed."""
    raw: Any = orjson.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("message is not an object")
    provider, fp, op, replica = (
        raw.get("provider"),
        raw.get("fp"),
        raw.get("op"),
        raw.get("replica"),
    )
    if not (
        isinstance(provider, str)
        and isinstance(fp, str)
        and isinstance(op, str)
        and isinstance(replica, str)
    ):
        raise ValueError("message lacks provider, fp, op or replica")
    mark: Mark | None = None
    if op == "mark":
        deadline_ms, reason, permanent = (
            raw.get("deadline_ms"),
            raw.get("reason"),
            raw.get("permanent"),
        )
        if not isinstance(deadline_ms, int) or not isinstance(permanent, bool):
            raise ValueError("mark message lacks deadline_ms or permanent")
        mark = Mark(deadline_ms, reason if isinstance(reason, str) else "rate_limited", permanent)
    elif op != "enable":
        raise ValueError(f"unknown op {op!r}")
    return Message(provider, fp, op, mark, replica)


def decode_entry(fields: list[bytes | None]) -> Mark | None:
    """A stored entry from ``HMGET d r p``; None when absent or unreadable."""
    d, r, p = fields
    if d is None:
        return None
    try:
        deadline_ms = int(d)
    except ValueError:
        return None
    return Mark(deadline_ms, r.decode() if r else "rate_limited", p == b"1")
