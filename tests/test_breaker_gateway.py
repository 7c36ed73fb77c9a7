"""The circuit breaker through the gateway: trips, rejects without an upstream call,
half-opens after ``open_timeout`` on the gateway's (manual) clock, closes on success,
and shows it all in Prometheus metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aibridge.app import Gateway
from aibridge.config import from_mapping
from aibridge.keypool import Clock, ManualClock
from aibridge.mock_upstream import Behaviour, MockUpstream
from aibridge.server_thread import ServerThread
from gateway_support import (
    BRIDGED_PATH,
    KEYS,
    PROVIDERS,
    RawResponse,
    assert_provider_error_shape,
    bridged_body,
    client_headers,
    gateway_config,
    mock,
    raw_request,
    upstream_server,
    upstream_url,
    wait_until,
)

__all__ = ["mock", "upstream_server", "upstream_url"]

K0 = KEYS[0]
BREAKER = {"failure_threshold": 3, "open_timeout": 30, "half_open_probes": 1}
UPSTREAM_OVERLOADED = {"openai": 503, "anthropic": 529}
MODEL = {"openai": "gpt-test", "anthropic": "claude-test"}

StartClocked = Callable[[dict[str, Any], Clock], str]


@pytest.fixture
def start_clocked() -> Iterator[StartClocked]:
    threads: list[ServerThread] = []

    def start(config: dict[str, Any], clock: Clock) -> str:
        gateway = Gateway(from_mapping(config), clock=clock)
        thread = ServerThread(gateway, ws="none", lifespan="on").start()
        threads.append(thread)
        return thread.url

    yield start
    for thread in reversed(threads):
        thread.stop()


def send(url: str, provider: str) -> RawResponse:
    return raw_request(
        url, "POST", BRIDGED_PATH[provider], bridged_body(provider), client_headers(provider)
    )


def metric(url: str, name: str, provider: str) -> float | None:
    """The value of ``name`` for ``provider``'s breaker, or None when absent."""
    text = raw_request(url, "GET", "/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("provider") == provider:
                assert sample.labels.get("model") == MODEL[provider], sample.labels
                return float(sample.value)
    return None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_breaker_trips_rejects_half_opens_and_closes(
    provider: str, mock: MockUpstream, upstream_url: str, start_clocked: StartClocked
) -> None:
    clock = ManualClock()
    url = start_clocked(gateway_config(upstream_url, (K0,), {"circuit_breaker": BREAKER}), clock)
    mock.set_behaviour(K0, Behaviour("overloaded"))
    state = "aibridge_circuit_breaker_state"
    trips = "aibridge_circuit_breaker_trips_total"
    rejects = "aibridge_circuit_breaker_rejects_total"

    for n in range(1, 4):
        response = send(url, provider)
        assert response.status == UPSTREAM_OVERLOADED[provider]  # relayed from upstream
        assert mock.count(key=K0) == n
        if n < 3:
            assert metric(url, state, provider) == 0.0
    assert metric(url, state, provider) == 1.0
    assert metric(url, trips, provider) == 1.0

    # Open: answered by the gateway, in the provider's shape, without an upstream call.
    clock.advance(10.0)
    response = send(url, provider)
    assert response.status == 503
    assert_provider_error_shape(provider, response.json())
    assert "circuit open" in response.json()["error"]["message"]
    assert response.headers["retry-after"] == "20"
    assert response.headers["retry-after-ms"] == "20000"
    assert mock.count(key=K0) == 3
    assert metric(url, rejects, provider) == 1.0
    assert metric(url, state, provider) == 1.0

    # open_timeout later: half-open. One probe is admitted; another is turned away.
    clock.advance(20.0)
    assert metric(url, state, provider) == 2.0
    mock.set_behaviour(K0, Behaviour("slow", delay=0.4))
    probe: dict[str, RawResponse] = {}
    thread = threading.Thread(target=lambda: probe.setdefault("r", send(url, provider)))
    thread.start()
    try:
        assert wait_until(lambda: mock.inflight == 1, 5.0)
        busy = send(url, provider)
        assert busy.status == 503
        assert_provider_error_shape(provider, busy.json())
        assert mock.count(key=K0) == 4  # the probe only
    finally:
        thread.join(10.0)
    assert probe["r"].status == 200
    assert metric(url, state, provider) == 0.0
    assert metric(url, rejects, provider) == 2.0

    # Closed again: requests flow, and it takes three new failures to trip once more.
    mock.set_behaviour(K0, None)
    assert send(url, provider).status == 200
    mock.set_behaviour(K0, Behaviour("overloaded"))
    for _ in range(3):
        assert send(url, provider).status == UPSTREAM_OVERLOADED[provider]
    assert send(url, provider).status == 503
    assert mock.count(key=K0) == 8
    assert metric(url, trips, provider) == 2.0


def test_a_failed_probe_reopens_for_a_fresh_timeout(
    mock: MockUpstream, upstream_url: str, start_clocked: StartClocked
) -> None:
    clock = ManualClock()
    url = start_clocked(gateway_config(upstream_url, (K0,), {"circuit_breaker": BREAKER}), clock)
    mock.set_behaviour(K0, Behaviour("overloaded"))
    for _ in range(3):
        assert send(url, "openai").status == 503
    clock.advance(30.0)
    assert send(url, "openai").status == 503  # the probe, answered by upstream
    assert mock.count(key=K0) == 4
    response = send(url, "openai")  # open again, for a full 30 s
    assert response.headers["retry-after"] == "30"
    assert mock.count(key=K0) == 4


def test_breaker_is_per_provider_and_off_when_not_configured(
    mock: MockUpstream, upstream_url: str, start_clocked: StartClocked
) -> None:
    config = gateway_config(upstream_url, (K0,))
    config["providers"][1]["circuit_breaker"] = BREAKER  # anthropic only
    url = start_clocked(config, ManualClock())
    mock.set_behaviour(K0, Behaviour("overloaded"))
    for n in range(1, 13):
        response = send(url, "openai")
        assert response.status == 503
        # Always the upstream's own error body, never the gateway's rejection.
        assert "circuit open" not in response.json()["error"]["message"]
        assert mock.count(key=K0) == n
    assert metric(url, "aibridge_circuit_breaker_rejects_total", "openai") is None
    assert metric(url, "aibridge_circuit_breaker_state", "openai") is None
    # The anthropic provider next to it does trip.
    for _ in range(3):
        assert send(url, "anthropic").status == 529
    assert send(url, "anthropic").status == 503
    assert mock.count(key=K0) == 15
