"""One upstream key and its derived state. All state changes live here."""

import hashlib
import hmac
import threading
from collections.abc import Callable
from enum import StrEnum

from aibridge.keypool._clock import Clock

DEFAULT_COOLDOWN = 60.0
# No cooldown lasts longer than this (an infinite one would break Retry-After arithmetic).
_FAR_FUTURE = 10 * 365 * 86400.0


class KeyState(StrEnum):
    VALID = "valid"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


def mask_key(value: str) -> str:
    """A hint that names a key without revealing it: ``sk-a...wxyz``."""
    n = len(value)
    keep = 4 if n >= 20 else 2 if n >= 10 else 1 if n >= 5 else 0
    if n <= 2 * keep or keep == 0:
        return "..."
    return f"{value[:keep]}...{value[-keep:]}"


_FINGERPRINT_SALT = b"aibridge/key-fingerprint/v1"


def fingerprint(value: str) -> str:
    """A stable, non-reversible id for a key (16 hex chars of an HMAC-SHA256).

    Names a key in Redis and in the admin API, where even a hint is too little
    to tell keys apart and the value must never appear.
    """
    return hmac.new(_FINGERPRINT_SALT, value.encode(), hashlib.sha256).hexdigest()[:16]


# Called after a key's state changed through a local decision (not a remote merge).
ChangeListener = Callable[["Key"], None]


class Key:
    """An upstream API key with a cooldown deadline on the pool's clock.

    ``state()`` is computed from the deadline and the permanent flag at each call,
    so a cooled-down key is VALID again the instant its deadline passes.
    """

    __slots__ = (
        "_clock",
        "_deadline",
        "_listener",
        "_lock",
        "_permanent",
        "_reason",
        "auth_streak",
        "consecutive_failures",
        "fingerprint",
        "hint",
        "index",
        "last_failure_at",
        "last_status",
        "last_used",
        "served",
        "value",
    )

    def __init__(
        self,
        value: str,
        clock: Clock,
        index: int = 0,
        listener: ChangeListener | None = None,
    ) -> None:
        self.value = value
        self.hint = mask_key(value)
        self.fingerprint = fingerprint(value)
        self.index = index
        self._clock = clock
        self._lock = threading.Lock()
        self._deadline = float("-inf")
        self._reason: str | None = None
        self._permanent = False
        self._listener = listener
        # Consecutive auth failures (401/403 marks): each one doubles the next cooldown.
        self.auth_streak = 0
        # Health bookkeeping (read by the admin API; written by the gateway).
        self.consecutive_failures = 0
        self.last_status: int | None = None
        self.last_failure_at: float | None = None
        self.served = 0
        self.last_used: float | None = None

    def __repr__(self) -> str:
        return f"Key({self.hint!r}, {self.state().value})"

    # -- reading -----------------------------------------------------------

    def state(self) -> KeyState:
        if self._permanent:
            return KeyState.PERMANENT
        if self._clock.now() < self._deadline:
            return KeyState.TEMPORARY
        return KeyState.VALID

    @property
    def reason(self) -> str | None:
        """Why the key is not VALID (``rate_limited``, ``unauthorized``, ...), else None."""
        return None if self.state() is KeyState.VALID else self._reason

    @property
    def deadline(self) -> float:
        """The cooldown deadline on the pool's clock (``-inf`` when never marked)."""
        return self._deadline

    def view(self) -> tuple[KeyState, str | None, float]:
        """State, reason and remaining cooldown, all read at one instant."""
        permanent, deadline, reason = self._permanent, self._deadline, self._reason
        if permanent:
            return KeyState.PERMANENT, reason, 0.0
        remaining = deadline - self._clock.now()
        if remaining > 0:
            return KeyState.TEMPORARY, reason, remaining
        return KeyState.VALID, None, 0.0

    def cooldown_remaining(self) -> float:
        if self._permanent:
            return 0.0
        return max(0.0, self._deadline - self._clock.now())

    # -- local decisions ---------------------------------------------------

    def mark_temporary(self, cooldown: float, reason: str = "rate_limited") -> bool:
        """Cool the key down for ``cooldown`` seconds; never shortens a cooldown.

        Returns True only for a VALID -> TEMPORARY transition.
        """
        if not cooldown > 0:  # also NaN, which would leave the key VALID yet return True
            cooldown = DEFAULT_COOLDOWN
        cooldown = min(cooldown, _FAR_FUTURE)
        with self._lock:
            if self._permanent:
                return False
            now = self._clock.now()
            deadline = now + cooldown
            if self._deadline > deadline:
                return False
            was_valid = now >= self._deadline
            changed = deadline != self._deadline or reason != self._reason
            self._deadline = deadline
            self._reason = reason
        if changed and self._listener is not None:
            self._listener(self)
        return was_valid

    def mark_permanent(self, reason: str = "unauthorized") -> bool:
        """Bench the key for good. Returns True only the first time."""
        with self._lock:
            if self._permanent:
                return False
            self._permanent = True
            self._reason = reason
        if self._listener is not None:
            self._listener(self)
        return True

    def enable(self) -> bool:
        """An operator's override: clear any cooldown or permanent mark."""
        with self._lock:
            was_valid = not self._permanent and self._clock.now() >= self._deadline
            self._permanent = False
            self._deadline = float("-inf")
            self._reason = None
            self.consecutive_failures = 0
            self.auth_streak = 0
        if self._listener is not None:
            self._listener(self)
        return not was_valid

    # -- merges from other replicas (no listener: the change came from outside) --

    def merge_remote(self, deadline: float, reason: str | None, permanent: bool) -> None:
        """Apply another replica's view with the keep-later rule."""
        with self._lock:
            if permanent:
                self._permanent = True
                self._reason = reason or "unauthorized"
            elif not self._permanent and deadline > self._deadline and deadline < _FAR_FUTURE:
                self._deadline = deadline
                self._reason = reason

    def reset_remote(self) -> None:
        """Another replica (an operator) enabled the key."""
        with self._lock:
            self._permanent = False
            self._deadline = float("-inf")
            self._reason = None
            self.consecutive_failures = 0

    def adopt(self, other: "Key") -> None:
        """Take over another Key object's state and counters (same value, config reload)."""
        with self._lock:
            self._deadline = other._deadline
            self._reason = other._reason
            self._permanent = other._permanent
            self.consecutive_failures = other.consecutive_failures
            self.auth_streak = other.auth_streak
            self.last_status = other.last_status
            self.last_failure_at = other.last_failure_at
            self.served = other.served
            self.last_used = other.last_used

    # -- bookkeeping -------------------------------------------------------

    def record_success(self) -> None:
        self.served += 1
        self.consecutive_failures = 0
        self.auth_streak = 0
        self.last_used = self._clock.now()

    def record_failure(self, status: int) -> None:
        self.consecutive_failures += 1
        self.last_status = status
        now = self._clock.now()
        self.last_failure_at = now
        self.last_used = now
