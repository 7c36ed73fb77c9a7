"""Run any ASGI app with uvicorn in a background thread, on a socket bound here.

Binding the socket ourselves (port 0 by default) means the port is known before
the server starts and no two tests race for a port. ``start()`` returns once
uvicorn has finished its startup (lifespan included) and is accepting; it waits
on an event set from uvicorn's own ``startup``, never on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn

from aibridge.listener import LOOP_FACTORY

__all__ = ["ServerThread"]


class _ThreadServer(uvicorn.Server):
    """A ``uvicorn.Server`` that reports startup to another thread and stops promptly."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            await super().startup(sockets=sockets)
        finally:
            # Set on failure too (lifespan startup may sys.exit): the waiter checks .started.
            self._ready.set()

    async def main_loop(self) -> None:
        # uvicorn's loop only notices should_exit on a 0.1 s tick; wake at once on stop().
        assert self._wake is not None
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    def request_exit(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(wake.set)


class ServerThread:
    """Serve ``app`` on ``host:port`` from a daemon thread; a context manager.

    ``port=0`` picks a free port; read it back from ``.port`` / ``.url``.
    Extra keyword arguments go to ``uvicorn.Config`` unchanged.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifespan: Literal["auto", "on", "off"] = "auto",
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        graceful_timeout: int = 2,
        **config: Any,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._lifespan = lifespan
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._graceful_timeout = graceful_timeout
        self._config = config
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("ServerThread already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        options: dict[str, Any] = {
            "loop": LOOP_FACTORY,
            "http": "httptools",
            "lifespan": self._lifespan,
            "log_level": "warning",
            # Leave the host application's logging configuration alone.
            "log_config": None,
            "access_log": False,
            "timeout_graceful_shutdown": self._graceful_timeout,
        }
        options.update(self._config)
        ready = threading.Event()
        try:
            server = _ThreadServer(uvicorn.Config(self.app, **options), ready)
        except BaseException:
            sock.close()  # a bad uvicorn option: the thread that would close it never starts
            raise
        self._server = server
        self._error = None
        thread = threading.Thread(
            target=self._run, args=(server, sock, ready), name=f"uvicorn:{self.port}", daemon=True
        )
        self._thread = thread
        thread.start()
        if not ready.wait(self._startup_timeout) or not server.started:
            self.stop()
            raise RuntimeError(f"server on {self.url} failed to start") from self._error
        return self

    def _run(self, server: _ThreadServer, sock: socket.socket, ready: threading.Event) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit too, from a failed startup
            self._error = exc
        finally:
            sock.close()
            ready.set()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is not None:
            server.request_exit()
        if thread is not None:
            thread.join(self._shutdown_timeout)
            if thread.is_alive():
                raise RuntimeError(
                    f"server on {self.url} did not stop in {self._shutdown_timeout}s"
                )
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
