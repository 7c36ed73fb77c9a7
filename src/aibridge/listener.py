"""An event loop that accepts every queued connection at each wakeup.

libuv (since 1.45, so uvloop since 0.18) accepts one connection per loop
iteration, to spread accepts among processes sharing a socket (libuv PR #3696).
On a gateway busy with requests in flight an iteration takes milliseconds, so a
burst of new connections (clients reconnecting, a load balancer opening its
pool) waits in the kernel's accept queue: at c=256 the benchmark saw 255
connections drain at ~60 per second, and the first request on each waited
1-4 s, while the gateway's own clock (which starts after accept) saw nothing.
asyncio's selector loop accepts up to ``backlog`` connections per readiness
event; this loop does the same on uvloop, for listening sockets handed to
``create_server(sock=...)`` (``serve`` and ``ServerThread`` always bind their
own). Everything else is uvloop's.

Use it as uvicorn's loop factory: ``loop="aibridge.listener:new_event_loop"``.
"""

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvloop

LOOP_FACTORY = "aibridge.listener:new_event_loop"

# Running out of descriptors or memory: stop accepting for a moment (as asyncio does)
# instead of spinning on a socket that stays readable.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
RESOURCE_PAUSE = 1.0


class BatchAcceptServer:
    """What uvicorn uses of ``asyncio.Server``: ``sockets``, ``close``, ``wait_closed``."""

    def __init__(
        self,
        loop: "EagerAcceptLoop",
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._batch = max(1, backlog)
        self._closed = False
        self.sockets = [sock]
        sock.setblocking(False)
        sock.listen(backlog)
        loop.add_reader(sock.fileno(), self._accept_all)

    def _accept_all(self) -> None:
        sock, loop = self._sock, self._loop
        for _ in range(self._batch):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as err:
                if err.errno in _RESOURCE_ERRNOS and not self._closed:
                    loop.remove_reader(sock.fileno())
                    loop.call_later(RESOURCE_PAUSE, self._resume)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:
            conn.close()  # reset before it was set up: nothing to serve

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept_all)

    def is_serving(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Stop accepting. The socket belongs to whoever bound it (uvicorn closes it)."""
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._sock.fileno())

    async def wait_closed(self) -> None:
        return None


class EagerAcceptLoop(uvloop.Loop):
    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,
        port: Any = None,
        *,
        sock: socket.socket | None = None,
        ssl: ssl.SSLContext | None = None,
        backlog: int = 100,
        **kwargs: Any,
    ) -> Any:
        if sock is None or ssl is not None or kwargs.get("start_serving", True) is False:
            return await super().create_server(
                protocol_factory, host, port, sock=sock, ssl=ssl, backlog=backlog, **kwargs
            )
        return BatchAcceptServer(self, sock, protocol_factory, backlog)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return EagerAcceptLoop()
