"""The gateway when things go wrong: broken streams, disconnects, timeouts, bad input."""

import http.client
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from aibridge.keypool import KeyState, mask_key
from aibridge.mock_upstream import Behaviour, MockUpstream
from gateway_support import (
    BRIDGED_PATH,
    KEYS,
    PROVIDERS,
    RawResponse,
    RunningGateway,
    StartGateway,
    assert_provider_error_shape,
    bridged_body,
    client_headers,
    closed_port,
    complete,
    gateway,
    gateway_config,
    mock,
    raw_request,
    sdk_module,
    sse_events,
    start_gateway,
    upstream_server,
    upstream_url,
    wait_until,
)

__all__ = ["gateway", "mock", "start_gateway", "upstream_server", "upstream_url"]

K0, K1 = KEYS[:2]
both = pytest.mark.parametrize("provider", PROVIDERS)
modes = pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])


def post(gw: RunningGateway, provider: str, body: bytes, **headers: str) -> Any:
    return raw_request(
        gw.url,
        "POST",
        BRIDGED_PATH[provider],
        body,
        {**client_headers(provider), **headers},
    )


def assert_stream_error_event_last(provider: str, body: bytes) -> dict[str, Any]:
    events = sse_events(body)
    assert len(events) >= 2, body
    event, data = events[-1]
    parsed = orjson.loads(data)
    if provider == "anthropic":
        assert event == "error"
        assert parsed["type"] == "error"
        error: dict[str, Any] = parsed["error"]
    else:
        assert event is None
        error = parsed["error"]
        assert error["type"]
    assert error["message"]
    return error


# -- broken streams ---------------------------------------------------------------------


@both
def test_stream_cut_after_commit_ends_with_an_error_event(
    gateway: RunningGateway, mock: MockUpstream, provider: str
) -> None:
    mock.set_behaviour(K0, Behaviour("cut", cut_after=3))
    response = post(gateway, provider, bridged_body(provider, stream=True))
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-aibridge-attempts"] == "1"
    assert_stream_error_event_last(provider, response.body)
    # The frames sent before the cut were relayed ahead of the error.
    assert len(sse_events(response.body)) >= 4
    # No failover after commit: one upstream call, the key untouched.
    assert mock.count() == 1
    assert gateway.states(provider) == [KeyState.VALID, KeyState.VALID]


@both
def test_stream_cut_makes_the_sdk_raise(
    gateway: RunningGateway, mock: MockUpstream, provider: str
) -> None:
    mock.set_behaviour(K0, Behaviour("cut", cut_after=3))
    sdk = sdk_module(provider)
    with pytest.raises(sdk.APIError) as exc_info:
        complete(gateway.url, provider, stream=True)
    # The SDK read the gateway's error event; a dropped connection would be this subclass.
    assert not isinstance(exc_info.value, sdk.APIConnectionError)


@both
def test_stream_idle_timeout_ends_with_an_error_event(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway, provider: str
) -> None:
    gw = start_gateway(gateway_config(upstream_url, provider={"timeouts": {"idle": 0.3}}))
    mock.set_behaviour(K0, Behaviour("stall", cut_after=2))
    response = post(gw, provider, bridged_body(provider, stream=True))
    assert response.status == 200
    error = assert_stream_error_event_last(provider, response.body)
    assert "timed out" in error["message"]
    # The gateway let go of the upstream.
    assert mock.wait_disconnect(5.0)
    assert gw.states(provider) == [KeyState.VALID, KeyState.VALID]


@both
def test_client_disconnect_releases_the_upstream(
    gateway: RunningGateway, mock: MockUpstream, provider: str
) -> None:
    mock.set_behaviour(K0, Behaviour("stall", cut_after=2))
    body = bridged_body(provider, stream=True)
    host, _, port = gateway.url.removeprefix("http://").partition(":")
    head = [f"POST {BRIDGED_PATH[provider]} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{k}: {v}" for k, v in client_headers(provider).items()]
    head.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        sock.sendall(request)
        received = b""
        while b"data:" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the gateway closed before streaming"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert mock.wait_disconnect(5.0)
    assert wait_until(lambda: mock.inflight == 0, 5.0)


# -- timeouts and unreachable upstreams ------------------------------------------------


@both
@modes
def test_unreachable_upstream_is_502(
    start_gateway: StartGateway, provider: str, stream: bool
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    gw = start_gateway(gateway_config(dead))
    sdk = sdk_module(provider)
    with pytest.raises(sdk.InternalServerError) as exc_info:
        complete(gw.url, provider, stream=stream)
    err = exc_info.value
    assert err.status_code == 502
    assert_provider_error_shape(provider, err.response.json())
    assert err.response.headers["x-aibridge-attempts"] == "1"
    assert gw.states(provider) == [KeyState.VALID, KeyState.VALID]


@both
@modes
def test_slow_upstream_is_504(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway, provider: str, stream: bool
) -> None:
    gw = start_gateway(gateway_config(upstream_url, provider={"timeouts": {"response": 0.3}}))
    mock.set_behaviour(K0, Behaviour("slow", delay=2.0))
    sdk = sdk_module(provider)
    with pytest.raises(sdk.APIStatusError) as exc_info:
        complete(gw.url, provider, stream=stream)
    err = exc_info.value
    assert err.status_code == 504
    inner = assert_provider_error_shape(provider, err.response.json())
    assert "timed out" in inner["message"]
    assert err.response.headers["x-aibridge-attempts"] == "1"
    assert mock.count() == 1
    assert gw.states(provider) == [KeyState.VALID, KeyState.VALID]


# -- bad input ---------------------------------------------------------------------------


@both
@pytest.mark.parametrize(
    "body", [b"this is not json", b"[1, 2, 3]", b"", b"null", b'"text"'], ids=repr
)
def test_bad_json_is_400_without_upstream_calls(
    gateway: RunningGateway, mock: MockUpstream, provider: str, body: bytes
) -> None:
    response = post(gateway, provider, body)
    assert response.status == 400
    assert_provider_error_shape(provider, response.json())
    assert mock.count() == 0
    assert gateway.states(provider) == [KeyState.VALID, KeyState.VALID]
    assert all(k.consecutive_failures == 0 for k in gateway.runtime(provider).pool.keys)


@pytest.fixture
def small_body_gateway(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway
) -> RunningGateway:
    return start_gateway(gateway_config(upstream_url, server={"max_body_bytes": 2048}))


@both
def test_body_over_the_limit_is_413(
    small_body_gateway: RunningGateway, mock: MockUpstream, provider: str
) -> None:
    payload = orjson.loads(bridged_body(provider))
    payload["messages"][0]["content"] = "x" * 4096
    response = post(small_body_gateway, provider, orjson.dumps(payload))
    assert response.status == 413
    assert_provider_error_shape(provider, response.json())
    assert mock.count() == 0


@both
def test_chunked_body_over_the_limit_is_413(
    small_body_gateway: RunningGateway, mock: MockUpstream, provider: str
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * 512
        yield bridged_body(provider)

    host, _, port = small_body_gateway.url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "POST",
            BRIDGED_PATH[provider],
            body=chunks(),
            headers=client_headers(provider),
            encode_chunked=True,
        )
        response = conn.getresponse()
        status, body = response.status, response.read()
    finally:
        conn.close()
    assert status == 413
    assert_provider_error_shape(provider, orjson.loads(body))
    assert mock.count() == 0


@both
def test_body_under_the_limit_passes(
    small_body_gateway: RunningGateway, mock: MockUpstream, provider: str
) -> None:
    response = post(small_body_gateway, provider, bridged_body(provider))
    assert response.status == 200
    assert mock.count() == 1


def assert_gateway_ids(response: RawResponse) -> None:
    """Every answer, even one given before any upstream, names itself and its attempts."""
    assert uuid.UUID(response.headers["x-aibridge-request-id"]).version == 7
    assert response.headers["x-aibridge-attempts"] == "0"


@pytest.mark.parametrize(
    ("provider", "path", "status"),
    [
        # A bridged route asked with the wrong method.
        ("openai", "/openai/v1/chat/completions", 405),
        ("anthropic", "/anthropic/v1/messages", 405),
        # Unknown routes.
        ("openai", "/openai/v1/files", 404),
        ("openai", "/nope/v1/models", 404),
        ("openai", "/openai", 404),
        ("openai", "/", 404),
        ("anthropic", "/anthropic/v1/complete", 404),
    ],
)
def test_a_route_miss_is_answered_before_any_upstream(
    gateway: RunningGateway, mock: MockUpstream, provider: str, path: str, status: int
) -> None:
    response = raw_request(gateway.url, "GET", path, headers=client_headers(provider))
    assert response.status == status
    assert_provider_error_shape(provider, response.json())
    assert_gateway_ids(response)
    assert mock.count() == 0


def test_websocket_upgrade_is_426(gateway: RunningGateway, mock: MockUpstream) -> None:
    headers = {
        **client_headers("openai"),
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    response = raw_request(gateway.url, "GET", "/openai/v1/responses", headers=headers)
    assert response.status == 426
    assert_provider_error_shape("openai", response.json())
    assert_gateway_ids(response)
    assert mock.count() == 0


ODD_BODIES = [
    b"{}",
    b'{"model": 5}',
    b'{"model": "m", "messages": null}',
    b'{"model": "m", "messages": "hi"}',
    b'{"model": "m", "messages": [1, null, {"role": 7}]}',
    b'{"model": "m", "stream": "yes"}',
    b'{"model": "m", "stream": true, "stream_options": 5}',
    b'{"model": "m", "stream": true, "stream_options": null}',
    b'{"model": "m", "input": {"nested": [1, 2]}}',
    b'{"model": "m", "tools": [null, 3, {"function": 1}]}',
    b'{"model": "m", "max_tokens": -1, "messages": [{"role": "user", "content": [1]}]}',
    b"\xff\xfe\x00garbage",
    b'{"model": "\xff"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"model": "m"' + b', "x": 1' * 2000 + b"}",
]


@pytest.mark.parametrize("path", [*BRIDGED_PATH.values(), "/openai/v1/responses"])
def test_no_input_produces_a_500(gateway: RunningGateway, mock: MockUpstream, path: str) -> None:
    provider = "anthropic" if path.startswith("/anthropic") else "openai"
    for body in ODD_BODIES:
        response = raw_request(gateway.url, "POST", path, body, client_headers(provider))
        assert response.status < 500, (body[:60], response.status, response.body[:200])
        if response.status >= 400:
            assert_provider_error_shape(provider, response.json())


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("DELETE", "/openai/v1/chat/completions", {}),
        ("POST", "/openai/v1/models/../../admin/keys", {}),
        ("GET", "/%ff%fe", {}),
        ("GET", "/openai/v1/models", {"authorization": "Bearer"}),
        ("GET", "/openai/v1/models", {"authorization": "Basic Zm9vOmJhcg=="}),
        ("POST", "/openai/v1/chat/completions", {"content-length": "abc"}),
        ("GET", "/anthropic/v1/models/%00", {}),
        ("GET", "/openai/v1/responses", {"upgrade": "h2c"}),
    ],
)
def test_odd_requests_do_not_500(
    gateway: RunningGateway, mock: MockUpstream, method: str, path: str, headers: dict[str, str]
) -> None:
    response = raw_request(gateway.url, method, path, b'{"model": "m"}', headers)
    assert response.status < 500, (response.status, response.body[:200])


# -- health and metrics -------------------------------------------------------------------


def test_healthz(gateway: RunningGateway) -> None:
    response = raw_request(gateway.url, "GET", "/healthz")
    assert response.status == 200
    assert response.body.strip() == b"ok"


def test_metrics(gateway: RunningGateway, mock: MockUpstream) -> None:
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=20))
    complete(gateway.url, "openai", stream=False)
    response = raw_request(gateway.url, "GET", "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.body.decode()
    assert "# TYPE aibridge_interceptions_total counter" in text
    assert "aibridge_key_pool_state{" in text
    assert "aibridge_key_pool_state_transitions_total{" in text
    for key in KEYS:
        assert key not in text


# -- the gateway's own headers on its own answers -----------------------------------------


@both
def test_gateway_errors_carry_request_id_and_attempts(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway, provider: str
) -> None:
    gw = start_gateway(
        gateway_config(
            upstream_url,
            server={"max_body_bytes": 2048},
            auth={"tokens": [{"user": "alice", "token": "good-token-123456"}]},
        )
    )
    good = client_headers(provider, "good-token-123456")
    cases = [
        (400, b"not json", good),
        (401, bridged_body(provider), client_headers(provider, "bad-token")),
        (413, b"{" + b" " * 4096 + b"}", good),
    ]
    for status, body, headers in cases:
        response = raw_request(gw.url, "POST", BRIDGED_PATH[provider], body, headers)
        assert response.status == status
        uuid.UUID(response.headers["x-aibridge-request-id"])
        assert response.headers["x-aibridge-attempts"] == "0"
    assert mock.count() == 0


@both
def test_an_upstream_error_quoting_the_pool_key_reaches_the_client_masked(
    gateway: RunningGateway, mock: MockUpstream, provider: str
) -> None:
    """Some compatible servers quote the key in their errors: the client sees only its hint."""
    mock.set_behaviour("*", Behaviour("forbidden", message=f"key {KEYS[0]} may not use this"))
    response = post(gateway, provider, bridged_body(provider))
    assert response.status == 403
    assert KEYS[0].encode() not in response.body
    assert mask_key(KEYS[0]).encode() in response.body
    assert int(response.headers["content-length"]) == len(response.body)


@pytest.fixture
def truncating_upstream() -> Iterator[str]:
    """An upstream that announces a 100-byte JSON body, sends 10 bytes, and hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b'content-length: 100\r\n\r\n{"id": "ch'
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


@both
def test_a_blocking_answer_cut_short_is_a_clean_502(
    start_gateway: StartGateway, truncating_upstream: str, provider: str
) -> None:
    """Nothing was relayed yet: the client gets a 502 in its provider's shape, never a
    500 or half a JSON body."""
    gw = start_gateway(gateway_config(truncating_upstream))
    sdk = sdk_module(provider)
    with pytest.raises(sdk.InternalServerError) as exc_info:
        complete(gw.url, provider, stream=False)
    err = exc_info.value
    assert err.status_code == 502
    inner = assert_provider_error_shape(provider, err.response.json())
    assert "broke off" in inner["message"]
