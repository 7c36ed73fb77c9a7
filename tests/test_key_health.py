"""Keys that heal, seen through the gateway: auth backoff, bookkeeping, reload.

A gateway with an injected ``ManualClock`` runs in a ``ServerThread`` in front
of the real mock upstream; the reload tests run ``aibridge serve`` as a real
subprocess and send it SIGHUP.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aibridge.app import Gateway
from aibridge.config import from_mapping
from aibridge.keypool import Clock, Key, ManualClock, fingerprint
from aibridge.mock_upstream import Behaviour, MockUpstream
from aibridge.server_thread import ServerThread
from gateway_support import (
    ADMIN_TOKEN,
    KEYS,
    RawResponse,
    bridged_body,
    client_headers,
    mock,
    raw_request,
    upstream_server,
    upstream_url,
    wait_until,
)
from test_replicas import GatewayProcess

__all__ = ["mock", "upstream_server", "upstream_url"]

K0, K1, K2, K3 = KEYS
CHAT = "/openai/v1/chat/completions"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def openai_config(upstream_url: str, keys: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    return {
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "base_url": upstream_url + "/v1",
                "keys": list(keys),
                **extra,
            }
        ],
        "admin": {"token": ADMIN_TOKEN},
        "log_requests": False,
    }


StartClocked = Callable[[dict[str, Any], Clock], tuple[Gateway, str]]


@pytest.fixture
def start_clocked() -> Iterator[StartClocked]:
    """A Gateway on an injected clock, served from a ServerThread; stopped at teardown."""
    threads: list[ServerThread] = []

    def start(config: dict[str, Any], clock: Clock) -> tuple[Gateway, str]:
        gateway = Gateway(from_mapping(config), clock=clock)
        thread = ServerThread(gateway, ws="none", lifespan="on").start()
        threads.append(thread)
        return gateway, thread.url

    yield start
    for thread in reversed(threads):
        thread.stop()


def chat(url: str) -> RawResponse:
    return raw_request(url, "POST", CHAT, bridged_body("openai"), client_headers("openai"))


def admin_keys(url: str) -> dict[str, dict[str, Any]]:
    response = raw_request(url, "GET", "/admin/keys", headers=ADMIN)
    assert response.status == 200, response.body
    (provider,) = response.json()["providers"]
    return {k["fingerprint"]: k for k in provider["keys"]}


def test_a_refused_key_cools_down_longer_each_time_and_a_success_resets_it(
    mock: MockUpstream, upstream_url: str, start_clocked: StartClocked
) -> None:
    clock = ManualClock(1000.0)
    gateway, url = start_clocked(openai_config(upstream_url, (K0, K1)), clock)
    key: Key = gateway.providers["openai"].pool.keys[0]
    mock.set_behaviour(K0, Behaviour("unauthorized"))

    cooldowns: list[float] = []
    for attempt in range(1, 5):
        before = len(mock.requests)
        response = chat(url)
        assert response.status == 200, response.body  # key 1 serves meanwhile
        assert response.headers["x-aibridge-attempts"] == "2"
        assert [r.key for r in mock.requests[before:]] == [K0, K1]
        assert key.reason == "unauthorized"
        assert key.consecutive_failures == attempt
        cooldowns.append(key.cooldown_remaining())
        # Still cooling just before the deadline: the key is not tried.
        clock.advance(key.cooldown_remaining() - 0.001)
        before = len(mock.requests)
        assert chat(url).headers["x-aibridge-attempts"] == "1"
        assert [r.key for r in mock.requests[before:]] == [K1]
        clock.advance(0.002)
    assert cooldowns == pytest.approx([60.0, 120.0, 240.0, 480.0], abs=1e-6)

    # The key heals upstream: its next success resets the backoff ...
    mock.set_behaviour(K0, None)
    before = len(mock.requests)
    response = chat(url)
    assert response.headers["x-aibridge-attempts"] == "1"
    assert [r.key for r in mock.requests[before:]] == [K0]
    assert key.consecutive_failures == 0
    assert key.served == 1
    # ... so the next refusal cools it for 60 s again, not 960 s.
    mock.set_behaviour(K0, Behaviour("unauthorized"))
    assert chat(url).status == 200
    assert key.cooldown_remaining() == pytest.approx(60.0, abs=1e-6)
    assert key.consecutive_failures == 1


def test_the_backoff_is_capped_at_an_hour(
    mock: MockUpstream, upstream_url: str, start_clocked: StartClocked
) -> None:
    clock = ManualClock()
    gateway, url = start_clocked(openai_config(upstream_url, (K0, K1)), clock)
    key = gateway.providers["openai"].pool.keys[0]
    mock.set_behaviour(K0, Behaviour("unauthorized"))
    seen = []
    for _ in range(9):
        assert chat(url).status == 200
        seen.append(key.cooldown_remaining())
        clock.advance(seen[-1] + 0.001)
    expected = [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0, 3600.0]
    assert seen == pytest.approx(expected, abs=1e-6)


def test_admin_keys_shows_each_keys_bookkeeping(
    mock: MockUpstream, upstream_url: str, start_clocked: StartClocked
) -> None:
    clock = ManualClock(50.0)
    _, url = start_clocked(openai_config(upstream_url, (K0, K1, K2)), clock)
    fresh = admin_keys(url)[fingerprint(K2)]
    assert fresh["served"] == 0
    assert fresh["last_used"] is None
    assert fresh["last_status"] is None
    assert fresh["consecutive_failures"] == 0

    mock.set_behaviour(K0, Behaviour("unauthorized"))
    for _ in range(3):
        assert chat(url).status == 200
    clock.advance(10.0)
    keys = admin_keys(url)

    k0 = keys[fingerprint(K0)]
    assert k0["state"] == "temporary"
    assert k0["reason"] == "unauthorized"
    assert k0["cooldown_remaining"] == 50.0  # 60 s from the first refusal, 10 s gone
    assert k0["consecutive_failures"] == 1  # tried once; skipped while it cools
    assert k0["last_status"] == 401
    assert k0["served"] == 0
    assert k0["last_used"] is not None and k0["last_failure_at"] is not None

    k1 = keys[fingerprint(K1)]
    assert k1["state"] == "valid" and k1["reason"] is None
    assert k1["served"] == 3
    assert k1["consecutive_failures"] == 0
    assert k1["last_status"] is None
    # Wall-clock epochs: the last use was 10 s (on the gateway's clock) before now.
    assert k1["last_used"] == pytest.approx(k0["last_used"], abs=0.5)
    assert keys[fingerprint(K2)]["served"] == 0
    for view in keys.values():
        assert set(view) >= {"fingerprint", "hint", "state", "cooldown_remaining"}
        assert view["hint"] not in KEYS and "..." in view["hint"]
    body = raw_request(url, "GET", "/admin/keys", headers=ADMIN).body
    for secret in KEYS:
        assert secret.encode() not in body


# -- reload (SIGHUP to a real `aibridge serve`) --------------------------------------------


def test_sighup_reload_adds_and_removes_keys_and_a_cooling_key_keeps_its_state(
    mock: MockUpstream, upstream_url: str, tmp_path: Path
) -> None:
    gateway = GatewayProcess(openai_config(upstream_url, (K0, K1, K2)), tmp_path, "reload")
    try:
        gateway.wait_ready()
        mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=300))
        response = gateway.chat()
        assert response.status == 200
        assert response.headers["x-aibridge-attempts"] == "2"
        before_reload = gateway.keys()[fingerprint(K0)]
        assert before_reload["state"] == "temporary"

        # Edit the file: K1 goes, K3 comes; K0 (cooling) and K2 stay.
        gateway.config_path.write_text(
            yaml.safe_dump(openai_config(upstream_url, (K0, K2, K3))), encoding="utf-8"
        )
        gateway.process.send_signal(signal.SIGHUP)
        wanted = {fingerprint(k) for k in (K0, K2, K3)}
        assert wait_until(lambda: set(gateway.keys()) == wanted, 10.0), gateway.keys()
        keys = gateway.keys()
        k0 = keys[fingerprint(K0)]
        assert k0["state"] == "temporary"
        assert k0["reason"] == "rate_limited"
        assert 250.0 < k0["cooldown_remaining"] <= before_reload["cooldown_remaining"]
        assert k0["consecutive_failures"] == 1 and k0["last_status"] == 429
        assert keys[fingerprint(K3)]["state"] == "valid"
        assert keys[fingerprint(K3)]["served"] == 0
        # The reloaded pool serves: K0 is still skipped, K1 is gone, K2 is next.
        before = len(mock.requests)
        response = gateway.chat()
        assert response.status == 200
        assert response.headers["x-aibridge-attempts"] == "1"
        assert [r.key for r in mock.requests[before:]] == [K2]

        # An invalid edit is rejected; the old config keeps serving.
        broken = openai_config(upstream_url, (K0, K2, K3))
        broken["providers"][0]["keys"] = []
        gateway.config_path.write_text(yaml.safe_dump(broken), encoding="utf-8")
        gateway.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reload_rejected" in gateway.output(), 10.0), gateway.output()
        assert set(gateway.keys()) == wanted
        assert gateway.keys()[fingerprint(K0)]["state"] == "temporary"
        assert gateway.chat().status == 200
        # The same through the admin API, which says why.
        rejected = raw_request(gateway.url, "POST", "/admin/reload", headers=ADMIN)
        assert rejected.status == 400
        message = rejected.json()["error"]["message"]
        assert "old config keeps serving" in message and "keys" in message
        gateway.config_path.write_text("providers: [unclosed", encoding="utf-8")
        gateway.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: gateway.output().count("reload_rejected") >= 3, 10.0)
        assert gateway.chat().status == 200
        for secret in KEYS:
            assert secret not in gateway.output()
    finally:
        assert gateway.stop() == 0
