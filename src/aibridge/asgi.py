"""Small raw-ASGI helpers: sending whole responses and guarding a request.

The gateway speaks raw ASGI on the hot path (no framework): these are the only
pieces it needs.
"""

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RawHeaders = list[tuple[bytes, bytes]]


async def send_whole(send: Send, status: int, headers: RawHeaders, body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def encode_headers(headers: dict[str, str]) -> RawHeaders:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class RequestGuard:
    """Cancels the request's task when the client goes away or a deadline passes.

    uvicorn's ``send()`` does not raise when the client has gone, so a watcher
    reads ``receive()`` for ``http.disconnect``. The watcher task starts only once a
    request has run for ``WATCH_DELAY``: most requests end sooner and never pay
    for a task, and a disconnect is still noticed within that delay.
    Timeouts are one timer handle per
    request: a fixed deadline (a blocking response, a stream's first byte), then
    an idle deadline pushed forward by ``touch()`` at each chunk — one clock read,
    no timer churn per chunk.
    """

    WATCH_DELAY = 0.05

    __slots__ = ("_idle", "_last", "_loop", "_task", "_timer", "_watch", "_watch_start", "reason")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._timer: asyncio.TimerHandle | None = None
        self._watch: asyncio.Task[None] | None = None
        self._watch_start: asyncio.TimerHandle | None = None
        self._idle = 0.0
        self._last = 0.0
        self.reason: str | None = None  # "client_closed" | "timeout" once fired

    def watch_disconnect(self, receive: Receive) -> None:
        self._watch_start = self._loop.call_later(self.WATCH_DELAY, self._start_watch, receive)

    def _start_watch(self, receive: Receive) -> None:
        self._watch_start = None
        self._watch = self._loop.create_task(self._wait_disconnect(receive))

    async def _wait_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._fire("client_closed")
                return

    def deadline(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._idle = 0.0
        self._timer = self._loop.call_later(seconds, self._fire, "timeout")

    def idle(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._idle = seconds
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + seconds, self._check_idle)

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check_idle(self) -> None:
        due = self._last + self._idle
        if self._loop.time() >= due:
            self._fire("timeout")
        else:
            self._timer = self._loop.call_at(due, self._check_idle)

    def _fire(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._task.cancel()

    def close(self) -> None:
        if self._watch_start is not None:
            self._watch_start.cancel()
            self._watch_start = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
