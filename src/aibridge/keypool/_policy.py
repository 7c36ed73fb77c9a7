"""How an upstream's answer marks the key that got it."""

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from aibridge.keypool._key import Key

MAX_RETRY_HINT = 3600.0


@dataclass(frozen=True, slots=True)
class MarkPolicy:
    # A 401 can be a passing upstream glitch: cool down by default, disable on request.
    on_unauthorized: Literal["cooldown", "disable"] = "cooldown"
    # A 403 is usually about the request (model access, region), not the key.
    on_forbidden: Literal["ignore", "cooldown", "disable"] = "ignore"
    default_cooldown: float = 60.0
    max_cooldown: float = MAX_RETRY_HINT
    # Each further consecutive 401/403 multiplies the cooldown by this (2.0: 60 s, 2 min,
    # 4 min, ... capped at max_cooldown). The seed's flat 60 s is 1.0, the default here;
    # the gateway uses 2.0. ``Key.record_success`` resets the streak.
    auth_backoff: float = 1.0


def _positive_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        return 0.0
    if value != value or value <= 0 or value == float("inf"):  # NaN, <= 0, inf
        return 0.0
    return value


def parse_retry_hint(headers: Mapping[str, str], max_seconds: float = MAX_RETRY_HINT) -> float:
    """Seconds the upstream asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    Missing, invalid, non-positive or past values give 0.0; the result is clamped to
    ``max_seconds`` so a broken upstream cannot bench a key for days.
    """
    retry_after_ms: str | None = None
    retry_after: str | None = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "retry-after-ms":
            retry_after_ms = value
        elif lowered == "retry-after":
            retry_after = value
    seconds = 0.0
    if retry_after_ms is not None:
        seconds = _positive_float(retry_after_ms) / 1000.0
    if seconds <= 0 and retry_after is not None:
        seconds = _positive_float(retry_after)
        if seconds <= 0:
            seconds = _seconds_until_http_date(retry_after)
    return min(seconds, max_seconds)


def _seconds_until_http_date(text: str) -> float:
    text = text.strip()
    if not text:
        return 0.0
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when is None:
        return 0.0
    delta = when.timestamp() - time.time()
    return delta if delta > 0 else 0.0


def _auth_cooldown(key: Key, policy: MarkPolicy) -> float:
    """60 s, then 2 min, 4 min, ... for each further consecutive auth failure (<= max)."""
    streak = key.auth_streak
    key.auth_streak = streak + 1
    try:
        cooldown = policy.default_cooldown * (policy.auth_backoff**streak)
    except OverflowError:  # a long streak: float pow raises instead of giving inf
        return policy.max_cooldown
    return min(cooldown, policy.max_cooldown)


def mark_key_on_status(
    key: Key,
    status: int,
    headers: Mapping[str, str],
    policy: MarkPolicy = MarkPolicy(),
) -> bool:
    """Mark ``key`` for the upstream's ``status``; True means "fail over to the next key"."""
    if status == 429:
        hint = parse_retry_hint(headers, policy.max_cooldown)
        key.mark_temporary(hint if hint > 0 else policy.default_cooldown, "rate_limited")
        return True
    if status == 401:
        if policy.on_unauthorized == "disable":
            key.mark_permanent("unauthorized")
        else:
            key.mark_temporary(_auth_cooldown(key, policy), "unauthorized")
        return True
    if status == 403 and policy.on_forbidden != "ignore":
        if policy.on_forbidden == "disable":
            key.mark_permanent("forbidden")
        else:
            key.mark_temporary(_auth_cooldown(key, policy), "forbidden")
        return True
    return False
