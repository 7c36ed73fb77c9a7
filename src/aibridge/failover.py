"""The one failover loop. Every route — bridged or passthrough, blocking or
streaming, pool or BYOK — sends its upstream request through ``send_with_failover``.

The loop ends at the first upstream answer that is not "this key, not the
request" (per ``mark_key_on_status``); that answer is then committed and relayed
by the caller. Failover is therefore possible until the first byte of a
response is relayed, and never after.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any

from aibridge.keypool import Key, MarkPolicy, Walker, mark_key_on_status
from aibridge.upstream import Origin, UpstreamClient, UpstreamError, UpstreamResponse


class UpstreamUnreachable(Exception):
    """The upstream could not be reached or broke before answering: not a key problem."""


class PoolCredentials:
    """Keys from the provider's pool, one per attempt, in walker order."""

    __slots__ = ("_header", "_policy", "_walker", "key")

    def __init__(self, walker: Walker, provider_type: ModuleType, policy: MarkPolicy) -> None:
        self._walker = walker
        self._header = provider_type.key_header
        self._policy = policy
        self.key: Key | None = None

    @property
    def attempts(self) -> int:
        return self._walker.attempts

    def next(self) -> tuple[tuple[str, str], str]:
        """The auth header for the next key and its hint; raises KeyPoolError when none is left."""
        key = self._walker.next()
        self.key = key
        header: tuple[str, str] = self._header(key.value)
        return header, key.hint

    def secret(self) -> str | None:
        """The value of the key handed out last (to mask it where an upstream echoes it)."""
        return self.key.value if self.key is not None else None

    def should_fail_over(self, response: UpstreamResponse) -> bool:
        key = self.key
        assert key is not None
        status = response.status
        if status == 429 or status == 401 or status == 403:
            if status != 403 or self._policy.on_forbidden != "ignore":
                key.record_failure(status)
            return mark_key_on_status(key, status, response.headers, self._policy)
        if status < 400:
            key.record_success()
        return False


class ByokCredential:
    """The client's own provider key: exactly one attempt, never marked, never failed over."""

    __slots__ = ("_header", "_hint", "_secret", "attempts")

    def __init__(self, header: tuple[str, str], hint: str, secret: str) -> None:
        self._header = header
        self._hint = hint
        self._secret = secret
        self.attempts = 0

    def secret(self) -> str:
        return self._secret

    def next(self) -> tuple[tuple[str, str], str]:
        if self.attempts:
            raise AssertionError("BYOK gets one attempt")  # the loop never asks twice
        self.attempts = 1
        return self._header, self._hint

    def should_fail_over(self, response: UpstreamResponse) -> bool:
        return False


Credentials = PoolCredentials | ByokCredential


async def send_with_failover(
    client: UpstreamClient,
    origin: Origin,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    credentials: Credentials,
    connect_timeout: float | None,
    hints: list[str],
    attempt_span: Callable[[int, str], AbstractContextManager[Any]] | None = None,
) -> UpstreamResponse:
    """Send until an answer is not a key failure; return it with its body unread.

    Raises ``KeyPoolError`` when the pool runs dry and ``UpstreamUnreachable``
    when the upstream cannot be reached. ``hints`` collects the masked key
    hints tried, in order. ``attempt_span`` (tracing on) wraps each attempt.
    """
    while True:
        auth, hint = credentials.next()
        hints.append(hint)
        request = client.request(origin, method, target, [*headers, auth], body, connect_timeout)
        try:
            if attempt_span is None:
                response = await request
            else:
                with attempt_span(len(hints), hint) as span:
                    response = await request
                    span.set_attribute("http.response.status_code", response.status)
        except UpstreamError as err:
            raise UpstreamUnreachable(str(err)) from None
        if credentials.should_fail_over(response):
            # Read the (small) error body so the connection goes back to the pool.
            try:
                await response.read()
            except UpstreamError:
                pass
            finally:
                response.release()
            continue
        return response
