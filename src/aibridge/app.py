"""The gateway: a raw ASGI app assembled from the config.

    client -> route -> auth -> body -> failover loop -> relay -> record

The request path touches no framework, no pydantic and no database: routing is
a dict lookup and a prefix match, headers are filtered once, the body is read
once and sent unchanged on every attempt, and the record goes to a queue.
"""

import asyncio
import gc
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aibridge import intercept
from aibridge.admin import handle_admin
from aibridge.asgi import (
    DirectChunkWriter,
    GuardSweeper,
    RawHeaders,
    Receive,
    RequestGuard,
    Scope,
    Send,
    encode_headers,
    send_whole,
)
from aibridge.auth import TokenTable, bearer_token
from aibridge.circuit import BreakerRegistry
from aibridge.clients import guess_client
from aibridge.config import Config, ConfigError, load_file
from aibridge.failover import (
    ByokCredential,
    Credentials,
    PoolCredentials,
    UpstreamUnreachable,
    send_with_failover,
)
from aibridge.headers import forward_name, relayed
from aibridge.intercept._limits import truncate_utf8
from aibridge.keypool import (
    Clock,
    Key,
    KeyPoolError,
    Pool,
    SystemClock,
    mask_key,
)
from aibridge.keystate import RedisKeyState
from aibridge.logs import flush_logs, log_request
from aibridge.metrics import Metrics
from aibridge.providers import (
    PROVIDER_TYPES,
    ErrorResponse,
    Route,
    RouteKind,
    RouteMiss,
    retry_headers,
)
from aibridge.recorder import NullRecorder, Recorder
from aibridge.recorder.records import Interception
from aibridge.request_id import new_request_id
from aibridge.runtime import ProviderRuntime
from aibridge.tracing import Tracing, setup_tracing
from aibridge.upstream import UpstreamClient, UpstreamError, UpstreamResponse

ERROR_MESSAGE_LIMIT = 1024

# Request headers the gateway reads for itself, by slot.
_AUTHORIZATION, _API_KEY, _AIBRIDGE_TOKEN, _UPGRADE, _CONTENT_LENGTH = range(5)
_USER_AGENT, _CLAUDE_SESSION, _CODEX_SESSION, _CURSOR = range(5, 9)
_CAPTURED = {
    b"authorization": _AUTHORIZATION,
    b"x-api-key": _API_KEY,
    b"x-aibridge-token": _AIBRIDGE_TOKEN,
    b"upgrade": _UPGRADE,
    b"content-length": _CONTENT_LENGTH,
    b"user-agent": _USER_AGENT,
    b"x-claude-code-session-id": _CLAUDE_SESSION,
    b"session_id": _CODEX_SESSION,
    b"x-cursor-client-version": _CURSOR,
}

_ERROR_TYPE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "unauthorized",
    404: "bad_request",
    405: "bad_request",
    408: "timeout",
    413: "bad_request",
    422: "bad_request",
    426: "bad_request",
    429: "rate_limited",
    503: "overloaded",
    504: "timeout",
    529: "overloaded",
}


def _wants_websocket(scope: Scope) -> bool:
    return any(
        name == b"upgrade" and value.lower() == b"websocket" for name, value in scope["headers"]
    )


def upstream_target(scope: Scope, route: Route) -> str:
    """The path to send upstream as the client encoded it, query included.

    Routes match the decoded path, but the decoded path must not be forwarded: ``%2F``
    in a model id would become a separator and ``%20`` a space in the request line.
    The route strips whole leading segments (``/<provider>`` and maybe ``/v1``), so the
    same segments are cut from the raw path; if a client escaped one of those, the
    decoded path is escaped again instead.
    """
    path: str = scope["path"]
    target = route.upstream_path
    raw: bytes | None = scope.get("raw_path")
    prefix = path[: len(path) - len(target)]
    if raw is not None and b"%" in raw and path.endswith(target):  # else raw == path
        raw_path = raw.decode("latin-1")
        segments = prefix.count("/")
        raw_prefix = "/".join(raw_path.split("/", segments + 1)[: segments + 1])
        if unquote(raw_prefix) == prefix:
            target = raw_path[len(raw_prefix) :]
        else:
            target = quote(target, safe="/:@!$&'()*+,;=-._~")
    query: bytes = scope.get("query_string", b"")
    return target + "?" + query.decode("latin-1") if query else target


def error_type_for(status: int) -> str | None:
    if status < 400:
        return None
    return _ERROR_TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "bad_request")


@dataclass(slots=True)
class Exchange:
    """One request's state as it moves through the gateway."""

    rt: ProviderRuntime
    route: Route
    request_id: str
    started: float  # perf_counter
    started_wall: float
    user: str = "anonymous"
    model: str = ""
    stream: bool = False
    credential: str = "pool"
    client: str = "unknown"
    user_agent: str = ""
    session_id: str | None = None
    status: int = 0
    error_type: str | None = None
    error_message: str | None = None
    hints: list[str] = field(default_factory=list)
    attempts: int = 0
    upstream_seconds: float = 0.0
    committed: bool = False
    observer: intercept.Observer | None = None
    prompt: str | None = None
    span: Any = None  # the interception's tracing span, when tracing is on
    secret: str | None = None  # the credential of the answering attempt: never logged


class Gateway:
    """The ASGI application."""

    def __init__(
        self,
        config: Config,
        *,
        recorder: Recorder | None = None,
        clock: Clock | None = None,
        config_path: Path | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.tracing = setup_tracing(config.tracing.enabled, tracer_provider)
        self.clock = clock if clock is not None else SystemClock()
        self.config_path = config_path
        self.recorder: Recorder = recorder if recorder is not None else NullRecorder()
        self.providers: dict[str, ProviderRuntime] = {}
        self.metrics = Metrics(self._pools, self._breakers)
        self.log = structlog.get_logger("aibridge")
        self.upstream: UpstreamClient | None = None
        self.keystate: RedisKeyState | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._sweeper = GuardSweeper()
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        """Serve ``config`` from now on. Keys that stay keep their state; new keys start
        valid; removed keys vanish. Requests in flight finish on what they started with."""
        providers: dict[str, ProviderRuntime] = {}
        for pc in config.providers:
            rt = ProviderRuntime(pc, self.clock, self.metrics.on_breaker_trip)
            old = self.providers.get(pc.name)
            if old is not None:
                previous = {k.value: k for k in old.pool.keys}
                for key in rt.pool.keys:
                    before = previous.get(key.value)
                    if before is not None:
                        key.adopt(before)
            rt.pool.add_listener(self._on_key_change(rt.name))
            providers[pc.name] = rt
        self.tokens: TokenTable | None = (
            TokenTable((t.user, t.token) for t in config.auth.tokens) if config.auth else None
        )
        self.max_body = config.server.max_body_bytes
        self.log_requests = config.log_requests
        self.config = config
        self.providers = providers
        if self.keystate is not None:
            for rt in providers.values():
                self.keystate.attach(rt.name, rt.pool)

    async def reload(self) -> str | None:
        """Re-read the config file; None when applied, else why it was rejected."""
        if self.config_path is None:
            return "no config file to reload (started from environment variables)"
        try:
            config = await asyncio.to_thread(load_file, self.config_path)
        except ConfigError as err:
            self.log.warning("reload_rejected", error=str(err))
            return str(err)
        self.apply_config(config)
        self.log.info("reloaded", providers=[p.name for p in config.providers])
        return None

    # -- lifecycle -----------------------------------------------------------

    def _pools(self) -> Iterator[tuple[str, Pool]]:
        for rt in self.providers.values():
            yield rt.name, rt.pool

    def _breakers(self) -> Iterator[BreakerRegistry]:
        for rt in self.providers.values():
            if rt.breakers is not None:
                yield rt.breakers

    def _on_key_change(self, provider: str) -> Any:
        transitions = self.metrics.transitions

        def listener(key: Key) -> None:
            transitions.get(provider, key.reason or "enabled").inc()

        return listener

    async def startup(self) -> None:
        # Everything built so far (config, pools, modules) lives as long as the process:
        # move it out of the collector's sight so full collections stay short.
        gc.collect()
        gc.freeze()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_logs_periodically())
        if self.config_path is not None and threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        if self.config.state is not None and self.keystate is None:
            self.keystate = RedisKeyState(self.config.state, namespace=self.config.state_namespace)
            for rt in self.providers.values():
                self.keystate.attach(rt.name, rt.pool)
            await self.keystate.start()  # never raises: Redis down means local state only
        if self.upstream is None:
            self.upstream = UpstreamClient()

    @staticmethod
    async def _flush_logs_periodically() -> None:
        while True:
            await asyncio.sleep(0.5)
            flush_logs()

    async def shutdown(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._sweeper.stop()
        flush_logs()
        if self.upstream is not None:
            await self.upstream.close()
            self.upstream = None
        if self.keystate is not None:
            await self.keystate.close()
            self.keystate = None
        await asyncio.to_thread(self.recorder.close)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- ASGI entry ----------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # Only when uvicorn runs with websockets enabled; `serve` turns them off so
            # an upgrade reaches _http and gets 426.
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path == "/healthz":
            await send_whole(send, 200, [(b"content-type", b"text/plain")], b"ok\n")
            return
        if path.startswith("/admin/"):
            await handle_admin(self, scope, receive, send, self.reload)
            return
        if path == "/metrics":
            body = generate_latest(self.metrics.registry)
            await send_whole(send, 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], body)
            return
        name, _, rest = path[1:].partition("/")
        rt = self.providers.get(name)
        method: str = scope["method"]
        route = rt.type.match_route(method, "/" + rest) if rt is not None else RouteMiss.NOT_FOUND
        if isinstance(route, RouteMiss):
            # Answered here, before any upstream: still with the ids every answer carries.
            if route is RouteMiss.NOT_FOUND:
                status, message = 404, f"unknown route {path}"
            elif _wants_websocket(scope):
                # Codex opens GET /v1/responses as a websocket: 426 sends it to HTTP at once.
                status, message = 426, "websocket mode is not supported; use HTTP"
            else:
                status, message = 405, f"method {method} not allowed on {path}"
            await self._send_error(send, rt, status, message, new_request_id(), 0)
            return
        assert rt is not None
        assert isinstance(route, Route)
        await self._serve(scope, receive, send, rt, route)

    async def _send_error(
        self,
        send: Send,
        rt: ProviderRuntime | None,
        status: int,
        message: str,
        request_id: str | None = None,
        attempts: int = 0,
    ) -> None:
        if rt is None:
            response: ErrorResponse = PROVIDER_TYPES["openai"].error_response(status, None, message)
        else:
            response = rt.error(status, message, request_id)
        await self._send_error_response(send, response, request_id, attempts)

    async def _send_error_response(
        self, send: Send, response: ErrorResponse, request_id: str | None, attempts: int
    ) -> None:
        headers = encode_headers(response.headers)
        if request_id is not None:
            headers.append((b"x-aibridge-request-id", request_id.encode()))
            headers.append((b"x-aibridge-attempts", str(attempts).encode()))
        await send_whole(send, response.status, headers, response.body)

    # -- one request ---------------------------------------------------------

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, rt: ProviderRuntime, route: Route
    ) -> None:
        request_id = new_request_id()
        x = Exchange(rt, route, request_id, time.perf_counter(), time.time())
        captured: list[bytes | None] = [None] * 9
        forward: list[tuple[str, str]] = []
        for hname, hvalue in scope["headers"]:
            slot = _CAPTURED.get(hname)
            if slot is not None:
                captured[slot] = hvalue
            forward_as = forward_name(hname)
            if forward_as is not None:
                forward.append((forward_as, hvalue.decode("latin-1")))
        forward.append(("accept-encoding", "identity"))

        # A websocket upgrade: Codex falls back to HTTP at once on 426 (a 404 costs it retries).
        upgrade = captured[_UPGRADE]
        if upgrade is not None and upgrade.lower() == b"websocket":
            message = "websocket mode is not supported; use HTTP"
            await self._send_error(send, rt, 426, message, request_id, 0)
            return

        credentials = self._authenticate(rt, captured)
        if isinstance(credentials, ErrorResponse):
            await self._send_error_response(send, credentials, request_id, 0)
            return
        user, creds = credentials

        body = await self._read_body(receive, captured[_CONTENT_LENGTH])
        if body is None:
            return  # the client went away while sending
        if isinstance(body, ErrorResponse):
            too_large = rt.error(413, body.body.decode(), request_id)
            await self._send_error_response(send, too_large, request_id, 0)
            return

        method: str = scope["method"]
        target = upstream_target(scope, route)

        x.user = user
        x.credential = "byok" if isinstance(creds, ByokCredential) else "pool"
        if route.kind is RouteKind.PASSTHROUGH:
            self.metrics.passthrough.get(rt.name, route.api, method).inc()
            try:
                await self._exchange(x, send, receive, method, target, forward, body, creds)
            finally:
                if self.log_requests:
                    self._log(x, time.perf_counter())
            return

        user_agent = captured[_USER_AGENT]
        x.user_agent = user_agent.decode("latin-1") if user_agent is not None else ""
        x.client = guess_client(x.user_agent, captured[_CURSOR] is not None)
        session = captured[_CLAUDE_SESSION] or captured[_CODEX_SESSION]
        x.session_id = session.decode("latin-1") if session is not None else None
        try:
            info = intercept.parse_request(route.api, body)
        except intercept.BadRequest as err:
            # The user's request, refused before any key was spent: still recorded.
            x.status, x.error_type, x.error_message = 400, "bad_request", err.message
            await self._send_error(send, rt, 400, err.message, request_id, 0)
            self._finish(x)
            return
        x.model = info.model
        x.stream = info.stream
        x.prompt = info.prompt
        breaker = (
            rt.breakers.get(rt.name, route.api, info.model) if rt.breakers is not None else None
        )
        generation = 0
        if breaker is not None:
            wait = breaker.admit()
            generation = breaker.generation  # results from before a later trip are ignored
            if wait is not None:
                self.metrics.breaker_rejects.get(rt.name, route.api, breaker.model).inc()
                error = rt.type.error_response(
                    503,
                    None,
                    f"circuit open for {route.api} {info.model}: the upstream keeps failing",
                    headers=retry_headers(wait),
                    request_id=request_id,
                )
                x.status, x.error_type, x.error_message = 503, "overloaded", "circuit open"
                await self._send_error_response(send, error, request_id, 0)
                self._finish(x)
                return
        if self.tracing is not None:
            x.span = self.tracing.interception(
                f"aibridge {route.api}",
                {
                    "aibridge.provider": rt.name,
                    "aibridge.provider_type": rt.type.TYPE,
                    "aibridge.model": x.model,
                    "aibridge.user": x.user,
                    "aibridge.streaming": x.stream,
                    "aibridge.request_id": request_id,
                },
            )
        inflight = self.metrics.inflight.get(rt.name, route.api)
        inflight.inc()
        try:
            x.observer = intercept.response_observer(
                route.api, info.stream, strip_usage_chunk=info.injected_usage
            )
            await self._exchange(x, send, receive, method, target, forward, info.body, creds)
        finally:
            inflight.dec()
            if breaker is not None:
                if x.error_type == "client_closed" or not x.status:
                    breaker.release(generation)
                else:
                    breaker.record(x.status, generation)
            self._finish(x)

    def _authenticate(
        self, rt: ProviderRuntime, captured: list[bytes | None]
    ) -> tuple[str, Credentials] | ErrorResponse:
        """The user and the credentials to use upstream, or the error to answer with."""
        raw_auth = captured[_AUTHORIZATION]
        raw_key = captured[_API_KEY]
        authorization = raw_auth.decode("latin-1") if raw_auth is not None else None
        api_key = raw_key.decode("latin-1") if raw_key is not None else None
        raw_gateway = captured[_AIBRIDGE_TOKEN]
        if raw_gateway is not None:
            # BYOK: the gateway token names the user; the provider credential is the client's.
            user = "anonymous"
            if self.tokens is not None:
                found = self.tokens.user_for(raw_gateway.decode("latin-1"))
                if found is None:
                    return rt.error(401, "invalid aibridge token")
                user = found
            if not rt.allow_byok:
                return rt.error(403, f"bring-your-own-key is disabled for provider {rt.name}")
            if api_key:
                header = ("x-api-key", api_key)
                secret = api_key
            elif authorization:
                header = ("authorization", authorization)
                secret = bearer_token(authorization) or authorization
            else:
                return rt.error(401, "bring-your-own-key requests need a provider API key")
            return user, ByokCredential(header, mask_key(secret), secret)
        if self.tokens is not None:
            token = bearer_token(authorization) or api_key
            found = self.tokens.user_for(token)
            if found is None:
                message = "missing gateway token" if not token else "invalid gateway token"
                return rt.error(401, message)
            user = found
        else:
            user = "anonymous"
        return user, PoolCredentials(rt.walker(), rt.type, rt.policy)

    async def _read_body(
        self, receive: Receive, content_length: bytes | None
    ) -> bytes | ErrorResponse | None:
        limit = self.max_body
        too_large = ErrorResponse(413, {}, f"request body exceeds {limit} bytes".encode())
        if content_length is not None:
            try:
                if int(content_length) > limit:
                    return too_large
            except ValueError:
                pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return too_large
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def _exchange(
        self,
        x: Exchange,
        send: Send,
        receive: Receive,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        creds: Credentials,
    ) -> None:
        """The failover loop, then the relay; with disconnects and timeouts handled."""
        client = self.upstream
        if client is None:
            await self.startup()
            client = self.upstream
            assert client is not None
        rt = x.rt
        self._sweeper.ensure_running()
        guard = RequestGuard(receive, rt.response_timeout, self._sweeper)
        upstream_started = time.perf_counter()
        response: UpstreamResponse | None = None
        try:
            try:
                response = await send_with_failover(
                    client,
                    rt.origin,
                    method,
                    target,
                    headers,
                    body or None,
                    creds,
                    rt.connect_timeout,
                    x.hints,
                    None if x.span is None else partial(self._attempt_span, x.span),
                )
            except KeyPoolError as err:
                x.attempts = creds.attempts
                self.metrics.exhaustions.get(rt.name, err.kind.value).inc()
                error = rt.type.pool_error_response(err, x.request_id)
                x.status = error.status
                x.error_type = "rate_limited" if error.status == 429 else "unauthorized"
                x.error_message = str(err)
                await self._send_error_response(send, error, x.request_id, x.attempts)
                return
            except UpstreamUnreachable as err:
                x.attempts = creds.attempts
                await self._fail(x, send, 502, f"upstream unreachable ({err})", "server_error")
                return
            x.attempts = creds.attempts
            x.secret = creds.secret()
            await self._relay(x, send, response, guard)
        except asyncio.CancelledError:
            if guard.reason is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            x.attempts = creds.attempts
            await self._after_cancel(x, send, guard.reason)
        finally:
            guard.close()
            if response is not None:
                # A half-read answer drops its connection; a complete one pools it.
                response.release()
            x.upstream_seconds = time.perf_counter() - upstream_started

    async def _relay(
        self, x: Exchange, send: Send, response: UpstreamResponse, guard: RequestGuard
    ) -> None:
        status = response.status
        headers: RawHeaders = [
            (name, value) for name, value in response.raw_headers if relayed(name)
        ]
        content_type = response.content_type
        headers.append((b"x-aibridge-request-id", x.request_id.encode()))
        headers.append((b"x-aibridge-attempts", str(x.attempts).encode()))
        observer = x.observer
        if not content_type.startswith("text/event-stream"):
            try:
                body = await response.read()
            except UpstreamError as err:
                # Nothing relayed yet: the client gets a clean 502, not half an answer.
                await self._fail(
                    x, send, 502, f"upstream broke off its answer ({err})", "server_error"
                )
                return
            x.status = status
            x.committed = True
            if observer is not None:
                observer.feed(body)
                observer.close()
            if status >= 400:
                body = self._note_upstream_error(x, body)
            await send_whole(send, status, headers, body)
            return

        # A stream: committed from its first byte on; relay chunk by chunk.
        x.status = status
        guard.idle(x.rt.idle_timeout)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        x.committed = True
        feed = observer.feed if observer is not None else None
        direct = DirectChunkWriter.for_send(send, feed, guard.touch)
        rest = b""  # what came with the end of the body: sent with the closing message
        try:
            if direct is not None:
                rest = await response.pipe(direct)
                if rest and feed is not None:
                    rest = feed(rest)
            else:
                async for chunk in response.iter_any():
                    guard.touch()
                    out = feed(chunk) if feed is not None else chunk
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
        except UpstreamError as err:
            await self._end_broken_stream(x, send, f"upstream stream broke ({err})")
            return
        tail = rest + observer.close() if observer is not None else rest
        if observer is not None and not observer.complete and status < 400:
            if tail:
                await send({"type": "http.response.body", "body": tail, "more_body": True})
            await self._end_broken_stream(x, send, "upstream stream ended before completion")
            return
        if observer is not None and observer.error is not None:
            x.error_type = "server_error"
            x.error_message = truncate_utf8(observer.error, ERROR_MESSAGE_LIMIT)
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    def _note_upstream_error(self, x: Exchange, body: bytes) -> bytes:
        """Record an upstream error; returns its body with the key that got it masked.

        Some OpenAI-compatible servers quote the API key in their error messages: a pool
        key must reach neither the client nor the record (a BYOK key is the client's own,
        but it stays out of the record too)."""
        if x.secret and x.secret.encode() in body:
            body = body.replace(x.secret.encode(), mask_key(x.secret).encode())
        x.error_type = error_type_for(x.status)
        # <= 1 KiB of UTF-8: a cut character (or an invalid byte) must not push it over.
        text = body[:ERROR_MESSAGE_LIMIT].decode("utf-8", "replace")
        x.error_message = truncate_utf8(text, ERROR_MESSAGE_LIMIT)
        return body

    async def _end_broken_stream(self, x: Exchange, send: Send, message: str) -> None:
        """Never end a truncated stream as if it were complete: say so in the stream."""
        x.error_type = "server_error"
        x.error_message = message
        event: bytes = x.rt.type.stream_error_event(message)
        await send({"type": "http.response.body", "body": event, "more_body": False})

    async def _fail(self, x: Exchange, send: Send, status: int, message: str, kind: str) -> None:
        x.status = status
        x.error_type = kind
        x.error_message = message
        await self._send_error(send, x.rt, status, message, x.request_id, x.attempts)

    async def _after_cancel(self, x: Exchange, send: Send, reason: str) -> None:
        if reason == "client_closed":
            x.error_type = "client_closed"
            x.error_message = "client closed the connection"
            if not x.committed:
                x.status = 499
            return
        # A timeout: 504 before commit, an error event in the stream after.
        if x.committed:
            await self._end_broken_stream(x, send, "upstream timed out")
            x.error_type = "timeout"
            return
        await self._fail(x, send, 504, "upstream timed out", "timeout")

    def _attempt_span(self, parent: Any, number: int, hint: str) -> AbstractContextManager[Any]:
        assert self.tracing is not None
        return self.tracing.attempt(parent, number, hint)

    # -- after the response ---------------------------------------------------

    def _finish(self, x: Exchange) -> None:
        ended = time.perf_counter()
        observer = x.observer
        rec = Interception(
            id=x.request_id,
            user=x.user,
            provider=x.rt.name,
            provider_type=x.rt.type.TYPE,
            model=x.model,
            route=x.route.api,
            streaming=x.stream,
            client=x.client,
            user_agent=x.user_agent,
            session_id=x.session_id,
            credential=x.credential,
            key_hint=x.hints[-1] if x.hints and x.committed else None,
            attempts=x.attempts,
            started_at=x.started_wall,
            ended_at=x.started_wall + (ended - x.started),
            status=x.status,
            error_type=x.error_type,
            error_message=x.error_message,
            usage=observer.usage if observer is not None else None,
            prompt=x.prompt,
            tool_calls=observer.tool_calls if observer is not None else [],
        )
        self.recorder.record(rec)
        if x.span is not None:
            Tracing.end_interception(
                x.span,
                x.status,
                {"aibridge.attempts": x.attempts, "aibridge.error_type": x.error_type},
            )
        self.metrics.observe_interception(rec, x.upstream_seconds)
        if self.log_requests:
            self._log(x, ended)

    def _log(self, x: Exchange, ended: float) -> None:
        log_request(
            {
                "request_id": x.request_id,
                "user": x.user,
                "provider": x.rt.name,
                "route": x.route.api,
                "model": x.model,
                "stream": x.stream,
                "status": x.status,
                "attempts": x.attempts,
                "keys": x.hints,
                "credential": x.credential,
                "duration_ms": round((ended - x.started) * 1000, 2),
                "upstream_ms": round(x.upstream_seconds * 1000, 2),
                "error": x.error_type,
            }
        )
