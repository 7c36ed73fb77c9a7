"""Key selection strategies through the gateway: primary, round_robin, weighted."""

from __future__ import annotations

import http.client
from collections import Counter

import pytest

from aibridge.mock_upstream import Behaviour, MockUpstream
from gateway_support import (
    BRIDGED_PATH,
    KEYS,
    RawResponse,
    StartGateway,
    bridged_body,
    client_headers,
    gateway_config,
    mock,
    raw_request,
    start_gateway,
    upstream_server,
    upstream_url,
)

__all__ = ["mock", "start_gateway", "upstream_server", "upstream_url"]

K0, K1, K2 = KEYS[:3]


def send(url: str, provider: str = "openai") -> RawResponse:
    return raw_request(
        url, "POST", BRIDGED_PATH[provider], bridged_body(provider), client_headers(provider)
    )


def keys_of(mock: MockUpstream, since: int) -> list[str | None]:
    return [r.key for r in mock.requests[since:]]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_primary_always_starts_at_key_zero(
    provider: str, mock: MockUpstream, upstream_url: str, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(gateway_config(upstream_url, (K0, K1, K2)))
    for _ in range(6):
        assert send(gateway.url, provider).headers["x-aibridge-attempts"] == "1"
    assert keys_of(mock, 0) == [K0] * 6
    # Failover from the primary goes in order; cooling keys are then skipped.
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    mock.set_behaviour(K1, Behaviour("rate_limit", retry_after=30))
    before = len(mock.requests)
    response = send(gateway.url, provider)
    assert response.status == 200
    assert response.headers["x-aibridge-attempts"] == "3"
    assert keys_of(mock, before) == [K0, K1, K2]
    before = len(mock.requests)
    assert send(gateway.url, provider).headers["x-aibridge-attempts"] == "1"
    assert keys_of(mock, before) == [K2]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_round_robin_starts_each_request_at_the_next_key(
    provider: str, mock: MockUpstream, upstream_url: str, start_gateway: StartGateway
) -> None:
    config = gateway_config(upstream_url, (K0, K1, K2), {"strategy": "round_robin"})
    gateway = start_gateway(config)
    for _ in range(7):
        response = send(gateway.url, provider)
        assert response.status == 200
        assert response.headers["x-aibridge-attempts"] == "1"
    assert keys_of(mock, 0) == [K0, K1, K2, K0, K1, K2, K0]
    # The other provider keeps its own turn.
    other = "anthropic" if provider == "openai" else "openai"
    before = len(mock.requests)
    send(gateway.url, other)
    assert keys_of(mock, before) == [K0]

    # Failover still walks on in order from wherever the request started, wrapping round.
    mock.set_behaviour(K1, Behaviour("rate_limit", retry_after=30))
    mock.set_behaviour(K2, Behaviour("rate_limit", retry_after=30))
    before = len(mock.requests)
    response = send(gateway.url, provider)  # the 8th: starts at K1
    assert response.status == 200
    assert response.headers["x-aibridge-attempts"] == "3"
    assert keys_of(mock, before) == [K1, K2, K0]
    # The 9th starts at K2, which cools: K0 serves it without another upstream call.
    before = len(mock.requests)
    response = send(gateway.url, provider)
    assert response.headers["x-aibridge-attempts"] == "1"
    assert keys_of(mock, before) == [K0]


def test_weighted_spreads_requests_by_weight(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway
) -> None:
    config = gateway_config(upstream_url, (K0, K1), {"strategy": "weighted", "weights": [3, 1]})
    gateway = start_gateway(config)
    host, _, port = gateway.url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = bridged_body("openai")
    headers = client_headers("openai")
    total = 400
    try:
        for _ in range(total):  # one keep-alive connection: fast enough for 400
            conn.request("POST", BRIDGED_PATH["openai"], body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("x-aibridge-attempts") == "1"
    finally:
        conn.close()
    counts = Counter(r.key for r in mock.requests)
    assert sum(counts.values()) == total
    share = counts[K0] / total
    # Expected 0.75; the standard deviation over 400 draws is ~0.022.
    assert 0.65 <= share <= 0.85, counts


def test_weighted_fails_over_to_the_other_key(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway
) -> None:
    config = gateway_config(upstream_url, (K0, K1), {"strategy": "weighted", "weights": [1, 1]})
    gateway = start_gateway(config)
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    seen: list[list[str | None]] = []
    for _ in range(20):
        before = len(mock.requests)
        assert send(gateway.url).status == 200
        seen.append(keys_of(mock, before))
    # K0 is tried at most once (then it cools); every request ends on K1.
    assert all(keys[-1] == K1 for keys in seen)
    assert sum(keys.count(K0) for keys in seen) <= 1
    assert mock.count(key=K1) == 20
