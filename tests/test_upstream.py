"""The lean upstream client against real sockets: framing, keep-alive, failures, TLS.

Every test talks to a raw TCP (or TLS) server on 127.0.0.1:0 that it scripts byte by
byte and that records what it received, so both sides of the wire are asserted. Each
scenario runs on the standard asyncio loop and on uvloop (what the gateway serves on),
must finish within ``SCENARIO_TIMEOUT``, may leave no task behind and may not reach the
loop's exception handler (no "Task exception was never retrieved", no transport noise).
"""

import asyncio
import gc
import logging
import random
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import pytest
import trustme
import uvloop

from aibridge.upstream import HIGH_WATER, Origin, UpstreamClient, UpstreamError, UpstreamResponse

SCENARIO_TIMEOUT = 5.0

Scenario = Callable[[], Coroutine[Any, Any, None]]
Run = Callable[[Scenario], None]

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Run a scenario on a fresh loop; fail on leftover tasks or exception-handler calls."""
    factory = LOOPS[request.param]

    def runner(scenario: Scenario) -> None:
        async def main() -> None:
            noise: list[dict[str, Any]] = []
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _loop, context: noise.append(context))
            async with asyncio.timeout(SCENARIO_TIMEOUT):
                await scenario()
            leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert not leftovers, leftovers
            assert not noise, noise

        with asyncio.Runner(loop_factory=factory) as r:
            r.run(main())

    return runner


async def wait_until(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Return once ``condition()`` holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.001)


# -- the scripted server ------------------------------------------------------------------


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class Peer:
    """One accepted connection, as the server sees it."""

    def __init__(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()

    async def next_request(self) -> bytes | None:
        """The next request (head and content-length body), or None once the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as err:
            partial = getattr(err, "partial", b"")
            assert not partial, f"the client stopped mid-request: {partial!r}"
            self.closed_by_client.set()
            return None
        request = head + await self.reader.readexactly(content_length(head))
        self.requests.append(request)
        return request

    async def wait_closed_by_client(self) -> bytes:
        """Wait for the client to close; returns any bytes it sent before."""
        try:
            rest = await self.reader.read()
        except ConnectionResetError:
            rest = b""
        self.closed_by_client.set()
        return rest

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


Script = Callable[[Peer], Awaitable[None]]


def is_accepting(task: "asyncio.Task[Any]") -> bool:
    return getattr(task.get_coro(), "__qualname__", "").endswith("._accept_connection2")


class ScriptedServer:
    """A server on 127.0.0.1:0 that runs ``script`` for each accepted connection."""

    def __init__(self, script: Script, ssl_context: ssl.SSLContext | None = None) -> None:
        self._script = script
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self.port = 0

    async def __aenter__(self) -> "ScriptedServer":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        # The standard loop accepts (and runs the TLS handshake) in tasks of its own: let
        # those in flight finish, so that no connection shows up after the cleanup.
        await wait_until(lambda: not any(map(is_accepting, asyncio.all_tasks())))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self.peers:
            peer.writer.transport.abort()
        await self._server.wait_closed()
        if exc_type is None and self.errors:
            raise self.errors[0]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback with a task of our own: Python 3.11's streams would otherwise
        # report a cancelled handler task to the exception handler.
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        task = asyncio.get_running_loop().create_task(self._serve(peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, peer: Peer) -> None:
        try:
            await self._script(peer)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # surfaced when the server closes
            self.errors.append(err)

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    def origin(self, path: str = "/v1") -> Origin:
        return Origin(f"http://127.0.0.1:{self.port}{path}")


@asynccontextmanager
async def upstream_client(keepalive: float | None = None) -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient() if keepalive is None else UpstreamClient(keepalive=keepalive)
    try:
        yield client
    finally:
        await client.close()


def answer(body: bytes = b"ok", *headers: str) -> bytes:
    """A keep-alive HTTP/1.1 200 with a content-length."""
    head = ["HTTP/1.1 200 OK", *headers, f"content-length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve_ok(peer: Peer) -> None:
    """Answer every request on the connection with ``ok``."""
    while await peer.next_request() is not None:
        peer.send(answer(b"ok"))


async def get(
    client: UpstreamClient, origin: Origin, target: str = "/x", method: str = "GET"
) -> UpstreamResponse:
    return await client.request(origin, method, target, [], None, 2.0)


async def fetch(client: UpstreamClient, origin: Origin, target: str = "/x") -> bytes:
    response = await get(client, origin, target)
    return await response.read()


# -- framing and keep-alive -----------------------------------------------------------------


def test_json_answer_is_read_whole_and_the_connection_reused(run: Run) -> None:
    """A content-length answer comes back whole with its headers; the connection then
    waits idle in the pool and carries the next request (one accepted connection)."""
    payload = b'{"id":"chatcmpl-1","choices":[]}'

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: a\r\n"
            b"x-request-id: b\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await client.request(
                origin, "POST", "/chat/completions", [("authorization", "Bearer k")], b"{}", 2.0
            )
            assert response.status == 200
            assert response.content_type == "application/json"
            assert response.raw_headers == [
                (b"content-type", b"application/json"),
                (b"x-request-id", b"a"),
                (b"x-request-id", b"b"),
                (b"content-length", str(len(payload)).encode()),
            ]
            assert response.headers["x-request-id"] == "b"  # the last one wins
            assert await response.read() == payload
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}

            assert await fetch(client, origin, "/models") == b"ok"
            assert len(server.peers) == 1
            assert len(server.peers[0].requests) == 2
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}

    run(scenario)


@pytest.mark.parametrize(
    ("method", "body", "framing"),
    [
        ("POST", b'{"model":"m"}', b"content-length: 13\r\n\r\n" + b'{"model":"m"}'),
        ("POST", None, b"content-length: 0\r\n\r\n"),
        ("PUT", b"", b"content-length: 0\r\n\r\n"),
        ("GET", None, b"\r\n"),
    ],
    ids=["post-body", "post-none", "put-empty", "get"],
)
def test_request_bytes_are_exact(run: Run, method: str, body: bytes | None, framing: bytes) -> None:
    """The request line joins the origin's path prefix and the target; the host header
    carries the port; headers go out in order; a body-bearing method always gets a
    content-length, a GET without a body none."""

    async def scenario() -> None:
        async with ScriptedServer(serve_ok) as server, upstream_client() as client:
            headers = [("authorization", "Bearer sk-1"), ("content-type", "application/json")]
            response = await client.request(
                server.origin("/api/v1/"), method, "/chat?x=1", headers, body, 2.0
            )
            assert await response.read() == b"ok"
            assert server.peers[0].requests == [
                b"%s /api/v1/chat?x=1 HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
                b"authorization: Bearer sk-1\r\ncontent-type: application/json\r\n%s"
                % (method.encode(), server.port, framing)
            ]

    run(scenario)


def test_chunked_event_stream_arrives_as_it_is_sent_and_the_connection_is_reused(
    run: Run,
) -> None:
    """iter_any yields each SSE event before the server sends the next (the server waits
    for the client to have it), the chunks join to the payload, and the connection then
    carries the next request."""
    events = [b'data: {"n": %d}\n\n' % i for i in range(3)] + [b"data: [DONE]\n\n"]
    proceed = asyncio.Event()

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunk(events[0])
        )
        for event in events[1:]:
            await proceed.wait()
            proceed.clear()
            peer.send(chunk(event))
        peer.send(b"0\r\n\r\n")
        await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await get(client, origin, "/stream")
            assert response.content_type == "text/event-stream"
            chunks: list[bytes] = []
            async for data in response.iter_any():
                chunks.append(data)
                proceed.set()
            assert b"".join(chunks) == b"".join(events)
            assert len(chunks) >= len(events)
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}

            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 1

    run(scenario)


def test_body_delimited_by_the_close_is_read_whole_and_not_reused(run: Run) -> None:
    """No content-length and not chunked: the body is all that came before the server's
    close, and the next request opens a new connection."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst part, ")
        await peer.writer.drain()
        peer.send(b"second part")
        peer.close()

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            assert await fetch(client, origin) == b"first part, second part"
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}
            assert await fetch(client, origin) == b"first part, second part"
            assert len(server.peers) == 2

    run(scenario)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_answer_that_ends_keep_alive_is_read_and_the_connection_closed(
    run: Run, head: bytes
) -> None:
    """The body is read, then the client itself closes the connection (the server keeps
    its side open) and the next request opens a new one."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(head + b"ok")
        assert await peer.wait_closed_by_client() == b""

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            assert await fetch(client, origin) == b"ok"
            await server.peers[0].closed_by_client.wait()
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 2

    run(scenario)


def test_interim_answers_before_the_real_one_are_skipped(run: Run) -> None:
    """100 Continue and 103 Early Hints are passed over: the response is the 200, with
    none of the interim headers (not even a content-type), and the connection is reused
    afterwards."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await peer.writer.drain()
        peer.send(
            b"HTTP/1.1 103 Early Hints\r\ncontent-type: text/html\r\n"
            b"link: </a.css>; rel=preload\r\n\r\n"
        )
        peer.send(answer(b"final", "x-final: 1"))
        await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await get(client, origin)
            assert response.status == 200
            assert response.raw_headers == [(b"x-final", b"1"), (b"content-length", b"5")]
            assert response.content_type == ""
            assert await response.read() == b"final"
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 1

    run(scenario)


def test_interim_framing_headers_do_not_frame_the_real_answer(run: Run) -> None:
    """A content-length on a 103 does not carry over: the 200 after it, delimited by the
    close, is read whole instead of failing as cut mid-response."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(
            b"HTTP/1.1 103 Early Hints\r\ncontent-length: 5\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nthe whole body"
        )
        peer.close()

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            response = await get(client, server.origin())
            assert response.content_type == "text/plain"
            assert await response.read() == b"the whole body"

    run(scenario)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
    ],
    ids=["204", "304-with-length"],
)
def test_bodiless_status_completes_and_keeps_the_connection(run: Run, head: bytes) -> None:
    """204 and 304 have no body whatever the headers say: read() returns b"" at once
    and the connection carries the next request."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(head)
        await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await get(client, origin)
            assert response.status in (204, 304)
            assert await response.read() == b""
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 1

    run(scenario)


def test_head_answer_completes_without_its_announced_body(run: Run) -> None:
    """A HEAD answer announcing 1234 bytes completes with none (no hang); the request
    carries no content-length; the connection is closed, not reused."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1234\r\n\r\n"
        )
        await peer.wait_closed_by_client()

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await get(client, origin, "/models", method="HEAD")
            assert response.status == 200
            assert response.headers["content-length"] == "1234"
            assert await response.read() == b""
            await server.peers[0].closed_by_client.wait()
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}
            assert server.peers[0].requests == [
                b"HEAD /v1/models HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n\r\n" % server.port
            ]

            second = await get(client, origin, "/models", method="HEAD")
            assert await second.read() == b""
            assert len(server.peers) == 2

    run(scenario)


def test_complete_but_unread_body_released_goes_back_to_the_pool(run: Run) -> None:
    """release() after the whole (small) body arrived, without reading it, pools the
    connection: the next request uses it."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(answer(b"unread"))
        await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await get(client, origin)
            await wait_until(lambda: response._done)
            response.release()
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 1

    run(scenario)


# -- broken answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-status", "bad-length", "bad-header", "bad-chunk-size"],
)
def test_malformed_answer_raises_and_drops_the_connection(run: Run, reply: bytes) -> None:
    """A reply httptools cannot parse is an UpstreamError (at the headers or in the
    body), and the client closes the connection."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(reply)
        await peer.wait_closed_by_client()

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            with pytest.raises(UpstreamError, match="malformed"):
                await fetch(client, server.origin())
            await server.peers[0].closed_by_client.wait()
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}

    run(scenario)


@pytest.mark.parametrize(
    "partial", [b"", b"HTTP/1.1 200 OK\r\ncontent-le"], ids=["nothing", "half-a-head"]
)
def test_server_closing_before_answering_raises(run: Run, partial: bytes) -> None:
    """The server closes having sent nothing or half a head: UpstreamError, nothing pooled."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(partial)
        peer.close()

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            with pytest.raises(UpstreamError, match="before answering"):
                await get(client, server.origin())
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}

    run(scenario)


# Bodies announced longer than the 4 bytes sent; any spelling of the framing counts.
CUT_HEADS = {
    "content-length": b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd",
    "Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd",
    "chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    "gzip-Chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n4\r\nabcd\r\n",
}


def cut_after_4_bytes(framing: str) -> Script:
    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(CUT_HEADS[framing])
        peer.close()

    return script


@pytest.mark.parametrize("framing", list(CUT_HEADS))
def test_close_mid_body_makes_read_raise(run: Run, framing: str) -> None:
    """The server closes 4 bytes into a body announced longer: read() raises."""

    async def scenario() -> None:
        async with (
            ScriptedServer(cut_after_4_bytes(framing)) as server,
            upstream_client() as client,
        ):
            response = await get(client, server.origin())
            with pytest.raises(UpstreamError, match="mid-response"):
                await response.read()
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}

    run(scenario)


@pytest.mark.parametrize("framing", list(CUT_HEADS))
def test_close_mid_body_makes_iter_any_raise_after_what_arrived(run: Run, framing: str) -> None:
    """iter_any yields the 4 bytes that came, then raises UpstreamError."""

    async def scenario() -> None:
        async with (
            ScriptedServer(cut_after_4_bytes(framing)) as server,
            upstream_client() as client,
        ):
            response = await get(client, server.origin())
            received: list[bytes] = []
            with pytest.raises(UpstreamError, match="mid-response"):
                async for data in response.iter_any():
                    received.append(data)
            assert b"".join(received) == b"abcd"

    run(scenario)


# -- connecting --------------------------------------------------------------------------------


def test_connection_refused_is_a_quiet_upstream_error(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    """A port that is bound but not listening refuses: UpstreamError without a chained
    OSError, nothing logged, no pooled connection."""

    async def scenario() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))  # bound, never listening: SYNs are refused
            port = sock.getsockname()[1]
            async with upstream_client() as client:
                with pytest.raises(UpstreamError, match="cannot connect") as caught:
                    await get(client, Origin(f"http://127.0.0.1:{port}"))
                assert caught.value.__cause__ is None
                assert caught.value.__suppress_context__
                assert client.stats() == {f"127.0.0.1:{port}": {"open": 0, "idle": 0}}

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        run(scenario)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_zero_connect_timeout_is_an_upstream_error(run: Run) -> None:
    """connect_timeout=0 fails even against a listening server, as an UpstreamError."""

    async def scenario() -> None:
        async with ScriptedServer(serve_ok) as server, upstream_client() as client:
            with pytest.raises(UpstreamError, match="timeout") as caught:
                await client.request(server.origin(), "GET", "/x", [], None, 0)
            assert caught.value.__cause__ is None
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}

    run(scenario)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/x", [("x-note", "a\r\nx-injected: 1")]),
        ("/x", [("x-note", "a\nx-injected: 1")]),
        ("/x", [("x-note", "a\rb")]),
        ("/x", [("x-a\r\nx-injected", "1")]),
        ("/x HTTP/1.1\r\nx-injected: 1\r\n\r\nGET /y", []),
        ("/x", [("x-note", "日本")]),
        ("/x", [("x-note", "€")]),
        ("/caf€", []),
    ],
    ids=[
        "value-crlf",
        "value-lf",
        "value-cr",
        "name-crlf",
        "target-crlf",
        "value-cjk",
        "value-euro",
        "target-euro",
    ],
)
def test_unsendable_request_raises_and_sends_nothing(
    run: Run, target: str, headers: list[tuple[str, str]]
) -> None:
    """A line break smuggled into a header or the target, or a character latin-1 cannot
    carry, is an UpstreamError before any byte leaves: the next, valid request is the
    first and only thing the server ever receives."""

    async def scenario() -> None:
        async with ScriptedServer(serve_ok) as server, upstream_client() as client:
            origin = server.origin()
            with pytest.raises(UpstreamError):
                await client.request(origin, "POST", target, headers, b"{}", 2.0)
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}
            assert await fetch(client, origin, "/ok") == b"ok"
            assert len(server.peers) == 1
            assert server.peers[0].requests == [
                b"GET /v1/ok HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n\r\n" % server.port
            ]

    run(scenario)


# -- letting go ------------------------------------------------------------------------------


def test_cancel_while_awaiting_the_head_closes_the_connection(run: Run) -> None:
    """Cancelling the task that awaits the answer closes the connection (the server sees
    EOF) and the pool keeps nothing."""
    got_request = asyncio.Event()

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        got_request.set()
        assert await peer.wait_closed_by_client() == b""

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            task = asyncio.create_task(get(client, server.origin()))
            await got_request.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await server.peers[0].closed_by_client.wait()
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}

    run(scenario)


def test_letting_go_of_a_half_read_body_closes_the_connection(run: Run) -> None:
    """release() before the body is complete closes the connection instead of pooling
    it; the next request opens a new one."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        if peer.index == 0:
            peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd")
            await peer.wait_closed_by_client()
        else:
            peer.send(answer(b"ok"))
            await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await get(client, origin)
            await wait_until(lambda: response._buffered == 4)
            response.release()
            await server.peers[0].closed_by_client.wait()
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 2

    run(scenario)


def test_unread_body_is_buffered_up_to_high_water_then_read_whole(run: Run) -> None:
    """Against a client that does not read, an 8 MiB body is held back by TCP: once the
    client paused and the server is stuck in drain(), the response buffers no more than
    HIGH_WATER plus one socket read. Reading then yields all 8 MiB, in order, in steps
    that never exceed that bound."""
    size = 8 * 1024 * 1024
    bound = HIGH_WATER + 1024 * 1024
    payload = random.Random(0).randbytes(size)
    progress = {"written": 0, "in_drain": False}

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        step = 64 * 1024
        for offset in range(0, size, step):
            peer.send(payload[offset : offset + step])
            progress["written"] = offset + step
            progress["in_drain"] = True
            await peer.writer.drain()
            progress["in_drain"] = False
        await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            response = await get(client, server.origin())
            conn = response._conn
            assert conn is not None and conn.transport is not None
            transport = conn.transport
            await wait_until(lambda: not transport.is_reading() and bool(progress["in_drain"]))
            assert HIGH_WATER < response._buffered < bound
            assert progress["written"] < size  # the server is held back, not swallowed

            received: list[bytes] = []
            async for data in response.iter_any():
                assert len(data) < bound
                received.append(data)
            assert b"".join(received) == payload
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}

    run(scenario)


def test_idle_connection_the_server_closed_is_not_reused(run: Run) -> None:
    """The server closes a pooled connection: the pool drops it, and the next request
    opens a new connection and succeeds."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(answer(b"ok"))
        if peer.index == 0:
            await peer.writer.drain()
            peer.close()
        else:
            await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            assert await fetch(client, origin) == b"ok"
            await wait_until(lambda: client.stats()[server.key]["open"] == 0)
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 2

    run(scenario)


def test_idle_connection_older_than_keepalive_is_closed_not_reused(run: Run) -> None:
    """With keepalive=0 a pooled connection is already too old: the next request closes
    it (the server sees EOF) and opens a new one."""

    async def scenario() -> None:
        async with ScriptedServer(serve_ok) as server, upstream_client(keepalive=0.0) as client:
            origin = server.origin()
            assert await fetch(client, origin) == b"ok"
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 2
            await server.peers[0].closed_by_client.wait()
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}

    run(scenario)


def test_data_on_an_idle_connection_closes_it(run: Run) -> None:
    """Bytes arriving on a pooled connection (here an unsolicited 408) make the client
    close it; the next request opens a new connection."""
    pooled = asyncio.Event()

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(answer(b"ok"))
        if peer.index == 0:
            await pooled.wait()
            peer.send(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
            assert await peer.wait_closed_by_client() == b""
        else:
            await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            assert await fetch(client, origin) == b"ok"
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}
            pooled.set()
            await server.peers[0].closed_by_client.wait()
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 2

    run(scenario)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a cert for localhost, client context trusting its CA)."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


def test_tls_request_succeeds_with_a_trusting_context(
    run: Run, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Over TLS the request goes out with host ``localhost:PORT`` and the path prefix,
    the answer comes back, and the connection is reused."""
    server_ctx, client_ctx = tls

    async def scenario() -> None:
        async with ScriptedServer(serve_ok, server_ctx) as server, upstream_client() as client:
            origin = Origin(f"https://localhost:{server.port}/v1", ssl_context=client_ctx)
            assert await fetch(client, origin, "/models") == b"ok"
            assert await fetch(client, origin, "/models") == b"ok"
            expected = b"GET /v1/models HTTP/1.1\r\nhost: localhost:%d\r\n\r\n" % server.port
            assert len(server.peers) == 1
            assert server.peers[0].requests == [expected, expected]

    run(scenario)


def test_tls_with_an_untrusted_certificate_is_an_upstream_error(
    run: Run, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A client context that does not trust the server's CA fails the handshake:
    UpstreamError, no request bytes reach the server."""
    server_ctx, _ = tls

    async def scenario() -> None:
        async with ScriptedServer(serve_ok, server_ctx) as server, upstream_client() as client:
            untrusting = ssl.create_default_context()
            origin = Origin(f"https://localhost:{server.port}/v1", ssl_context=untrusting)
            with pytest.raises(UpstreamError, match="SSLCertVerificationError"):
                await fetch(client, origin)
            assert all(peer.requests == [] for peer in server.peers)

    run(scenario)


# -- Origin -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "prefix"),
    [
        ("http://api.example.com", "api.example.com", 80, "api.example.com", ""),
        ("https://api.example.com/v1/", "api.example.com", 443, "api.example.com", "/v1"),
        ("http://api.example.com:8080/v1", "api.example.com", 8080, "api.example.com:8080", "/v1"),
        ("https://api.example.com:80/a/b//", "api.example.com", 80, "api.example.com:80", "/a/b"),
        ("http://API.Example.com:80/", "api.example.com", 80, "api.example.com", ""),
        ("http://[::1]:8080/v1", "::1", 8080, "[::1]:8080", "/v1"),
        ("https://[2001:db8::1]/", "2001:db8::1", 443, "[2001:db8::1]", ""),
    ],
)
def test_origin_parses_host_port_and_prefix(
    url: str, host: str, port: int, host_header: str, prefix: str
) -> None:
    """Default ports leave the host header bare, others are appended; IPv6 literals are
    bracketed; the base path loses its trailing slashes."""
    origin = Origin(url)
    assert (origin.host, origin.port, origin.host_header, origin.path_prefix) == (
        host,
        port,
        host_header,
        prefix,
    )
    assert (origin.ssl is not None) == url.startswith("https")


def test_origin_keeps_a_given_ssl_context_for_https_only() -> None:
    """An explicit context is used for https and ignored for plain http."""
    context = ssl.create_default_context()
    assert Origin("https://h/v1", ssl_context=context).ssl is context
    assert Origin("http://h/v1", ssl_context=context).ssl is None


@pytest.mark.parametrize(
    "url", ["ftp://example.com/v1", "ws://example.com", "example.com/v1", "http:///v1"]
)
def test_origin_rejects_what_is_not_an_http_url(url: str) -> None:
    """Another scheme, no scheme, or no host is a ValueError."""
    with pytest.raises(ValueError):
        Origin(url)


# -- found by this suite, fixed --------------------------------------------------------


def test_release_of_a_complete_unread_body_over_high_water_leaves_a_usable_connection(
    run: Run,
) -> None:
    """A body of HIGH_WATER + 1 bytes completes in the very read that pauses the
    transport; releasing it unread must not pool a connection that no longer reads."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(answer(b"x" * (HIGH_WATER + 1)))
        await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await get(client, origin)
            await wait_until(lambda: response._done)
            response.release()
            # A bounded wait: the bug is that this answer never arrives.
            assert await asyncio.wait_for(fetch(client, origin), 0.3) == b"ok"

    run(scenario)


def test_bytes_after_a_complete_response_keep_the_connection_out_of_the_pool(
    run: Run,
) -> None:
    """The server follows its answer, in the same write, with the head of a second,
    unsolicited one. The next request must still get its own answer."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        if peer.index == 0:
            peer.send(answer(b"ok") + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        else:
            peer.send(answer(b"ok"))
        await serve_ok(peer)

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            assert await fetch(client, origin) == b"ok"
            assert await fetch(client, origin) == b"ok"

    run(scenario)


def test_reset_cutting_a_close_delimited_body_is_an_error(run: Run) -> None:
    """A body delimited by the close ends only at a clean close (FIN); a reset (RST)
    means it was cut, so read() must raise rather than return the fragment."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npartial")
        await peer.writer.drain()
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.writer.transport.abort()  # linger 0: the kernel sends RST, not FIN

    async def scenario() -> None:
        async with ScriptedServer(script) as server, upstream_client() as client:
            response = await get(client, server.origin())
            with pytest.raises(UpstreamError):
                await response.read()

    run(scenario)


def test_each_origin_connects_with_its_own_ssl_context(
    run: Run, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Two origins for the same host and port, one trusting the CA and one not: a new
    connection for the untrusting one must fail verification (keepalive=0 rules out
    reusing the trusted connection)."""
    server_ctx, client_ctx = tls

    async def scenario() -> None:
        async with (
            ScriptedServer(serve_ok, server_ctx) as server,
            upstream_client(keepalive=0.0) as client,
        ):
            url = f"https://localhost:{server.port}/v1"
            assert await fetch(client, Origin(url, ssl_context=client_ctx)) == b"ok"
            untrusting = Origin(url, ssl_context=ssl.create_default_context())
            with pytest.raises(UpstreamError):
                await fetch(client, untrusting)

    run(scenario)


# -- pipe: chunks handed to a sink from the connection's callback --------------------------


class RecordingSink:
    """A BodySink that keeps what it is given; ``full_after`` chunks it reports full and
    ``drain`` then waits for ``drained`` to be set."""

    def __init__(self, full_after: int | None = None, fail_on: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.full_after = full_after
        self.fail_on = fail_on
        self.draining = asyncio.Event()
        self.drained = asyncio.Event()

    def write(self, data: bytes) -> bool:
        self.chunks.append(data)
        if self.fail_on is not None and len(self.chunks) == self.fail_on:
            raise RuntimeError("the sink broke")
        return self.full_after is not None and len(self.chunks) == self.full_after

    async def drain(self) -> None:
        self.draining.set()
        await self.drained.wait()


def paced_stream_script(events: list[bytes], proceed: asyncio.Event) -> Script:
    """A chunked SSE answer sent one event per ``proceed``, then ``ok`` answers."""

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for event in events:
            await proceed.wait()
            proceed.clear()
            peer.send(chunk(event))
        peer.send(b"0\r\n\r\n")
        await serve_ok(peer)

    return script


def test_pipe_hands_each_chunk_to_the_sink_as_it_arrives(run: Run) -> None:
    """Each event reaches the sink before the server sends the next; pipe returns at the
    end of the body and the connection is reused."""
    events = [b'data: {"n": %d}\n\n' % i for i in range(4)]

    async def scenario() -> None:
        proceed = asyncio.Event()
        sink = RecordingSink()
        async with (
            ScriptedServer(paced_stream_script(events, proceed)) as server,
            upstream_client() as client,
        ):
            origin = server.origin()
            response = await get(client, origin, "/stream")
            piping = asyncio.ensure_future(response.pipe(sink))
            for n in range(1, len(events)):
                proceed.set()
                await wait_until(lambda n=n: len(sink.chunks) == n)  # type: ignore[misc]
            proceed.set()  # the last event and the end may arrive in one read
            rest = await piping
            assert b"".join(sink.chunks) + rest == b"".join(events)
            assert await fetch(client, origin) == b"ok"
            assert len(server.peers) == 1

    run(scenario)


def test_a_full_sink_pauses_reading_until_it_drains(run: Run) -> None:
    """When the sink reports full, the connection stops reading (nothing more reaches the
    sink) until drain returns; then the rest arrives, in order."""
    events = [b"data: %d\n\n" % i for i in range(4)]

    async def scenario() -> None:
        proceed = asyncio.Event()
        sink = RecordingSink(full_after=1)
        async with (
            ScriptedServer(paced_stream_script(events, proceed)) as server,
            upstream_client() as client,
        ):
            response = await get(client, server.origin(), "/stream")
            piping = asyncio.ensure_future(response.pipe(sink))
            proceed.set()
            await sink.draining.wait()
            conn = response._conn
            assert conn is not None and conn.transport is not None
            assert not conn.transport.is_reading()
            proceed.set()  # the server sends more; it waits in the kernel
            await asyncio.sleep(0.05)  # an absence: nothing may reach the sink meanwhile
            assert sink.chunks == [events[0]]
            sink.drained.set()
            await wait_until(lambda: len(sink.chunks) >= 2)
            while not piping.done():  # the server takes one event per set()
                proceed.set()
                await asyncio.sleep(0.001)
            rest = await piping
            assert b"".join(sink.chunks) + rest == b"".join(events)

    run(scenario)


def test_what_the_sink_raises_comes_out_of_pipe_and_drops_the_connection(run: Run) -> None:
    """An exception in the sink (raised inside the connection's callback) surfaces in the
    task awaiting pipe, not as a parse error; the connection is not reused."""
    events = [b"data: %d\n\n" % i for i in range(3)]

    async def scenario() -> None:
        proceed = asyncio.Event()
        sink = RecordingSink(fail_on=2)
        async with (
            ScriptedServer(paced_stream_script(events, proceed)) as server,
            upstream_client() as client,
        ):
            response = await get(client, server.origin(), "/stream")
            piping = asyncio.ensure_future(response.pipe(sink))
            proceed.set()
            await wait_until(lambda: len(sink.chunks) == 1)
            proceed.set()
            with pytest.raises(RuntimeError, match="the sink broke"):
                await piping
            response.release()
            assert client.stats() == {server.key: {"open": 0, "idle": 0}}

    run(scenario)


def test_chunks_that_arrive_in_one_read_reach_the_sink_as_one_write(run: Run) -> None:
    """Twenty HTTP chunks sent in one segment are one sink write (one syscall for the
    gateway), not twenty: pipe hands on what each read brought, joined."""
    events = [b"data: %d\n\n" % i for i in range(20)]

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        await peer.writer.drain()
        await peer.next_request()  # never comes: keeps the headers and the body apart

    async def scenario() -> None:
        sink = RecordingSink()
        async with ScriptedServer(script) as server, upstream_client() as client:
            response = await get(client, server.origin(), "/stream")
            piping = asyncio.ensure_future(response.pipe(sink))
            await wait_until(lambda: response._sink is not None)  # pipe waits
            server.peers[0].send(b"".join(chunk(e) for e in events))
            await wait_until(lambda: bool(sink.chunks))
            server.peers[0].send(b"0\r\n\r\n")
            assert await piping == b""
            assert sink.chunks == [b"".join(events)]

    run(scenario)


def test_the_read_that_ends_the_body_comes_back_from_pipe(run: Run) -> None:
    """What arrives together with the end of the body is not handed to the sink: pipe
    returns it, so the gateway sends it with its closing message in one write."""
    early, last = b"data: 0\n\n", b"data: [DONE]\n\n"

    async def script(peer: Peer) -> None:
        assert await peer.next_request() is not None
        peer.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        await peer.writer.drain()
        await peer.next_request()  # never comes

    async def scenario() -> None:
        sink = RecordingSink()
        async with ScriptedServer(script) as server, upstream_client() as client:
            origin = server.origin()
            response = await get(client, origin, "/stream")
            piping = asyncio.ensure_future(response.pipe(sink))
            await wait_until(lambda: response._sink is not None)  # pipe waits
            server.peers[0].send(chunk(early))
            await wait_until(lambda: bool(sink.chunks))
            server.peers[0].send(chunk(last) + b"0\r\n\r\n")
            assert await piping == last
            assert sink.chunks == [early]
            assert client.stats() == {server.key: {"open": 1, "idle": 1}}

    run(scenario)


def test_a_closed_connection_leaves_no_cycle_for_the_collector(run: Run) -> None:
    """A connection the server cut mid-body (a response abandoned half-read, as when a
    client hangs up) is freed by reference counting: nothing of ours waits for the
    cyclic collector, whose full passes stall every stream in flight."""

    async def scenario() -> None:
        async with (
            ScriptedServer(cut_after_4_bytes("chunked")) as server,
            upstream_client() as client,
        ):
            response = await get(client, server.origin())
            with pytest.raises(UpstreamError):
                await response.read()
            response.release()
            del response

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run(scenario)
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__ == "aibridge.upstream"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == []
