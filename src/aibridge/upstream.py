"""The upstream leg: a lean HTTP/1.1 client with keep-alive connection pools.

The gateway sends one kind of request (a method, a path, a few headers, a body it
already holds) and relays the answer as bytes, so a general client is mostly cost:
per request aiohttp builds a URL object, a request and a response object, a
case-insensitive header multidict and a timer, about 60 µs of Python on this
path. Here a request is one preformatted header block and one ``write``; the
answer is parsed by httptools (the parser uvicorn uses) into a status, the
headers the gateway looks at, and body chunks handed on as they arrive.

Rules:
- a connection goes back to its pool only after a complete response that allows
  keep-alive; anything else (an error, a cancel, a half-read body) closes it;
- idle connections older than ``keepalive`` are closed instead of reused;
- reading pauses when more than ``HIGH_WATER`` bytes wait unread, so a slow
  client cannot make the gateway buffer a whole stream;
- every failure to reach the upstream or to read its answer raises
  ``UpstreamError`` (connect failures and timeouts included).
"""

import asyncio
import functools
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
KEEPALIVE_SECONDS = 60.0


# Response headers the connection reads for itself as they arrive.
_CONTENT_TYPE, _LENGTH, _TRANSFER_ENCODING = range(3)
_NOTED = {
    b"content-type": _CONTENT_TYPE,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
}


class UpstreamError(Exception):
    """The upstream could not be reached, or broke before its answer was complete."""


class BodySink(Protocol):
    """Where ``UpstreamResponse.pipe`` hands body chunks, from the connection's callback."""

    def write(self, data: bytes) -> bool:
        """Take one chunk; True when the sink is full (reading pauses until ``drain``)."""
        ...

    async def drain(self) -> None: ...


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # loads the CA bundle: once per process


class Origin:
    """Where requests go: scheme, host and port, parsed once from a base URL."""

    __slots__ = ("host", "host_header", "path_prefix", "port", "ssl", "url")

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
        self.url = base_url
        self.host = parts.hostname
        secure = parts.scheme == "https"
        default_port = 443 if secure else 80
        self.port = parts.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.path_prefix = parts.path.rstrip("/")
        self.ssl: ssl.SSLContext | None = None
        if secure:
            self.ssl = ssl_context if ssl_context is not None else _default_tls()


class UpstreamResponse:
    """One answer: status and headers at once, the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_headers",
        "_must_drain",
        "_sink",
        "_sink_error",
        "_waiter",
        "content_type",
        "raw_headers",
        "status",
    )

    def __init__(
        self,
        conn: "_Connection",
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        content_type: str,
    ) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.raw_headers = raw_headers  # (lowercased name, value), in the upstream's order
        self._headers: dict[str, str] | None = None
        self.content_type = content_type
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: BodySink | None = None
        self._sink_error: BaseException | None = None
        self._must_drain = False

    @property
    def headers(self) -> dict[str, str]:
        """Lowercased names; a repeated name keeps its last value (what the gateway reads,
        content-type, retry-after and the like, is never repeated). Built when first read:
        a successful answer never needs it."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in self.raw_headers
            }
        return headers

    # -- fed by the connection --------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        if self._sink is not None:
            return  # handed on whole at the end of this read: see _flush_to_sink
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _flush_to_sink(self) -> None:
        """Hand what this read brought to the sink, joined: one write per read, however
        many HTTP chunks it held."""
        sink = self._sink
        if sink is None or not self._chunks or self._done:
            return  # the read that ended the body: pipe() returns it to go with the end
        try:
            full = sink.write(self._take())
        except Exception as err:  # raised again in pipe(), in the relaying task
            self._sink, self._sink_error, full = None, err, True
        if full:
            self._must_drain = True
            if self._conn is not None:
                self._conn.pause()
            self._wake()

    def _finish(self, error: UpstreamError | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the gateway ----------------------------------------------------------

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        conn = self._conn
        if conn is not None:
            conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole body (raises ``UpstreamError`` if it breaks off)."""
        parts: list[bytes] = []
        while True:
            if self._chunks:
                parts.append(self._take())
            if self._done:
                break
            await self._wait()
        if self._error is not None:
            raise self._failure()
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive: everything buffered so far, joined, per step."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._done:
                break
            else:
                await self._wait()
        if self._error is not None:
            raise self._failure()
        self.release()

    async def pipe(self, sink: BodySink) -> bytes:
        """Hand the body to ``sink`` as it arrives, one ``write`` per upstream read, from
        the connection's own callback: no task switch per chunk (a paced stream pays one
        per chunk otherwise). Returns what came with the end of the body, not handed to
        the sink, so the caller can send it with its closing message (one client write
        instead of two). Raises ``UpstreamError`` if the body breaks off, or what
        ``sink.write`` raised."""
        while not self._done:
            if self._chunks:  # arrived before pipe() or while draining
                if sink.write(self._take()):
                    await sink.drain()
                continue
            self._sink = sink
            try:
                await self._wait()  # woken at the end, or when the sink is full
            finally:
                self._sink = None
            if self._sink_error is not None:
                error, self._sink_error = self._sink_error, None
                raise error
            if self._must_drain:
                self._must_drain = False
                await sink.drain()
                if self._conn is not None:
                    self._conn.resume()
        if self._error is not None:
            raise self._failure()
        rest = self._take() if self._chunks else b""
        self.release()
        return rest

    def _failure(self) -> UpstreamError:
        # A fresh exception per raise: raising the stored one would tie its traceback
        # (and through it this response) into a cycle only the collector can free.
        assert self._error is not None
        return UpstreamError(*self._error.args)

    def release(self) -> None:
        """Done with this response: the connection is reused if the body was complete,
        closed otherwise (a half-read answer never goes back to the pool)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.response_done(self._done and self._error is None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses answers and feeds them to their response."""

    def __init__(self, pool: "_OriginPool") -> None:
        self._pool = pool
        # The parser calls back into this connection: a cycle, broken in connection_lost so
        # that a closed connection is freed at once instead of by the cyclic collector.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._paused = False
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._content_type = ""
        self._delimited = False
        self._response: UpstreamResponse | None = None
        self._complete = False
        self._head_only = False
        self._reads_to_close = False
        self._keep_alive = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return  # lost already
        if self._head is None and self._response is None:
            self._broken("upstream sent data on an idle connection")
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._broken(f"malformed response from upstream ({type(err).__name__})")
            return
        response = self._response
        if response is not None and response._sink is not None:
            response._flush_to_sink()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pool.forget(self)
        response = self._response
        if response is not None and not self._complete:
            if self._reads_to_close and exc is None:
                # No length and not chunked: the body is whatever came before the close.
                self._complete = True
                response._finish()
            else:
                response._finish(UpstreamError("upstream closed the connection mid-response"))
        head = self._head
        if head is not None and not head.done():
            head.set_exception(UpstreamError("upstream closed the connection before answering"))
        # Break the cycles (parser <-> connection <-> response, transport <-> protocol).
        self._parser = None
        self._response = None
        self._head = None
        self.transport = None

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._raw_headers.append((name, value))
        noted = _NOTED.get(name)
        if noted is not None:
            if noted == _CONTENT_TYPE:
                self._content_type = value.decode("latin-1")
            elif noted == _LENGTH or b"chunked" in value.lower():
                self._delimited = True

    def on_headers_complete(self) -> None:
        if self._complete:
            # More than one answer to one request: the stream is out of step. Raising here
            # stops the parser; data_received then drops the connection.
            raise UpstreamError("upstream sent an answer nobody asked for")
        assert self._parser is not None  # callbacks come from feed_data only
        status = self._parser.get_status_code()
        raw_headers, content_type = self._raw_headers, self._content_type
        self._raw_headers, self._content_type = [], ""
        delimited, self._delimited = self._delimited, False
        if status < 200:
            return  # 100 Continue and friends: the real answer follows
        response = UpstreamResponse(self, status, raw_headers, content_type)
        self._response = response
        # Neither a length nor chunks: the body ends when the upstream closes.
        self._reads_to_close = not delimited and status not in (204, 304)
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(response)
        if self._head_only:
            # A HEAD answer has no body whatever its headers say: done, and not reused.
            self._complete = True
            response._finish()
            self._close()

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is not None:
            response._feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None:
            return  # the end of a 1xx
        self._complete = True
        # Asked here: once this callback returns the parser has reset and forgotten it.
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()
        response._finish()

    # -- used by the response and the pool ----------------------------------------------

    def _broken(self, message: str) -> None:
        error = UpstreamError(message)
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        if self._response is not None:
            self._response._finish(error)
        self._close()

    def _close(self) -> None:
        self.lost = True
        self._pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.lost:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.lost:
            self._paused = False
            self.transport.resume_reading()

    def start(self, data: bytes, head_only: bool) -> "asyncio.Future[UpstreamResponse]":
        """Send one request; the future resolves with the response at its headers."""
        assert self.transport is not None
        head = self._head = asyncio.get_running_loop().create_future()
        self._response = None
        self._complete = False
        self._keep_alive = False
        self._reads_to_close = False
        self._head_only = head_only
        self.transport.write(data)
        return head

    def response_done(self, complete: bool) -> None:
        if complete and self._complete and self._keep_alive and not self.lost:
            self._response = None
            self.resume()  # an unread body may have paused it: a pooled one must read
            self._pool.put(self)
        else:
            self._close()


class _OriginPool:
    """The idle connections to one origin, most recently used first."""

    def __init__(self, origin: Origin, keepalive: float) -> None:
        self.origin = origin
        self.keepalive = keepalive
        self._idle: deque[_Connection] = deque()
        self._all: set[_Connection] = set()

    async def acquire(self, connect_timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        now = loop.time()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self.keepalive:
                return conn
            conn._close()
        origin = self.origin
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamError(f"connect timeout after {connect_timeout} s") from None
        except (OSError, ssl.SSLError) as err:
            raise UpstreamError(f"cannot connect ({type(err).__name__})") from None
        self._all.add(conn)
        return conn

    def put(self, conn: _Connection) -> None:
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._all):
            conn._close()
        self._idle.clear()
        self._all.clear()


class UpstreamClient:
    """Connection pools by origin; ``request`` sends and returns at the response headers."""

    def __init__(self, keepalive: float = KEEPALIVE_SECONDS) -> None:
        self._keepalive = keepalive
        self._pools: dict[tuple[str, int, ssl.SSLContext | None], _OriginPool] = {}

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        connect_timeout: float | None,
    ) -> UpstreamResponse:
        """Send ``method target`` to ``origin``; the body is then read from the response.

        ``target`` is the path (and query) after the origin's base path. Raises
        ``UpstreamError``; on cancellation the connection is closed, never reused.
        """
        key = (origin.host, origin.port, origin.ssl)  # one TLS context per pool
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _OriginPool(origin, self._keepalive)
        lines = [f"{method} {origin.path_prefix}{target} HTTP/1.1", f"host: {origin.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body) if body else 0}")
        head = "\r\n".join(lines)
        # Each separator holds one CR and one LF: any other is a line break smuggled in a
        # header (values come from parsed requests and the config, but a key is pasted).
        breaks = len(lines) - 1
        if head.count("\n") != breaks or head.count("\r") != breaks:
            raise UpstreamError("a header name or value holds a line break")
        try:
            data = (head + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise UpstreamError("a header holds a character HTTP cannot carry") from None
        if body:
            data += body
        conn = await pool.acquire(connect_timeout)
        try:
            return await conn.start(data, method == "HEAD")
        except BaseException:
            conn._close()
            raise

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def stats(self) -> dict[str, Any]:
        """Open and idle connections per origin (for tests and debugging)."""
        return {
            f"{host}:{port}": {"open": len(p._all), "idle": len(p._idle)}
            for (host, port, _), p in self._pools.items()
        }
