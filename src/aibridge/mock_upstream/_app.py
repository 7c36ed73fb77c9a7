"""``MockUpstream``: the raw-ASGI fake OpenAI + Anthropic server.

Theory of operation: a request is read whole, recorded, routed by an exact
``(method, path)`` table, and answered from ``Payloads`` (bytes built at
construction) after a few ``bytes.replace`` calls for model, tool name and id.
The key's ``Behaviour`` decides between that answer and an error or a fault.
A streaming answer runs a watcher task on ``receive()`` so a client that goes
away is seen (``stream_disconnects``) even while the stream stalls.

Everything a test thread reads (``requests``, counters) is guarded by one lock;
the event loop thread only holds it for a few assignments per request.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ._behaviour import ERROR_KINDS, STREAM_FAULT_KINDS, Behaviour
from ._payloads import PH_MODEL, PH_RID, PH_TOOL, Payloads

__all__ = ["MockUpstream", "RecordedRequest"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_OPENAI: Final = "openai"
_ANTHROPIC: Final = "anthropic"
_MAX_RECORDED: Final = 1000
_MAX_STORED_RESPONSES: Final = 1000
_OK: Final = Behaviour()

# (method, path) -> (route, provider); provider None: decided by the request's headers.
_ROUTES: Final[dict[tuple[str, str], tuple[str, str | None]]] = {
    ("POST", "/v1/chat/completions"): ("chat", _OPENAI),
    ("POST", "/v1/responses"): ("responses", _OPENAI),
    ("POST", "/v1/embeddings"): ("embeddings", _OPENAI),
    ("POST", "/v1/messages"): ("messages", _ANTHROPIC),
    ("POST", "/v1/messages/count_tokens"): ("count_tokens", _ANTHROPIC),
    ("GET", "/v1/models"): ("models", None),
}
_JSON_ROUTES: Final = frozenset({"chat", "responses", "embeddings", "messages", "count_tokens"})


@dataclass(frozen=True, slots=True)
class _ErrorSpec:
    openai_status: int
    anthropic_status: int
    openai_type: str
    openai_code: str | None
    openai_message: str
    anthropic_type: str
    anthropic_message: str


_ERRORS: Final[dict[str, _ErrorSpec]] = {
    "rate_limit": _ErrorSpec(
        429,
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests (mock upstream). Please try again later.",
        "rate_limit_error",
        "This request would exceed the rate limit for your organization (mock upstream).",
    ),
    "unauthorized": _ErrorSpec(
        401,
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided (mock upstream).",
        "authentication_error",
        "invalid x-api-key",
    ),
    "forbidden": _ErrorSpec(
        403,
        403,
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported (mock upstream).",
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    "server_error": _ErrorSpec(
        500,
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
        "api_error",
        "Internal server error",
    ),
    "overloaded": _ErrorSpec(
        503,
        529,
        "server_error",
        None,
        "The engine is currently overloaded, please try again later.",
        "overloaded_error",
        "Overloaded",
    ),
    "bad_request": _ErrorSpec(
        400,
        400,
        "invalid_request_error",
        None,
        "Invalid request (mock upstream).",
        "invalid_request_error",
        "Invalid request (mock upstream).",
    ),
    "not_found": _ErrorSpec(
        404,
        404,
        "invalid_request_error",
        None,
        "Not found (mock upstream).",
        "not_found_error",
        "Not found (mock upstream).",
    ),
    "missing_key": _ErrorSpec(
        401,
        401,
        "invalid_request_error",
        None,
        "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "authentication_error",
        "x-api-key header is required",
    ),
}


def _error_body(provider: str, spec: _ErrorSpec, message: str | None) -> bytes:
    if provider == _ANTHROPIC:
        return orjson.dumps(
            {
                "type": "error",
                "error": {
                    "type": spec.anthropic_type,
                    "message": message or spec.anthropic_message,
                },
                "request_id": "req___RID__",
            }
        )
    return orjson.dumps(
        {
            "error": {
                "message": message or spec.openai_message,
                "type": spec.openai_type,
                "param": None,
                "code": spec.openai_code,
            }
        }
    )


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the mock received it (header names lowercased)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    key: str | None
    raw_path: str = ""  # the path as sent, percent-escapes and all

    def json(self) -> Any:
        return orjson.loads(self.body)


def _ratelimit_headers(reset_at: str) -> dict[str, Headers]:
    def enc(pairs: Iterable[tuple[str, str]]) -> Headers:
        return [(k.encode(), v.encode()) for k, v in pairs]

    openai_common = [
        ("openai-organization", "mock-org"),
        ("openai-processing-ms", "12"),
        ("openai-version", "2020-10-01"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "30000000"),
    ]
    anthropic_common = [
        ("anthropic-organization-id", "00000000-0000-4000-8000-000000000000"),
        ("anthropic-ratelimit-requests-limit", "4000"),
        ("anthropic-ratelimit-tokens-limit", "2000000"),
        ("anthropic-ratelimit-input-tokens-limit", "1600000"),
        ("anthropic-ratelimit-output-tokens-limit", "400000"),
    ]

    def anthropic_remaining(
        requests: str, tokens: str, inp: str, out: str
    ) -> list[tuple[str, str]]:
        return [
            ("anthropic-ratelimit-requests-remaining", requests),
            ("anthropic-ratelimit-requests-reset", reset_at),
            ("anthropic-ratelimit-tokens-remaining", tokens),
            ("anthropic-ratelimit-tokens-reset", reset_at),
            ("anthropic-ratelimit-input-tokens-remaining", inp),
            ("anthropic-ratelimit-input-tokens-reset", reset_at),
            ("anthropic-ratelimit-output-tokens-remaining", out),
            ("anthropic-ratelimit-output-tokens-reset", reset_at),
        ]

    return {
        _OPENAI: enc(
            [
                *openai_common,
                ("x-ratelimit-remaining-requests", "9999"),
                ("x-ratelimit-remaining-tokens", "29998000"),
                ("x-ratelimit-reset-requests", "6ms"),
                ("x-ratelimit-reset-tokens", "4ms"),
            ]
        ),
        _OPENAI + ".exhausted": enc(
            [
                *openai_common,
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-reset-tokens", "1s"),
            ]
        ),
        _ANTHROPIC: enc(
            [*anthropic_common, *anthropic_remaining("3999", "1998000", "1598000", "399500")]
        ),
        _ANTHROPIC + ".exhausted": enc(
            [*anthropic_common, *anthropic_remaining("0", "0", "0", "0")]
        ),
    }


_SSE_HEADERS: Final[Headers] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_JSON_CONTENT_TYPE: Final = (b"content-type", b"application/json")
_REQUEST_ID_HEADER: Final = {_OPENAI: b"x-request-id", _ANTHROPIC: b"request-id"}


class _StreamCut(Exception):
    """Raised to drop a connection when the server gives no handle on its transport."""


class MockUpstream:
    """A fake OpenAI + Anthropic upstream as an ASGI app (see the package docstring).

    ``behaviours`` maps an API key (or ``"*"``, any key without its own entry)
    to a ``Behaviour``; keys without one get ``ok``.
    """

    def __init__(
        self,
        behaviours: Mapping[str, Behaviour] | None = None,
        *,
        chunks: int = 20,
        chunk_delay: float = 0.0,
    ) -> None:
        self.chunks = max(chunks, 1)
        self.chunk_delay = chunk_delay
        self.payloads = Payloads(self.chunks, int(time.time()))
        self._initial = dict(behaviours or {})
        self._behaviours: dict[str, Behaviour] = dict(self._initial)
        self._remaining: dict[str, int] = {}
        reset_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
        self._ratelimit = _ratelimit_headers(reset_at)
        self._errors = {
            (provider, kind): _error_body(provider, spec, None)
            for kind, spec in _ERRORS.items()
            for provider in (_OPENAI, _ANTHROPIC)
        }
        self._rid_prefix = secrets.token_hex(4)
        self._rid_counter = itertools.count(1)
        # (variant, model json, tool json) -> frames with only the id left to fill.
        self._rendered: dict[tuple[str, bytes, bytes], tuple[bytes, ...]] = {}
        self._stored_responses: OrderedDict[str, bytes] = OrderedDict()

        self._lock = threading.Lock()
        self._disconnect_cond = threading.Condition(self._lock)
        self._recorded: deque[RecordedRequest] = deque(maxlen=_MAX_RECORDED)
        self._counts: Counter[tuple[str | None, str]] = Counter()
        self._disconnects = 0
        self._disconnects_waited = 0
        self._inflight = 0

    # -- scripting -----------------------------------------------------------------

    def set_behaviour(self, key: str, behaviour: Behaviour | None) -> None:
        """Script ``key`` (``"*"`` for every key without its own); None restores ``ok``."""
        with self._lock:
            if behaviour is None:
                self._behaviours.pop(key, None)
            else:
                self._behaviours[key] = behaviour
            self._remaining.pop(key, None)

    @property
    def behaviours(self) -> dict[str, Behaviour]:
        with self._lock:
            return dict(self._behaviours)

    def reset(self) -> None:
        """Back to the constructor's behaviours; forget recorded requests and counters."""
        with self._lock:
            self._behaviours = dict(self._initial)
            self._remaining.clear()
            self._recorded.clear()
            self._counts.clear()
            self._disconnects = 0
            self._disconnects_waited = 0
            self._stored_responses.clear()

    def _take_behaviour(self, key: str | None) -> Behaviour:
        behaviours = self._behaviours
        slot = key if key in behaviours else "*"
        behaviour = behaviours.get(slot)
        if behaviour is None:
            return _OK
        if behaviour.times is not None:
            with self._lock:
                left = self._remaining.get(slot, behaviour.times)
                if left <= 0:
                    return _OK
                self._remaining[slot] = left - 1
        return behaviour

    # -- inspection ----------------------------------------------------------------

    @property
    def text(self) -> str:
        """The assistant text every completion carries."""
        return self.payloads.text

    @property
    def requests(self) -> list[RecordedRequest]:
        """The last 1000 requests (control requests excluded), oldest first."""
        with self._lock:
            return list(self._recorded)

    def count(self, key: str | None = None, path: str | None = None) -> int:
        """Requests seen since the last reset, filtered by key and/or exact path."""
        with self._lock:
            return sum(
                n
                for (k, p), n in self._counts.items()
                if (key is None or k == key) and (path is None or p == path)
            )

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def stream_disconnects(self) -> int:
        """Streams whose client went away before the stream's end."""
        with self._lock:
            return self._disconnects

    def wait_disconnect(self, timeout: float = 5.0) -> bool:
        """Wait for one more stream disconnect than earlier calls have consumed.

        A disconnect that happened before the call still counts, so there is no race.
        """
        with self._disconnect_cond:
            target = self._disconnects_waited + 1
            if not self._disconnect_cond.wait_for(lambda: self._disconnects >= target, timeout):
                return False
            self._disconnects_waited = target
            return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_key: Counter[str] = Counter()
            by_path: Counter[str] = Counter()
            for (key, path), n in self._counts.items():
                by_key[key or ""] += n
                by_path[path] += n
            return {
                "requests": sum(self._counts.values()),
                "inflight": self._inflight,
                "stream_disconnects": self._disconnects,
                "by_key": dict(by_key),
                "by_path": dict(by_path),
            }

    def _note_disconnect(self) -> None:
        with self._disconnect_cond:
            self._disconnects += 1
            self._disconnect_cond.notify_all()

    # -- ASGI ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return

        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away before sending its body
            chunk = message.get("body", b"")
            body = body + chunk if body else chunk
            if not message.get("more_body", False):
                break

        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/_mock/"):
            await self._control(method, path, body, send)
            return

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        route, provider = self._route(method, path, headers)
        key = self._key(headers, provider)
        query = scope.get("query_string", b"").decode("latin-1")
        with self._lock:
            raw_path = scope.get("raw_path", b"").decode("latin-1")
            self._recorded.append(
                RecordedRequest(method, path, query, headers, body, key, raw_path)
            )
            self._counts[key, path] += 1
            self._inflight += 1
        try:
            await self._handle(route, provider, path, key, body, receive, send)
        finally:
            with self._lock:
                self._inflight -= 1

    @staticmethod
    def _route(method: str, path: str, headers: Mapping[str, str]) -> tuple[str, str]:
        found = _ROUTES.get((method, path))
        if found is None:
            if method == "GET" and path.startswith("/v1/models/"):
                found = ("model", None)
            elif method == "GET" and path.startswith("/v1/responses/"):
                found = ("response_get", _OPENAI)
            else:
                found = ("not_found", None)
        route, provider = found
        if provider is None:
            # /v1/models is shared: an Anthropic client always sends one of these.
            anthropic = "x-api-key" in headers or "anthropic-version" in headers
            provider = _ANTHROPIC if anthropic else _OPENAI
        return route, provider

    @staticmethod
    def _key(headers: Mapping[str, str], provider: str) -> str | None:
        bearer: str | None = None
        auth = headers.get("authorization")
        if auth is not None and auth[:7].lower() == "bearer ":
            bearer = auth[7:].strip() or None
        api_key = headers.get("x-api-key") or None
        if provider == _ANTHROPIC:
            return api_key or bearer
        return bearer or api_key

    async def _handle(
        self,
        route: str,
        provider: str,
        path: str,
        key: str | None,
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        rid = f"{self._rid_prefix}{next(self._rid_counter):016x}".encode()
        if key is None:
            await self._send_error(send, provider, "missing_key", rid, _OK)
            return
        if route == "not_found":
            await self._send_error(send, provider, "not_found", rid, _OK)
            return

        behaviour = self._take_behaviour(key)
        request: dict[str, Any] = {}
        if route in _JSON_ROUTES:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("model"), str):
                await self._send_error(
                    send,
                    provider,
                    "bad_request",
                    rid,
                    _OK,
                    "Request body must be a JSON object with a model.",
                )
                return
            request = parsed

        if behaviour.delay > 0:
            await asyncio.sleep(behaviour.delay)
        if behaviour.kind in ERROR_KINDS:
            await self._send_error(send, provider, behaviour.kind, rid, behaviour)
            return

        ratelimit = self._ratelimit[provider]
        if route in ("chat", "responses", "messages"):
            await self._completion(route, provider, request, rid, behaviour, receive, send)
        elif route == "count_tokens":
            await self._send_json(
                send, provider, rid, ratelimit, self.payloads.bodies["count_tokens"]
            )
        elif route == "embeddings":
            inputs = request.get("input")
            many = isinstance(inputs, list) and bool(inputs) and not isinstance(inputs[0], int)
            count = len(inputs) if many and isinstance(inputs, list) else 1
            out = self.payloads.embeddings(
                orjson.dumps(request["model"]), count, request.get("encoding_format") == "base64"
            )
            await self._send_json(send, provider, rid, ratelimit, out)
        elif route == "models":
            name = "anthropic.models" if provider == _ANTHROPIC else "openai.models"
            await self._send_json(send, provider, rid, ratelimit, self.payloads.bodies[name])
        elif route == "model":
            model_id = path[len("/v1/models/") :]
            out = (
                self.payloads.anthropic_model(model_id)
                if provider == _ANTHROPIC
                else self.payloads.openai_model(model_id)
            )
            await self._send_json(send, provider, rid, ratelimit, out)
        else:  # response_get
            with self._lock:
                stored = self._stored_responses.get(path[len("/v1/responses/") :])
            if stored is None:
                await self._send_error(send, provider, "not_found", rid, _OK)
            else:
                await self._send_json(send, provider, rid, ratelimit, stored)

    def _frames(self, variant: str, model: bytes, tool: bytes, stream: bool) -> tuple[bytes, ...]:
        cache_key = (variant + (".sse" if stream else ""), model, tool)
        frames = self._rendered.get(cache_key)
        if frames is None:
            raw = self.payloads.streams[variant] if stream else (self.payloads.bodies[variant],)
            frames = tuple(f.replace(PH_MODEL, model).replace(PH_TOOL, tool) for f in raw)
            if len(self._rendered) >= 512:  # clients sending endless model names
                self._rendered.clear()
            self._rendered[cache_key] = frames
        return frames

    async def _completion(
        self,
        route: str,
        provider: str,
        request: dict[str, Any],
        rid: bytes,
        behaviour: Behaviour,
        receive: Receive,
        send: Send,
    ) -> None:
        stream = request.get("stream") is True
        tool_name = _first_tool_name(route, request.get("tools"))
        variant = route + (".tools" if tool_name is not None else "")
        if stream and route == "chat":
            options = request.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:
                variant += ".usage"
        model = orjson.dumps(request["model"])
        tool = orjson.dumps(tool_name) if tool_name is not None else b'""'

        if route == "responses":
            full = self._frames(variant, model, tool, stream=False)[0].replace(PH_RID, rid)
            with self._lock:
                self._stored_responses[f"resp_{rid.decode()}"] = full
                if len(self._stored_responses) > _MAX_STORED_RESPONSES:
                    self._stored_responses.popitem(last=False)
            if not stream:
                await self._send_json(send, provider, rid, self._ratelimit[provider], full)
                return
        frames = self._frames(variant, model, tool, stream)
        if not stream:
            body = frames[0].replace(PH_RID, rid)
            await self._send_json(send, provider, rid, self._ratelimit[provider], body)
            return
        await self._stream(route, provider, frames, rid, behaviour, receive, send)

    async def _stream(
        self,
        route: str,
        provider: str,
        frames: tuple[bytes, ...],
        rid: bytes,
        behaviour: Behaviour,
        receive: Receive,
        send: Send,
    ) -> None:
        headers = [
            *_SSE_HEADERS,
            (_REQUEST_ID_HEADER[provider], b"req_" + rid),
            *self._ratelimit[provider],
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, gone))
        kind = behaviour.kind
        total = len(frames)
        # A fault always leaves the terminating frame(s) unsent.
        stop = min(behaviour.cut_after, total - 1) if kind in STREAM_FAULT_KINDS else total
        delay = self.chunk_delay
        try:
            for i in range(stop):
                if i and delay > 0:
                    await asyncio.sleep(delay)
                if gone.is_set():
                    self._note_disconnect()
                    return
                await send(
                    {
                        "type": "http.response.body",
                        "body": frames[i].replace(PH_RID, rid),
                        "more_body": i != total - 1,
                    }
                )
            if stop == total:
                return
            if kind == "stall":
                await gone.wait()
                self._note_disconnect()
            elif kind == "stream_error":
                await send(
                    {
                        "type": "http.response.body",
                        "body": _stream_error_frame(route, provider, rid, stop),
                        "more_body": False,
                    }
                )
            else:  # cut
                await _drop_connection(send, gone)
        finally:
            watcher.cancel()

    async def _send_json(
        self, send: Send, provider: str, rid: bytes, extra: Headers, body: bytes, status: int = 200
    ) -> None:
        headers = [
            _JSON_CONTENT_TYPE,
            (b"content-length", str(len(body)).encode()),
            (_REQUEST_ID_HEADER[provider], b"req_" + rid),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _send_error(
        self,
        send: Send,
        provider: str,
        kind: str,
        rid: bytes,
        behaviour: Behaviour,
        message: str | None = None,
    ) -> None:
        spec = _ERRORS[kind]
        message = message or behaviour.message
        if message is None:
            body = self._errors[provider, kind]
        else:
            body = _error_body(provider, spec, message)
        body = body.replace(PH_RID, rid)
        status = behaviour.status or (
            spec.anthropic_status if provider == _ANTHROPIC else spec.openai_status
        )
        exhausted = kind == "rate_limit"
        extra = list(self._ratelimit[provider + ".exhausted" if exhausted else provider])
        if behaviour.retry_after is not None:
            extra.append((b"retry-after", _format_seconds(behaviour.retry_after)))
        if behaviour.retry_after_ms is not None:
            extra.append((b"retry-after-ms", str(behaviour.retry_after_ms).encode()))
        if provider == _OPENAI and kind == "unauthorized":
            extra = [(b"www-authenticate", b'Bearer realm="OpenAI API"'), *extra]
        await self._send_json(send, provider, rid, extra, body, status)

    # -- control API and lifespan ----------------------------------------------------

    async def _control(self, method: str, path: str, body: bytes, send: Send) -> None:
        status = 200
        result: Any
        try:
            if path == "/_mock/behaviours" and method == "POST":
                data = orjson.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object {key: behaviour | null}")
                parsed = {
                    key: None if spec is None else Behaviour.from_dict(spec)
                    for key, spec in data.items()
                }
                for key, behaviour in parsed.items():
                    self.set_behaviour(key, behaviour)
                result = {k: b.to_dict() for k, b in self.behaviours.items()}
            elif path == "/_mock/behaviours" and method == "GET":
                result = {k: b.to_dict() for k, b in self.behaviours.items()}
            elif path == "/_mock/stats" and method == "GET":
                result = self.stats()
            elif path == "/_mock/reset" and method == "POST":
                self.reset()
                result = {"ok": True}
            else:
                status, result = 404, {"error": f"no control endpoint {method} {path}"}
        except (ValueError, TypeError) as exc:
            status, result = 400, {"error": str(exc)}
        out = orjson.dumps(result)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_CONTENT_TYPE, (b"content-length", str(len(out)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": out})

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _first_tool_name(route: str, tools: Any) -> str | None:
    """The name of the request's first tool, in each API's own tool shape."""
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    tool = tools[0]
    if route == "chat":
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
    else:
        name = tool.get("name")
    return name if isinstance(name, str) else "tool"


def _format_seconds(value: float) -> bytes:
    return str(int(value) if float(value).is_integer() else value).encode()


def _stream_error_frame(route: str, provider: str, rid: bytes, seq: int) -> bytes:
    """The error event each API sends mid-stream, ending the stream."""
    if provider == _ANTHROPIC:
        obj: dict[str, Any] = {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": f"req_{rid.decode()}",
        }
        return b"event: error\ndata: " + orjson.dumps(obj) + b"\n\n"
    message = "The server had an error while processing your request. Sorry about that!"
    if route == "responses":
        obj = {
            "type": "error",
            "sequence_number": seq,
            "code": "server_error",
            "message": message,
            "param": None,
        }
        return b"event: error\ndata: " + orjson.dumps(obj) + b"\n\n"
    obj = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def _drop_connection(send: Send, gone: asyncio.Event) -> None:
    """Close the connection with the chunked body unfinished.

    uvicorn's ``send`` is a bound method of the request cycle, which holds the
    transport: closing it flushes what was sent, then FIN, so the client reads
    every frame and then an incomplete chunked body. Waiting for uvicorn to see
    the close marks the cycle disconnected, so it logs no error. Other servers:
    raise, which makes them drop the connection.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    close = getattr(transport, "close", None)
    if not callable(close):
        raise _StreamCut("mock upstream cut the stream")
    close()
    await asyncio.wait_for(gone.wait(), 5.0)
