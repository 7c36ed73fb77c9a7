"""Gateway tokens, and which headers cross the gateway in each direction."""

import re

import pytest

from aibridge.mock_upstream import Behaviour, MockUpstream
from aibridge.server_thread import ServerThread
from gateway_support import (
    BRIDGED_PATH,
    GATEWAY_TOKEN,
    KEYS,
    PROVIDERS,
    RunningGateway,
    StartGateway,
    Wrapped,
    assert_provider_error_shape,
    bridged_body,
    client_headers,
    complete,
    gateway_config,
    mock,
    raw_request,
    sdk_module,
    start_gateway,
    upstream_server,
    upstream_url,
)

__all__ = ["mock", "start_gateway", "upstream_server", "upstream_url"]

K0, K1 = KEYS[:2]
both = pytest.mark.parametrize("provider", PROVIDERS)
modes = pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
OTHER_TOKEN = "aibridge-token-bob-aaaaaaaaaaaaaaaa"


@pytest.fixture
def authed(mock: MockUpstream, upstream_url: str, start_gateway: StartGateway) -> RunningGateway:
    return start_gateway(
        gateway_config(
            upstream_url,
            auth={
                "tokens": [
                    {"user": "alice", "token": GATEWAY_TOKEN},
                    {"user": "bob", "token": OTHER_TOKEN},
                ]
            },
        )
    )


@both
def test_missing_token_is_401(authed: RunningGateway, mock: MockUpstream, provider: str) -> None:
    headers = client_headers(provider)
    headers.pop("authorization", None)
    headers.pop("x-api-key", None)
    response = raw_request(
        authed.url, "POST", BRIDGED_PATH[provider], bridged_body(provider), headers
    )
    assert response.status == 401
    inner = assert_provider_error_shape(provider, response.json())
    assert "missing" in inner["message"]
    assert mock.count() == 0


@both
@modes
def test_unknown_token_is_401(
    authed: RunningGateway, mock: MockUpstream, provider: str, stream: bool
) -> None:
    with pytest.raises(sdk_module(provider).AuthenticationError) as exc_info:
        complete(authed.url, provider, stream=stream, api_key="not-a-gateway-token")
    err = exc_info.value
    assert err.status_code == 401
    inner = assert_provider_error_shape(provider, err.response.json())
    assert "not-a-gateway-token" not in err.response.text
    assert inner["message"]
    assert mock.count() == 0


@both
@modes
def test_valid_token_through_the_sdk(
    authed: RunningGateway, mock: MockUpstream, provider: str, stream: bool
) -> None:
    # The openai SDK sends Authorization: Bearer, the anthropic SDK sends x-api-key.
    result = complete(authed.url, provider, stream=stream, api_key=GATEWAY_TOKEN)
    assert result.text == mock.text
    assert mock.count() == 1
    assert mock.requests[-1].key == K0


@pytest.mark.parametrize(
    ("provider", "header", "value"),
    [
        ("openai", "x-api-key", OTHER_TOKEN),
        ("anthropic", "authorization", f"Bearer {OTHER_TOKEN}"),
    ],
)
def test_valid_token_in_the_other_header(
    authed: RunningGateway, mock: MockUpstream, provider: str, header: str, value: str
) -> None:
    headers = client_headers(provider)
    headers.pop("authorization", None)
    headers.pop("x-api-key", None)
    headers[header] = value
    response = raw_request(
        authed.url, "POST", BRIDGED_PATH[provider], bridged_body(provider), headers
    )
    assert response.status == 200
    assert mock.requests[-1].key == K0


@both
@modes
def test_client_credentials_never_reach_the_upstream(
    authed: RunningGateway, mock: MockUpstream, provider: str, stream: bool
) -> None:
    extra = {
        "Cookie": "session=secret-cookie-value",
        "X-AIBridge-Debug": "1",
        "X-Custom-Header": "kept",
    }
    if provider == "anthropic":
        extra["anthropic-beta"] = "test-beta-2026"
    complete(authed.url, provider, stream=stream, api_key=GATEWAY_TOKEN, extra_headers=extra)
    headers = mock.requests[-1].headers
    if provider == "openai":
        assert headers["authorization"] == f"Bearer {K0}"
        assert "x-api-key" not in headers
        assert headers["user-agent"].startswith("OpenAI/Python")
    else:
        assert headers["x-api-key"] == K0
        assert "authorization" not in headers
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", headers["anthropic-version"])
        assert headers["anthropic-beta"] == "test-beta-2026"
        assert headers["user-agent"].startswith("Anthropic/Python")
    assert "cookie" not in headers
    assert not [name for name in headers if name.startswith("x-aibridge")]
    assert headers["x-custom-header"] == "kept"
    assert all(GATEWAY_TOKEN not in value for value in headers.values())
    assert all("secret-cookie-value" not in value for value in headers.values())


@both
@modes
def test_set_cookie_from_upstream_is_not_relayed(
    mock: MockUpstream, start_gateway: StartGateway, provider: str, stream: bool
) -> None:
    wrapped = Wrapped(
        mock, extra_headers=((b"set-cookie", b"upstream_session=abc; Path=/"), (b"x-other", b"1"))
    )
    with ServerThread(wrapped, lifespan="on") as server:
        gw = start_gateway(gateway_config(server.url))
        result = complete(gw.url, provider, stream=stream)
    assert result.text == mock.text
    assert "set-cookie" not in result.headers
    assert "x-other" not in result.headers
    assert wrapped.paths  # the request really went through the header-adding upstream
    # What clients pace themselves with is relayed.
    ratelimit = "x-ratelimit-" if provider == "openai" else "anthropic-ratelimit-"
    assert any(name.startswith(ratelimit) for name in result.headers)


@both
def test_upstream_retry_after_is_relayed_on_exhaustion_only_as_the_gateways(
    authed: RunningGateway, mock: MockUpstream, provider: str
) -> None:
    """A pool 429 carries the gateway's own retry hint and no upstream key headers."""
    # The last upstream 429 (key 1) says 9 s; the gateway's hint is when the FIRST key
    # recovers (key 0, 4 s): a relayed upstream header would say 9.
    mock.set_behaviour("*", Behaviour("rate_limit", retry_after=9))
    mock.set_behaviour(KEYS[0], Behaviour("rate_limit", retry_after=4))
    with pytest.raises(sdk_module(provider).RateLimitError) as exc_info:
        complete(authed.url, provider, stream=False, api_key=GATEWAY_TOKEN)
    response = exc_info.value.response
    for key in KEYS:
        assert key not in response.text
    assert response.headers["retry-after"] == "4"
    assert not [n for n in response.headers if "ratelimit" in n.lower()]
