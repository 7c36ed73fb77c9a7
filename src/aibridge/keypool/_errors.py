"""The key pool's typed errors. No message ever contains a key's value."""

import math
from enum import StrEnum


class ErrorKind(StrEnum):
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    PERMANENT = "permanent"


class KeyPoolError(Exception):
    """No key in the pool can serve this request right now."""

    def __init__(self, kind: ErrorKind, retry_after: float = 0.0) -> None:
        self.kind = ErrorKind(kind)
        self.retry_after = max(0.0, float(retry_after))
        super().__init__(self._message())

    @property
    def retry_after_seconds(self) -> int:
        """Retry-after rounded up to whole seconds, as the Retry-After header wants it."""
        return math.ceil(self.retry_after)

    def _message(self) -> str:
        if self.kind is ErrorKind.RATE_LIMITED:
            return f"all configured keys are rate-limited (retry after {self.retry_after_seconds}s)"
        if self.kind is ErrorKind.UNAUTHORIZED:
            return (
                "all configured keys failed authentication "
                f"(cooling down, retry after {self.retry_after_seconds}s)"
            )
        return "all configured keys failed authentication and are disabled"

    def __reduce__(self) -> tuple[type["KeyPoolError"], tuple[ErrorKind, float]]:
        return (type(self), (self.kind, self.retry_after))


class NoKeysError(ValueError):
    def __init__(self) -> None:
        super().__init__("no keys provided")


class DuplicateKeyError(ValueError):
    def __init__(self, index: int) -> None:
        self.index = index
        super().__init__(f"duplicate key at index {index}")

    def __reduce__(self) -> tuple[type["DuplicateKeyError"], tuple[int]]:
        return (type(self), (self.index,))
