"""``aibridge keys``, run as a real subprocess against a running gateway's admin API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aibridge.keypool import fingerprint, mask_key
from aibridge.mock_upstream import Behaviour, MockUpstream
from gateway_support import (
    ADMIN_TOKEN,
    BRIDGED_PATH,
    KEYS,
    RunningGateway,
    StartGateway,
    bridged_body,
    client_headers,
    closed_port,
    gateway_config,
    mock,
    raw_request,
    start_gateway,
    upstream_server,
    upstream_url,
)

__all__ = ["mock", "start_gateway", "upstream_server", "upstream_url"]

AIBRIDGE = str(Path(sys.executable).parent / "aibridge")
K0, K1 = KEYS[:2]


def keys_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AIBRIDGE_")}
    clean.update({"COLUMNS": "200", "NO_COLOR": "1", **env})
    return subprocess.run(
        [AIBRIDGE, "keys", *args], capture_output=True, text=True, timeout=30, env=clean
    )


@pytest.fixture
def cooling(mock: MockUpstream, upstream_url: str, start_gateway: StartGateway) -> RunningGateway:
    """A gateway with an admin token whose openai key 0 cools down after a 429."""
    gateway = start_gateway(gateway_config(upstream_url, admin={"token": ADMIN_TOKEN}))
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=120))
    path = BRIDGED_PATH["openai"]
    response = raw_request(
        gateway.url, "POST", path, bridged_body("openai"), client_headers("openai")
    )
    assert response.status == 200
    return gateway


def test_json_prints_the_admin_document(cooling: RunningGateway) -> None:
    result = keys_cli("--url", cooling.url, "--token", ADMIN_TOKEN, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    by_name = {p["name"]: p for p in document["providers"]}
    assert set(by_name) == {"openai", "anthropic"}
    openai_keys = {k["fingerprint"]: k for k in by_name["openai"]["keys"]}
    k0 = openai_keys[fingerprint(K0)]
    assert k0["state"] == "temporary" and k0["reason"] == "rate_limited"
    assert 100 < k0["cooldown_remaining"] <= 120
    assert k0["last_status"] == 429 and k0["consecutive_failures"] == 1
    assert openai_keys[fingerprint(K1)]["served"] == 1
    assert all(k["state"] == "valid" for k in by_name["anthropic"]["keys"])
    # Exactly what the admin API serves, bar the times (computed at each read).
    served = raw_request(
        cooling.url, "GET", "/admin/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    for doc in (served, document):
        for entry in doc["providers"]:
            for key in entry["keys"]:
                for moving in ("cooldown_remaining", "last_used", "last_failure_at"):
                    del key[moving]
    assert document == served
    for secret in KEYS[:2]:
        assert secret not in result.stdout


def test_the_token_may_come_from_the_environment(cooling: RunningGateway) -> None:
    result = keys_cli("--url", cooling.url, "--json", AIBRIDGE_ADMIN_TOKEN=ADMIN_TOKEN)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["providers"]


def test_without_a_token_it_exits_nonzero_and_says_why(cooling: RunningGateway) -> None:
    result = keys_cli("--url", cooling.url, "--json")
    assert result.returncode != 0
    assert "admin token" in result.stderr
    assert "--token" in result.stderr and "AIBRIDGE_ADMIN_TOKEN" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_a_wrong_token_or_no_gateway_fails_cleanly(cooling: RunningGateway) -> None:
    wrong = keys_cli("--url", cooling.url, "--token", "not-the-token", "--json")
    assert wrong.returncode == 1
    assert "401" in wrong.stderr and "Traceback" not in wrong.stderr
    nowhere = f"http://127.0.0.1:{closed_port()}"
    unreachable = keys_cli("--url", nowhere, "--token", ADMIN_TOKEN)
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr and "Traceback" not in unreachable.stderr


def test_the_table_renders(cooling: RunningGateway) -> None:
    result = keys_cli("--url", cooling.url, "--token", ADMIN_TOKEN)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "aibridge keys" in out
    for column in ("provider", "fingerprint", "state", "reason", "cooldown", "served"):
        assert column in out
    lines = out.splitlines()
    row0 = next(line for line in lines if fingerprint(K0) in line and "openai" in line)
    assert mask_key(K0) in row0
    assert "temporary" in row0 and "rate_limited" in row0 and "429" in row0
    assert re.search(r"\b1[0-2]\ds\b", row0), row0  # the cooldown countdown, ~120 s
    row1 = next(line for line in lines if fingerprint(K1) in line and "openai" in line)
    assert "valid" in row1 and "temporary" not in row1
    assert sum("anthropic" in line for line in lines) == 2
    for secret in KEYS[:2]:
        assert secret not in out


def test_a_refresh_interval_below_a_tenth_of_a_second_is_refused() -> None:
    """--interval 0 would poll the admin API in a busy loop; a negative one crashed."""
    for bad in ("0", "-1"):
        refused = keys_cli("--watch", "--interval", bad, "--url", "http://127.0.0.1:9")
        assert refused.returncode == 2
        assert "interval" in refused.stderr.lower()
