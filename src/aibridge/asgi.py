"""Small raw-ASGI helpers: sending whole responses and guarding a request.

The gateway speaks raw ASGI on the hot path (no framework): these are the only
pieces it needs.
"""

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

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
    delay. Deadlines (a blocking response, a stream's first byte, then a stream's
    idle time, pushed forward by ``touch()`` at each chunk) are checked by the
    ``GuardSweeper`` every ``SWEEP_INTERVAL``: no timer is armed or cancelled per
    request, which cost uvloop about 2 µs each.
    """

    WATCH_DELAY = 0.05

    __slots__ = (
        "_deadline_at",
        "_idle",
        "_last",
        "_loop",
        "_receive",
        "_started",
        "_sweeper",
        "_task",
        "_watch",
        "reason",
    )

    def __init__(self, receive: Receive, deadline: float, sweeper: "GuardSweeper") -> None:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._receive = receive
        self._watch: asyncio.Task[None] | None = None
        self._idle = 0.0
        self._started = self._last = loop.time()
        self._deadline_at = self._started + deadline
        self.reason: str | None = None  # "client_closed" | "timeout" once fired
        self._sweeper = sweeper
        sweeper.add(self)

    def check(self, now: float) -> None:
        """Called by the sweeper: start the watcher, fire a passed deadline."""
        if self._watch is None and now - self._started >= self.WATCH_DELAY:
            self._start_watch()
        if self._idle:
            if now - self._last >= self._idle:
                self._fire("timeout")
        elif now >= self._deadline_at:
            self._fire("timeout")

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
        self._idle = seconds
        self._last = self._loop.time()

    def touch(self) -> None:
        self._last = self._loop.time()

    def _fire(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._task.cancel()

    def close(self) -> None:
        self._sweeper.discard(self)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


class GuardSweeper:
    """One periodic task that checks every request in flight (see RequestGuard)."""

    SWEEP_INTERVAL = 0.05

    def __init__(self) -> None:
        self._guards: set[RequestGuard] = set()
        self._task: asyncio.Task[None] | None = None
        self.add = self._guards.add
        self.discard = self._guards.discard

    def ensure_running(self) -> None:
        """Start the sweep on the running loop if it is not running (cheap to call often)."""
        task = self._task
        if task is None or task.done():
            self._task = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.SWEEP_INTERVAL)
            if self._guards:
                now = loop.time()
                for guard in list(self._guards):
                    guard.check(now)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class DirectChunkWriter:
    """Writes a stream's body chunks straight to uvicorn's transport, framed exactly as
    uvicorn's own ``send`` frames them (chunked encoding).

    A paced stream's chunks each arrive alone; through ASGI each costs a task switch, a
    message dict and uvicorn's ``send`` coroutine (about a quarter of the gateway's CPU
    per chunk). Used only between ``http.response.start`` and the last body message,
    both sent through ``send`` as usual, and only on uvicorn's httptools protocol when
    it chose chunked encoding: ``for_send`` returns None otherwise, and the caller uses
    plain ASGI.
    """

    __slots__ = ("_cycle", "_feed", "_flow", "_touch", "_transport")

    def __init__(
        self,
        cycle: RequestResponseCycle,
        feed: Callable[[bytes], bytes] | None,
        touch: Callable[[], None],
    ) -> None:
        self._cycle = cycle
        self._transport = cycle.transport
        self._flow = cycle.flow
        self._feed = feed
        self._touch = touch

    @classmethod
    def for_send(
        cls, send: Send, feed: Callable[[bytes], bytes] | None, touch: Callable[[], None]
    ) -> "DirectChunkWriter | None":
        cycle = getattr(send, "__self__", None)
        if (
            type(cycle) is not RequestResponseCycle
            or cycle.chunked_encoding is not True
            or cycle.response_complete
            or cycle.scope["method"] == "HEAD"
        ):
            return None
        return cls(cycle, feed, touch)

    def write(self, data: bytes) -> bool:
        self._touch()
        out = self._feed(data) if self._feed is not None else data
        if out and not self._cycle.disconnected:
            self._transport.write(b"%x\r\n%b\r\n" % (len(out), out))
        return self._flow.write_paused

    async def drain(self) -> None:
        await self._flow.drain()
