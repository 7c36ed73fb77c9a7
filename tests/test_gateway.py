"""The gateway end to end: the official SDKs -> Gateway -> MockUpstream, all on loopback.

Success, failover, exhaustion, BYOK and passthrough, for both provider types,
blocking and streaming.
"""

import uuid
from typing import Any

import anthropic
import pytest

from aibridge.app import Gateway
from aibridge.asgi import DirectChunkWriter
from aibridge.config import from_mapping
from aibridge.keypool import KeyState
from aibridge.mock_upstream import MOCK_COUNT_TOKENS, Behaviour, MockUpstream
from aibridge.server_thread import ServerThread
from gateway_support import (
    CLIENT_KEY,
    GATEWAY_TOKEN,
    KEYS,
    PROVIDERS,
    RunningGateway,
    StartGateway,
    Wrapped,
    anthropic_client,
    assert_provider_error_shape,
    client_headers,
    complete,
    expected_usage,
    gateway,
    gateway_config,
    mock,
    openai_client,
    raw_request,
    sdk_module,
    start_gateway,
    upstream_server,
    upstream_url,
)

__all__ = ["gateway", "mock", "start_gateway", "upstream_server", "upstream_url"]

K0, K1, K2 = KEYS[:3]
both = pytest.mark.parametrize("provider", PROVIDERS)
modes = pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])


def error_of(provider: str, exc_info: Any) -> Any:
    """The SDK's APIStatusError from a pytest.raises block."""
    err = exc_info.value
    assert isinstance(err, sdk_module(provider).APIStatusError)
    return err


def call(gw: RunningGateway, provider: str, stream: bool, **kwargs: Any) -> Any:
    return complete(gw.url, provider, stream=stream, **kwargs)


# -- success ------------------------------------------------------------------------------


@both
@modes
def test_success_relays_content_and_usage(
    gateway: RunningGateway, mock: MockUpstream, provider: str, stream: bool
) -> None:
    result = call(gateway, provider, stream)
    assert result.text == mock.text
    assert result.usage == expected_usage(provider)
    uuid.UUID(result.headers["x-aibridge-request-id"])
    assert result.headers["x-aibridge-attempts"] == "1"
    assert mock.count(key=K0) == 1
    assert mock.count(key=K1) == 0
    assert gateway.states(provider) == [KeyState.VALID, KeyState.VALID]


def test_request_ids_are_unique(gateway: RunningGateway, mock: MockUpstream) -> None:
    ids = {call(gateway, "openai", False).headers["x-aibridge-request-id"] for _ in range(3)}
    assert len(ids) == 3


@modes
def test_openai_responses_api(gateway: RunningGateway, mock: MockUpstream, stream: bool) -> None:
    with openai_client(gateway.url) as client:
        if stream:
            raw_stream = client.responses.with_raw_response.create(
                model="gpt-test", input="hi", stream=True
            )
            headers = raw_stream.headers
            events = list(raw_stream.parse())
            completed = [e for e in events if e.type == "response.completed"]
            assert len(completed) == 1
            usage = completed[0].response.usage
        else:
            raw = client.responses.with_raw_response.create(model="gpt-test", input="hi")
            headers = raw.headers
            parsed = raw.parse()
            assert parsed.output_text == mock.text
            usage = parsed.usage
    assert usage is not None
    assert usage.input_tokens == 2100
    assert usage.output_tokens == 410
    assert headers["x-aibridge-attempts"] == "1"
    assert mock.requests[-1].path == "/v1/responses"


# -- failover -----------------------------------------------------------------------------


@both
@modes
def test_failover_after_429(
    gateway: RunningGateway, mock: MockUpstream, provider: str, stream: bool
) -> None:
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    result = call(gateway, provider, stream)
    assert result.text == mock.text
    assert result.usage == expected_usage(provider)
    assert result.headers["x-aibridge-attempts"] == "2"
    assert gateway.states(provider) == [KeyState.TEMPORARY, KeyState.VALID]
    assert gateway.reasons(provider)[0] == "rate_limited"
    assert 25 < gateway.runtime(provider).pool.keys[0].cooldown_remaining() <= 30
    assert mock.count(key=K0) == 1
    assert mock.count(key=K1) == 1
    # The cooling key is skipped on the next request: only key 1 is asked.
    call(gateway, provider, stream)
    assert mock.count(key=K0) == 1
    assert mock.count(key=K1) == 2


@both
@modes
def test_failover_after_401(
    gateway: RunningGateway, mock: MockUpstream, provider: str, stream: bool
) -> None:
    mock.set_behaviour(K0, Behaviour("unauthorized"))
    result = call(gateway, provider, stream)
    assert result.text == mock.text
    assert result.headers["x-aibridge-attempts"] == "2"
    assert gateway.states(provider) == [KeyState.TEMPORARY, KeyState.VALID]
    assert gateway.reasons(provider) == ["unauthorized", None]
    assert mock.count(key=K0) == 1
    assert mock.count(key=K1) == 1


@both
@modes
@pytest.mark.parametrize(
    ("kind", "status", "error_class"),
    [
        # A 403 is about the request (model access), not the key.
        ("forbidden", 403, "PermissionDeniedError"),
        # A 500 is the upstream's trouble: another key would not help.
        ("server_error", 500, "InternalServerError"),
    ],
)
def test_other_errors_are_relayed_without_failover(
    gateway: RunningGateway,
    mock: MockUpstream,
    provider: str,
    stream: bool,
    kind: str,
    status: int,
    error_class: str,
) -> None:
    mock.set_behaviour(K0, Behaviour(kind, message="the upstream's own words"))  # type: ignore[arg-type]
    sdk = sdk_module(provider)
    with pytest.raises(getattr(sdk, error_class)) as exc_info:
        call(gateway, provider, stream)
    err = error_of(provider, exc_info)
    assert err.status_code == status
    assert err.response.headers["x-aibridge-attempts"] == "1"
    body = assert_provider_error_shape(provider, err.response.json())
    assert body["message"] == "the upstream's own words"
    assert mock.count(key=K0) == 1
    assert mock.count(key=K1) == 0
    assert gateway.states(provider) == [KeyState.VALID, KeyState.VALID]


# -- exhaustion ---------------------------------------------------------------------------


@both
@modes
def test_all_keys_rate_limited(
    mock: MockUpstream,
    upstream_url: str,
    start_gateway: StartGateway,
    provider: str,
    stream: bool,
) -> None:
    gw = start_gateway(gateway_config(upstream_url, keys=(K0, K1, K2)))
    for key, seconds in ((K0, 5), (K1, 3), (K2, 10)):
        mock.set_behaviour(key, Behaviour("rate_limit", retry_after=seconds))
    sdk = sdk_module(provider)
    with pytest.raises(sdk.RateLimitError) as exc_info:
        call(gw, provider, stream)
    err = error_of(provider, exc_info)
    headers = err.response.headers
    assert headers["retry-after"] == "3"
    assert 2000 < int(headers["retry-after-ms"]) <= 3000
    assert headers["x-aibridge-attempts"] == "3"
    uuid.UUID(headers["x-aibridge-request-id"])
    inner = assert_provider_error_shape(provider, err.response.json())
    assert inner["type"] == "rate_limit_error"
    assert mock.count() == 3
    assert gw.states(provider) == [KeyState.TEMPORARY] * 3

    # Right after: every key is cooling, so nothing goes upstream.
    with pytest.raises(sdk.RateLimitError) as again:
        call(gw, provider, stream)
    again_headers = error_of(provider, again).response.headers
    assert int(again_headers["retry-after"]) <= 3
    assert int(again_headers["retry-after-ms"]) <= 3000
    assert again_headers["x-aibridge-attempts"] == "0"
    assert mock.count() == 3


@both
@modes
def test_all_keys_unauthorized_is_502(
    gateway: RunningGateway, mock: MockUpstream, provider: str, stream: bool
) -> None:
    mock.set_behaviour("*", Behaviour("unauthorized"))
    sdk = sdk_module(provider)
    with pytest.raises(sdk.InternalServerError) as exc_info:
        call(gateway, provider, stream)
    err = error_of(provider, exc_info)
    assert err.status_code == 502
    inner = assert_provider_error_shape(provider, err.response.json())
    assert inner["type"] == "api_error"
    assert "authentication" in inner["message"]
    assert err.response.headers["x-aibridge-attempts"] == "2"
    assert mock.count() == 2
    assert gateway.reasons(provider) == ["unauthorized", "unauthorized"]


# -- BYOK ---------------------------------------------------------------------------------


def byok_gateway(
    start_gateway: StartGateway, upstream_url: str, *, auth: bool = True, allow: bool = True
) -> RunningGateway:
    top: dict[str, Any] = {}
    if auth:
        top["auth"] = {"tokens": [{"user": "alice", "token": GATEWAY_TOKEN}]}
    return start_gateway(gateway_config(upstream_url, provider={"allow_byok": allow}, **top))


@both
@modes
def test_byok_uses_the_clients_key(
    mock: MockUpstream,
    upstream_url: str,
    start_gateway: StartGateway,
    provider: str,
    stream: bool,
) -> None:
    gw = byok_gateway(start_gateway, upstream_url)
    result = call(
        gw,
        provider,
        stream,
        api_key=CLIENT_KEY,
        extra_headers={"X-AIBridge-Token": GATEWAY_TOKEN},
    )
    assert result.text == mock.text
    assert result.headers["x-aibridge-attempts"] == "1"
    assert mock.count() == 1
    recorded = mock.requests[-1]
    assert recorded.key == CLIENT_KEY
    assert not any(k.startswith("x-aibridge") for k in recorded.headers)
    assert GATEWAY_TOKEN not in str(recorded.headers)
    assert all(k.served == 0 for k in gw.runtime(provider).pool.keys)


@both
def test_byok_429_is_relayed_without_failover(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway, provider: str
) -> None:
    gw = byok_gateway(start_gateway, upstream_url)
    mock.set_behaviour(CLIENT_KEY, Behaviour("rate_limit", retry_after=7))
    sdk = sdk_module(provider)
    with pytest.raises(sdk.RateLimitError) as exc_info:
        call(
            gw,
            provider,
            False,
            api_key=CLIENT_KEY,
            extra_headers={"X-AIBridge-Token": GATEWAY_TOKEN},
        )
    err = error_of(provider, exc_info)
    assert err.response.headers["retry-after"] == "7"
    assert err.response.headers["x-aibridge-attempts"] == "1"
    assert mock.count() == 1
    assert mock.count(key=CLIENT_KEY) == 1
    assert gw.states(provider) == [KeyState.VALID, KeyState.VALID]


@both
def test_byok_disabled_is_403(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway, provider: str
) -> None:
    gw = byok_gateway(start_gateway, upstream_url, allow=False)
    sdk = sdk_module(provider)
    with pytest.raises(sdk.PermissionDeniedError) as exc_info:
        call(
            gw,
            provider,
            False,
            api_key=CLIENT_KEY,
            extra_headers={"X-AIBridge-Token": GATEWAY_TOKEN},
        )
    err = error_of(provider, exc_info)
    assert err.status_code == 403
    assert_provider_error_shape(provider, err.response.json())
    assert mock.count() == 0


@both
def test_byok_without_an_auth_block(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway, provider: str
) -> None:
    gw = byok_gateway(start_gateway, upstream_url, auth=False)
    result = call(
        gw, provider, False, api_key=CLIENT_KEY, extra_headers={"X-AIBridge-Token": "anything"}
    )
    assert result.text == mock.text
    assert mock.count() == 1
    assert mock.requests[-1].key == CLIENT_KEY


@both
def test_byok_with_an_unknown_gateway_token_is_401(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway, provider: str
) -> None:
    gw = byok_gateway(start_gateway, upstream_url)
    sdk = sdk_module(provider)
    with pytest.raises(sdk.AuthenticationError) as exc_info:
        call(gw, provider, False, api_key=CLIENT_KEY, extra_headers={"X-AIBridge-Token": "nope"})
    assert_provider_error_shape(provider, error_of(provider, exc_info).response.json())
    assert mock.count() == 0


# -- passthrough --------------------------------------------------------------------------


def test_openai_models_passthrough_fails_over(gateway: RunningGateway, mock: MockUpstream) -> None:
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=20))
    with openai_client(gateway.url) as client:
        raw = client.models.with_raw_response.list(extra_query={"limit": "5"})
        models = raw.parse()
    assert [m.id for m in models.data]
    assert raw.headers["x-aibridge-attempts"] == "2"
    uuid.UUID(raw.headers["x-aibridge-request-id"])
    assert mock.count(key=K0, path="/v1/models") == 1
    assert mock.count(key=K1, path="/v1/models") == 1
    assert mock.requests[-1].query == "limit=5"
    assert gateway.states("openai") == [KeyState.TEMPORARY, KeyState.VALID]


def test_anthropic_count_tokens_passthrough_fails_over(
    gateway: RunningGateway, mock: MockUpstream
) -> None:
    mock.set_behaviour(K0, Behaviour("unauthorized"))
    with anthropic_client(gateway.url) as client:
        raw = client.messages.with_raw_response.count_tokens(
            model="claude-test", messages=[{"role": "user", "content": "hi"}]
        )
        counted = raw.parse()
    assert counted.input_tokens == MOCK_COUNT_TOKENS
    assert raw.headers["x-aibridge-attempts"] == "2"
    assert mock.requests[-1].path == "/v1/messages/count_tokens"
    assert mock.requests[-1].key == K1
    assert gateway.reasons("anthropic") == ["unauthorized", None]


def test_anthropic_models_passthrough(gateway: RunningGateway, mock: MockUpstream) -> None:
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=20))
    with anthropic_client(gateway.url) as client:
        raw = client.models.with_raw_response.list()
        page = raw.parse()
    assert page.data and all(m.type == "model" for m in page.data)
    assert raw.headers["x-aibridge-attempts"] == "2"
    assert mock.requests[-1].path == "/v1/models"
    assert mock.requests[-1].key == K1


def test_anthropic_beta_query_reaches_the_upstream(
    gateway: RunningGateway, mock: MockUpstream
) -> None:
    with anthropic_client(gateway.url) as client:
        # Claude Code asks for /v1/messages?beta=true; this SDK version puts the beta
        # marker elsewhere, so ask for the query explicitly.
        message = client.beta.messages.create(
            model="claude-test",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            extra_query={"beta": "true"},
        )
    assert message.usage.output_tokens == 480
    assert mock.requests[-1].path == "/v1/messages"
    assert mock.requests[-1].query == "beta=true"


def test_base_url_path_prefix_is_kept(
    mock: MockUpstream, start_gateway: StartGateway, upstream_server: Any
) -> None:
    wrapped = Wrapped(mock, prefix="/api/upstream")
    with ServerThread(wrapped, lifespan="on") as server:
        prefixed = server.url + "/api/upstream"
        gw = start_gateway(
            {
                "providers": [
                    {
                        "name": "openai",
                        "type": "openai",
                        "base_url": prefixed + "/v1",
                        "keys": [K0],
                    },
                    {"name": "anthropic", "type": "anthropic", "base_url": prefixed, "keys": [K0]},
                ],
                "log_requests": False,
            }
        )
        for provider in PROVIDERS:
            assert call(gw, provider, False).text == mock.text
        with openai_client(gw.url) as client:
            client.models.list()
    assert wrapped.paths == [
        "/api/upstream/v1/chat/completions",
        "/api/upstream/v1/messages",
        "/api/upstream/v1/models",
    ]


def test_named_providers_route_by_name(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway
) -> None:
    gw = start_gateway(
        {
            "providers": [
                {"name": "oa-a", "type": "openai", "base_url": upstream_url + "/v1", "keys": [K0]},
                {"name": "oa-b", "type": "openai", "base_url": upstream_url + "/v1", "keys": [K1]},
            ],
            "log_requests": False,
        }
    )
    call(gw, "openai", False, name="oa-b")
    assert mock.requests[-1].key == K1
    call(gw, "openai", True, name="oa-a")
    assert mock.requests[-1].key == K0


def test_passthrough_exhaustion_is_provider_shaped(
    gateway: RunningGateway, mock: MockUpstream
) -> None:
    mock.set_behaviour("*", Behaviour("rate_limit", retry_after=9))
    with anthropic_client(gateway.url) as client, pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.count_tokens(
            model="claude-test", messages=[{"role": "user", "content": "hi"}]
        )
    assert exc.value.response.headers["retry-after"] == "9"
    assert assert_provider_error_shape("anthropic", exc.value.response.json())["type"] == (
        "rate_limit_error"
    )
    assert mock.count(path="/v1/messages/count_tokens") == 2


def test_openai_stream_without_stream_options_gets_no_usage_chunk(
    gateway: RunningGateway, mock: MockUpstream
) -> None:
    """The gateway asks upstream for usage to record it, and strips that chunk again."""
    with openai_client(gateway.url) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert chunks
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == mock.text
    sent = mock.requests[-1].json()
    assert sent["stream_options"] == {"include_usage": True}


# -- the two stream relays ------------------------------------------------------------------


@both
@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_streams_relay_the_same_over_either_uvicorn_protocol(
    mock: MockUpstream,
    upstream_url: str,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    http: str,
) -> None:
    """On uvicorn's httptools protocol chunks go straight to its transport
    (DirectChunkWriter); on any other server (h11 here) through plain ASGI. The client
    sees the same stream, usage included, either way."""
    chosen: list[DirectChunkWriter | None] = []
    for_send = DirectChunkWriter.for_send

    def recording_for_send(*args: Any) -> DirectChunkWriter | None:
        writer = for_send(*args)
        chosen.append(writer)
        return writer

    monkeypatch.setattr(DirectChunkWriter, "for_send", recording_for_send)
    gw = Gateway(from_mapping(gateway_config(upstream_url)))
    with ServerThread(gw, ws="none", lifespan="on", http=http) as server:
        result = complete(server.url, provider, stream=True)
    assert result.text == mock.text
    assert result.usage == expected_usage(provider)
    assert len(chosen) == 1
    assert (chosen[0] is not None) == (http == "httptools")


@both
def test_a_paced_stream_goes_through_the_direct_writer_whole(
    monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """Chunks that arrive one by one (10 ms apart) are each written straight to the
    client's transport; the client still gets every event, in order, with usage."""
    written: list[bytes] = []
    direct_write = DirectChunkWriter.write

    def recording_write(self: DirectChunkWriter, data: bytes) -> bool:
        written.append(data)
        return direct_write(self, data)

    monkeypatch.setattr(DirectChunkWriter, "write", recording_write)
    paced = MockUpstream(chunks=5, chunk_delay=0.01)
    with ServerThread(paced, lifespan="on") as upstream:
        gw = Gateway(from_mapping(gateway_config(upstream.url)))
        with ServerThread(gw, ws="none", lifespan="on") as server:
            result = complete(server.url, provider, stream=True)
    assert result.text == paced.text
    assert result.usage == expected_usage(provider)
    assert len(written) >= 3  # deltas 10 ms apart go out one by one, not as one body


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ("/openai/v1/models/ft%3Aa%2Fb%20c", "/v1/models/ft%3Aa%2Fb%20c"),
        ("/openai/v1/models/plain-id", "/v1/models/plain-id"),
        # An escaped provider segment cannot be cut from the raw path: escaped again.
        ("/open%61i/v1/models/x%20y", "/v1/models/x%20y"),
    ],
)
def test_passthrough_forwards_the_path_as_the_client_encoded_it(
    gateway: RunningGateway, mock: MockUpstream, sent: str, forwarded: str
) -> None:
    """A model id with an escaped slash or space reaches the upstream escaped, not split
    into segments or broken into the request line."""
    response = raw_request(gateway.url, "GET", sent, headers=client_headers("openai"))
    assert response.status < 500
    assert mock.requests[-1].raw_path == forwarded
