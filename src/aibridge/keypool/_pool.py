"""The pool and its per-request walker."""

from collections.abc import Iterator, Sequence

from aibridge.keypool._clock import Clock, SystemClock
from aibridge.keypool._errors import DuplicateKeyError, ErrorKind, KeyPoolError, NoKeysError
from aibridge.keypool._key import ChangeListener, Key, KeyState


class Pool:
    """An ordered, immutable set of keys sharing one clock."""

    def __init__(
        self,
        keys: Sequence[str],
        clock: Clock | None = None,
        *,
        listener: ChangeListener | None = None,
    ) -> None:
        if not keys:
            raise NoKeysError()
        seen: set[str] = set()
        for i, value in enumerate(keys):
            if value in seen:
                raise DuplicateKeyError(i)
            seen.add(value)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._listeners: list[ChangeListener] = [listener] if listener is not None else []
        self.keys: tuple[Key, ...] = tuple(
            Key(value, self.clock, index=i, listener=self._notify) for i, value in enumerate(keys)
        )

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)

    def _notify(self, key: Key) -> None:
        for listener in self._listeners:
            listener(key)

    def add_listener(self, listener: ChangeListener) -> None:
        """Also call ``listener`` after each local state change of a key (metrics, replication)."""
        self._listeners.append(listener)

    def set_listener(self, listener: ChangeListener | None) -> None:
        """Replace every listener with ``listener`` (or none)."""
        self._listeners[:] = [listener] if listener is not None else []

    def states(self) -> list[KeyState]:
        return [k.state() for k in self.keys]

    def walker(self, start: int = 0) -> "Walker":
        """A walker over the keys, beginning at index ``start`` and wrapping around."""
        return Walker(self, start)

    def exhausted_error(self) -> KeyPoolError:
        """The error for "no key can serve", computed over all keys in order."""
        smallest: float | None = None
        rate_limited = False
        for key in self.keys:
            state, reason, remaining = key.view()
            if state is KeyState.VALID:
                # It recovered while the walk went on: the client may retry at once.
                return KeyPoolError(ErrorKind.RATE_LIMITED, 0.0)
            if state is KeyState.TEMPORARY:
                if smallest is None or remaining < smallest:
                    smallest = remaining
                if reason == "rate_limited":
                    rate_limited = True
        if smallest is not None:
            kind = ErrorKind.RATE_LIMITED if rate_limited else ErrorKind.UNAUTHORIZED
            return KeyPoolError(kind, smallest)
        return KeyPoolError(ErrorKind.PERMANENT, 0.0)


class Walker:
    """One request's walk over a pool: each key at most once, never backwards."""

    __slots__ = ("_keys", "_pool", "_pos", "_start", "attempts")

    def __init__(self, pool: Pool, start: int = 0) -> None:
        self._keys = pool.keys
        self._start = start % len(pool.keys)
        self._pos = 0
        self.attempts = 0
        self._pool = pool

    def next(self) -> Key:
        keys = self._keys
        n = len(keys)
        while self._pos < n:
            key = keys[(self._start + self._pos) % n]
            self._pos += 1
            if key.state() is KeyState.VALID:
                self.attempts += 1
                return key
        raise self._pool.exhausted_error()
