"""Provider-shaped error responses, checked by value and through the official SDKs.

The SDK tests serve an :class:`ErrorResponse` from a real HTTP server on
loopback and let the real ``openai`` / ``anthropic`` client read it.
"""

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer

import anthropic as anthropic_sdk
import openai as openai_sdk
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aibridge.keypool import ErrorKind, KeyPoolError, ManualClock, Pool
from aibridge.providers import ErrorResponse
from aibridge.providers import anthropic as anthropic_provider
from aibridge.providers import openai as openai_provider

PoolErrorResponse = Callable[[KeyPoolError], ErrorResponse]
PROVIDERS: list[PoolErrorResponse] = [
    openai_provider.pool_error_response,
    anthropic_provider.pool_error_response,
]
RETRY_HEADERS = ("retry-after", "retry-after-ms")


def lower_headers(response: ErrorResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items()}


# -- shapes by value ------------------------------------------------------------


@pytest.mark.parametrize("pool_error_response", PROVIDERS)
@pytest.mark.parametrize(
    ("retry_after", "seconds", "ms"),
    [
        (0.0, "0", "0"),
        (0.0001, "1", "1"),
        (0.3, "1", "300"),
        (1.0, "1", "1000"),
        (1.2, "2", "1200"),
        (12.3456, "13", "12346"),
        (60.0, "60", "60000"),
        (3600.0, "3600", "3600000"),
    ],
)
def test_rate_limited_is_429_with_retry_headers(
    pool_error_response: PoolErrorResponse, retry_after: float, seconds: str, ms: str
) -> None:
    response = pool_error_response(KeyPoolError(ErrorKind.RATE_LIMITED, retry_after))
    headers = lower_headers(response)
    assert response.status == 429
    assert headers["retry-after"] == seconds
    assert headers["retry-after-ms"] == ms
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("pool_error_response", PROVIDERS)
@pytest.mark.parametrize("kind", [ErrorKind.UNAUTHORIZED, ErrorKind.PERMANENT])
def test_auth_failures_are_502_without_retry_headers(
    pool_error_response: PoolErrorResponse, kind: ErrorKind
) -> None:
    response = pool_error_response(KeyPoolError(kind, 42.0))
    headers = lower_headers(response)
    assert response.status == 502
    for name in RETRY_HEADERS:
        assert name not in headers
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("pool_error_response", PROVIDERS)
@given(retry_after=st.floats(min_value=0.0, max_value=3600.0, allow_nan=False))
def test_retry_headers_agree_with_each_other_and_the_message(
    pool_error_response: PoolErrorResponse, retry_after: float
) -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, retry_after)
    response = pool_error_response(err)
    headers = lower_headers(response)
    seconds, ms = int(headers["retry-after"]), int(headers["retry-after-ms"])
    # Never tell a client to come back before a key recovers...
    assert ms >= retry_after * 1000
    assert seconds >= retry_after
    # ...and round up by less than one unit.
    assert ms - retry_after * 1000 < 1 + 1e-6
    assert seconds == math.ceil(ms / 1000)
    assert f"(retry after {seconds}s)" in str(err)
    assert str(err) in response.body.decode()


def test_openai_rate_limited_body() -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, 12.5)
    response = openai_provider.pool_error_response(err)
    assert response.json() == {
        "error": {
            "message": "all configured keys are rate-limited (retry after 13s)",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert list(orjson.loads(response.body)["error"]) == ["message", "type", "param", "code"]


@pytest.mark.parametrize("kind", [ErrorKind.UNAUTHORIZED, ErrorKind.PERMANENT])
def test_openai_auth_failure_body(kind: ErrorKind) -> None:
    err = KeyPoolError(kind, 30.0)
    response = openai_provider.pool_error_response(err)
    assert response.json() == {
        "error": {"message": str(err), "type": "api_error", "param": None, "code": "server_error"}
    }
    assert str(err).startswith("all configured keys failed authentication")


def test_openai_request_id_goes_in_a_header() -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, 1.0)
    response = openai_provider.pool_error_response(err, request_id="req_abc")
    assert lower_headers(response)["x-request-id"] == "req_abc"
    assert set(orjson.loads(response.body)) == {"error"}


def test_anthropic_rate_limited_body() -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, 0.2)
    response = anthropic_provider.pool_error_response(err)
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "all configured keys are rate-limited (retry after 1s)",
        },
        "request_id": None,
    }


@pytest.mark.parametrize("kind", [ErrorKind.UNAUTHORIZED, ErrorKind.PERMANENT])
def test_anthropic_auth_failure_body(kind: ErrorKind) -> None:
    err = KeyPoolError(kind, 30.0)
    response = anthropic_provider.pool_error_response(err, request_id="req_123")
    assert response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": str(err)},
        "request_id": "req_123",
    }
    assert lower_headers(response)["request-id"] == "req_123"


@pytest.mark.parametrize("pool_error_response", PROVIDERS)
def test_error_bodies_never_contain_a_key(pool_error_response: PoolErrorResponse) -> None:
    secrets = ["sk-proj-secret-one-1234567890", "sk-ant-secret-two-0987654321"]
    clock = ManualClock()
    pool = Pool(secrets, clock)
    pool.keys[0].mark_temporary(10.0, "rate_limited")
    pool.keys[1].mark_temporary(20.0, "unauthorized")
    responses = [pool_error_response(pool.exhausted_error())]
    clock.advance(15.0)
    responses.append(pool_error_response(pool.exhausted_error()))  # key 0 recovered
    pool.keys[0].mark_temporary(30.0, "unauthorized")
    responses.append(pool_error_response(pool.exhausted_error()))
    for key in pool.keys:
        key.mark_permanent()
    responses.append(pool_error_response(pool.exhausted_error()))
    assert [r.status for r in responses] == [429, 429, 502, 502]
    for response in responses:
        blob = response.body + repr(response.headers).encode()
        for secret in secrets:
            assert secret.encode() not in blob
            assert secret[-8:].encode() not in blob


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [
        (400, "invalid_request_error", None),
        (401, "invalid_request_error", "invalid_api_key"),
        (404, "invalid_request_error", "unknown_url"),
        (429, "rate_limit_error", "rate_limit_exceeded"),
        (502, "api_error", "server_error"),
        (599, "api_error", None),
    ],
)
def test_openai_error_response_defaults(status: int, type_: str, code: str | None) -> None:
    response = openai_provider.error_response(status, message="boom")
    assert response.status == status
    assert response.json() == {
        "error": {"message": "boom", "type": type_, "param": None, "code": code}
    }


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
        (599, "api_error"),
    ],
)
def test_anthropic_error_response_defaults(status: int, type_: str) -> None:
    response = anthropic_provider.error_response(status, message="boom")
    assert response.status == status
    assert response.json() == {
        "type": "error",
        "error": {"type": type_, "message": "boom"},
        "request_id": None,
    }


# -- through the official SDKs --------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    arrived: float


@dataclass
class Upstream:
    """A scripted HTTP server on loopback: answers requests in order from ``script``."""

    server: HTTPServer
    script: list[ErrorResponse] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


def _handler(upstream_ref: list[Upstream]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            arrived = time.monotonic()
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            upstream = upstream_ref[0]
            upstream.seen.append(
                Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    arrived,
                )
            )
            if upstream.script:
                reply = upstream.script.pop(0)
            else:
                reply = ErrorResponse(599, {"content-type": "text/plain"}, b"script exhausted")
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    ref: list[Upstream] = []
    # A single-threaded server: requests are handled strictly one after another.
    server = HTTPServer(("127.0.0.1", 0), _handler(ref))
    ref.append(Upstream(server))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield ref[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def ok(body: dict[str, object]) -> ErrorResponse:
    # ErrorResponse is just "status, headers, body": fine for a 200 too.
    return ErrorResponse(200, {"content-type": "application/json"}, orjson.dumps(body))


CHAT_COMPLETION: dict[str, object] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-test",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}

MESSAGE: dict[str, object] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [{"type": "text", "text": "hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


def openai_client(upstream: Upstream, max_retries: int) -> openai_sdk.OpenAI:
    return openai_sdk.OpenAI(
        api_key="sk-client", base_url=upstream.url + "/v1", max_retries=max_retries, timeout=10
    )


def anthropic_client(upstream: Upstream, max_retries: int) -> anthropic_sdk.Anthropic:
    return anthropic_sdk.Anthropic(
        api_key="sk-ant-client", base_url=upstream.url, max_retries=max_retries, timeout=10
    )


def call_openai(client: openai_sdk.OpenAI) -> str | None:
    completion = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    return completion.choices[0].message.content


def call_anthropic(client: anthropic_sdk.Anthropic) -> str:
    message = client.messages.create(
        model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    block = message.content[0]
    assert block.type == "text"
    return block.text


def test_openai_sdk_reads_rate_limited(upstream: Upstream) -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, 7.2)
    upstream.script.append(openai_provider.pool_error_response(err, request_id="req_rl"))
    with openai_client(upstream, 0) as client, pytest.raises(openai_sdk.RateLimitError) as info:
        call_openai(client)
    exc = info.value
    assert exc.status_code == 429
    assert str(err) in exc.message
    assert exc.body == {
        "message": str(err),
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert exc.code == "rate_limit_exceeded"
    assert exc.type == "rate_limit_error"
    assert exc.request_id == "req_rl"
    assert exc.response.headers["retry-after"] == "8"
    assert exc.response.headers["retry-after-ms"] == "7200"
    assert len(upstream.seen) == 1
    assert upstream.seen[0].path == "/v1/chat/completions"


@pytest.mark.parametrize("kind", [ErrorKind.UNAUTHORIZED, ErrorKind.PERMANENT])
def test_openai_sdk_reads_auth_failure(upstream: Upstream, kind: ErrorKind) -> None:
    err = KeyPoolError(kind, 30.0)
    upstream.script.append(openai_provider.pool_error_response(err))
    with (
        openai_client(upstream, 0) as client,
        pytest.raises(openai_sdk.InternalServerError) as info,
    ):
        call_openai(client)
    exc = info.value
    assert exc.status_code == 502
    assert str(err) in exc.message
    assert exc.code == "server_error"
    assert exc.type == "api_error"
    assert "retry-after" not in exc.response.headers
    assert "retry-after-ms" not in exc.response.headers
    assert len(upstream.seen) == 1


def test_anthropic_sdk_reads_rate_limited(upstream: Upstream) -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, 0.0)
    upstream.script.append(anthropic_provider.pool_error_response(err, request_id="req_x"))
    with (
        anthropic_client(upstream, 0) as client,
        pytest.raises(anthropic_sdk.RateLimitError) as info,
    ):
        call_anthropic(client)
    exc = info.value
    assert exc.status_code == 429
    assert str(err) in exc.message
    assert exc.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": str(err)},
        "request_id": "req_x",
    }
    assert exc.request_id == "req_x"
    assert exc.response.headers["retry-after"] == "0"
    assert exc.response.headers["retry-after-ms"] == "0"
    assert upstream.seen[0].path == "/v1/messages"


@pytest.mark.parametrize("kind", [ErrorKind.UNAUTHORIZED, ErrorKind.PERMANENT])
def test_anthropic_sdk_reads_auth_failure(upstream: Upstream, kind: ErrorKind) -> None:
    err = KeyPoolError(kind, 30.0)
    upstream.script.append(anthropic_provider.pool_error_response(err))
    with (
        anthropic_client(upstream, 0) as client,
        pytest.raises(anthropic_sdk.InternalServerError) as info,
    ):
        call_anthropic(client)
    exc = info.value
    assert exc.status_code == 502
    assert str(err) in exc.message
    assert exc.body == {
        "type": "error",
        "error": {"type": "api_error", "message": str(err)},
        "request_id": None,
    }
    assert "retry-after" not in exc.response.headers
    assert len(upstream.seen) == 1


# The gateway's own 429 for a pool that frees up in 0.6 s says ``retry-after: 1``
# and ``retry-after-ms: 600``. Both SDKs' default backoff for a first retry is
# 0.375-0.5 s. A gap of at least 0.6 s rules out the default backoff; a gap
# under 0.95 s rules out the whole-second header: only retry-after-ms fits.
HONOURED_WAIT = 0.6
RETRY_AFTER_WOULD_BE = 0.95


def assert_retried_after_ms(upstream: Upstream) -> None:
    assert len(upstream.seen) == 2
    first, second = upstream.seen
    gap = second.arrived - first.arrived
    assert HONOURED_WAIT <= gap < RETRY_AFTER_WOULD_BE, gap
    assert second.headers.get("x-stainless-retry-count") == "1"


def test_openai_sdk_honours_retry_after_ms(upstream: Upstream) -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, HONOURED_WAIT)
    upstream.script += [openai_provider.pool_error_response(err), ok(CHAT_COMPLETION)]
    assert lower_headers(upstream.script[0])["retry-after"] == "1"
    with openai_client(upstream, 1) as client:
        assert call_openai(client) == "hello"
    assert_retried_after_ms(upstream)


def test_anthropic_sdk_honours_retry_after_ms(upstream: Upstream) -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, HONOURED_WAIT)
    upstream.script += [anthropic_provider.pool_error_response(err), ok(MESSAGE)]
    assert lower_headers(upstream.script[0])["retry-after"] == "1"
    with anthropic_client(upstream, 1) as client:
        assert call_anthropic(client) == "hello"
    assert_retried_after_ms(upstream)


def test_sdk_gives_up_after_its_retries(upstream: Upstream) -> None:
    err = KeyPoolError(ErrorKind.RATE_LIMITED, 0.05)
    upstream.script += [openai_provider.pool_error_response(err)] * 2
    with openai_client(upstream, 1) as client, pytest.raises(openai_sdk.RateLimitError):
        call_openai(client)
    assert len(upstream.seen) == 2
    assert upstream.seen[1].arrived - upstream.seen[0].arrived >= 0.05
