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
    request has run for ``WATCH_DELAY`` (or once it streams): most requests end
    sooner and never pay for a task, and a disconnect is still noticed within that
    delay. One timer handle per request does both jobs: it first fires at
    ``WATCH_DELAY`` to start the watcher, then at the fixed deadline (a blocking
    response, a stream's first byte); a stream then switches to an idle deadline
    that ``touch()`` pushes forward at each chunk — one clock read, no timer churn.
    """

    WATCH_DELAY = 0.05

    __slots__ = (
        "_deadline_at",
        "_idle",
        "_last",
        "_loop",
        "_receive",
        "_task",
        "_timer",
        "_watch",
        "reason",
    )

    def __init__(self, receive: Receive, deadline: float) -> None:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._receive = receive
        self._watch: asyncio.Task[None] | None = None
        self._idle = 0.0
        self._last = 0.0
        self.reason: str | None = None  # "client_closed" | "timeout" once fired
        now = loop.time()
        self._deadline_at = now + deadline
        self._timer: asyncio.TimerHandle | None = loop.call_at(
            min(now + self.WATCH_DELAY, self._deadline_at), self._on_timer
        )

    def _on_timer(self) -> None:
        self._start_watch()
        if self._loop.time() >= self._deadline_at:
            self._fire("timeout")
        else:
            self._timer = self._loop.call_at(self._deadline_at, self._fire, "timeout")

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = self._loop.create_task(self._wait_disconnect(self._receive))

    async def _wait_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._fire("client_closed")
                return

    def idle(self, seconds: float) -> None:
        """From now on, time out after ``seconds`` without a ``touch()``."""
        self._start_watch()  # a stream outlives WATCH_DELAY: watch it from its start
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
