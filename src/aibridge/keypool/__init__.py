"""The key pool: an ordered set of upstream API keys for one provider.

Theory of operation
-------------------
A pool holds keys in the order they were configured. Every request walks the
pool with its own :class:`Walker`, starting at key 0 (primary with fallback):
``next()`` hands out the first VALID key at or after the walker's position and
moves past it, never going back. The caller sends the request with that key
and asks :func:`mark_key_on_status` whether the answer means "this key, not
the request" (429, 401); if so it marks the key and asks the walker again.

Rules (everything that affects a key's state lives in ``_key.py``):

* A key's state is derived, never stored: PERMANENT if marked permanent,
  TEMPORARY while ``clock.now()`` is strictly before its cooldown deadline,
  otherwise VALID. Recovery is lazy: no timers, no tasks.
* A cooldown never shortens; PERMANENT is terminal (only an operator's
  explicit ``enable()`` clears it).
* When a walker runs dry, the error is computed over ALL keys, so the caller
  can tell its client exactly when the first key recovers.

This package does no I/O and knows nothing of asyncio; time comes from an
injected :class:`Clock`.
"""

from aibridge.keypool._clock import Clock, ManualClock, SystemClock
from aibridge.keypool._errors import DuplicateKeyError, ErrorKind, KeyPoolError, NoKeysError
from aibridge.keypool._key import Key, KeyState, fingerprint, mask_key
from aibridge.keypool._policy import MarkPolicy, mark_key_on_status, parse_retry_hint
from aibridge.keypool._pool import Pool, Walker

__all__ = [
    "Clock",
    "DuplicateKeyError",
    "ErrorKind",
    "Key",
    "KeyPoolError",
    "KeyState",
    "ManualClock",
    "MarkPolicy",
    "NoKeysError",
    "Pool",
    "SystemClock",
    "Walker",
    "fingerprint",
    "mark_key_on_status",
    "mask_key",
    "parse_retry_hint",
]
