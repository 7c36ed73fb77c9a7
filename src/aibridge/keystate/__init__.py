"""Key state shared across gateway replicas (opt-in, config ``state: redis://...``).

The key pool keeps deciding from local memory; a backend here only carries a
key's state *changes* to the other replicas and back, never a request's
lookups. Keys are named by fingerprint: no key value or hint is stored or sent.
"""

from aibridge.keystate._redis import RedisKeyState

__all__ = ["RedisKeyState"]
