"""Who is calling: gateway tokens, looked up in constant time."""

import hashlib
import hmac
from collections.abc import Iterable


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenTable:
    """Gateway tokens -> user names.

    A presented token is hashed and looked up by digest, then compared with
    ``hmac.compare_digest``: the time taken does not depend on how much of a
    real token an attacker guessed.
    """

    __slots__ = ("_by_digest",)

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        # (user, token) pairs
        self._by_digest: dict[bytes, tuple[bytes, str]] = {}
        for user, token in entries:
            digest = _digest(token)
            self._by_digest[digest] = (digest, user)

    def __len__(self) -> int:
        return len(self._by_digest)

    def user_for(self, token: str | None) -> str | None:
        if not token:
            return None
        digest = _digest(token)
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer T`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
