"""The admin API over HTTP: key health, disable/enable, and config reload."""

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from aibridge.keypool import KeyState, fingerprint, mask_key
from aibridge.mock_upstream import Behaviour, MockUpstream
from gateway_support import (
    ADMIN_TOKEN,
    KEYS,
    RawResponse,
    RunningGateway,
    StartGateway,
    complete,
    gateway,
    gateway_config,
    mock,
    raw_request,
    start_gateway,
    upstream_server,
    upstream_url,
)

__all__ = ["gateway", "mock", "start_gateway", "upstream_server", "upstream_url"]

K0, K1, K2 = KEYS[:3]
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def admin_gw(mock: MockUpstream, upstream_url: str, start_gateway: StartGateway) -> RunningGateway:
    return start_gateway(gateway_config(upstream_url, admin={"token": ADMIN_TOKEN}))


def admin(
    gw: RunningGateway, method: str, path: str, headers: dict[str, str] | None = None
) -> RawResponse:
    return raw_request(gw.url, method, path, headers=AUTH if headers is None else headers)


def assert_no_key_values(body: bytes) -> None:
    for key in KEYS:
        assert key.encode() not in body


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-admin-token"},
        {"x-aibridge-admin-token": "wrong-admin-token"},
        {"authorization": f"Basic {ADMIN_TOKEN}"},
    ],
    ids=["none", "wrong-bearer", "wrong-header", "not-bearer"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/keys"), ("POST", "/admin/reload"), ("POST", "/admin/keys/openai/x/disable")],
)
def test_admin_needs_the_token(
    admin_gw: RunningGateway, headers: dict[str, str], method: str, path: str
) -> None:
    response = admin(admin_gw, method, path, headers)
    assert response.status == 401
    assert response.json()["error"]["message"]
    assert_no_key_values(response.body)
    assert admin_gw.states("openai") == [KeyState.VALID, KeyState.VALID]


def test_admin_is_off_without_an_admin_block(gateway: RunningGateway) -> None:
    response = admin(gateway, "GET", "/admin/keys")
    assert response.status == 401
    assert_no_key_values(response.body)


def test_admin_token_in_its_own_header(admin_gw: RunningGateway) -> None:
    response = admin(admin_gw, "GET", "/admin/keys", {"x-aibridge-admin-token": ADMIN_TOKEN})
    assert response.status == 200


def test_list_keys(admin_gw: RunningGateway, mock: MockUpstream) -> None:
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    complete(admin_gw.url, "openai", stream=False)
    response = admin(admin_gw, "GET", "/admin/keys")
    assert response.status == 200
    assert_no_key_values(response.body)
    providers = {p["name"]: p for p in response.json()["providers"]}
    assert set(providers) == {"openai", "anthropic"}
    openai_keys = providers["openai"]["keys"]
    assert [k["fingerprint"] for k in openai_keys] == [fingerprint(K0), fingerprint(K1)]
    assert [k["hint"] for k in openai_keys] == [mask_key(K0), mask_key(K1)]
    assert [k["state"] for k in openai_keys] == ["temporary", "valid"]
    assert openai_keys[0]["reason"] == "rate_limited"
    assert 25 < openai_keys[0]["cooldown_remaining"] <= 30
    assert openai_keys[0]["last_status"] == 429
    assert openai_keys[1]["served"] == 1
    assert [k["state"] for k in providers["anthropic"]["keys"]] == ["valid", "valid"]


def test_disable_and_enable_a_key(admin_gw: RunningGateway, mock: MockUpstream) -> None:
    fp = fingerprint(K0)
    response = admin(admin_gw, "POST", f"/admin/keys/openai/{fp}/disable")
    assert response.status == 200
    assert response.json()["state"] == "permanent"
    assert_no_key_values(response.body)
    assert admin_gw.states("openai") == [KeyState.PERMANENT, KeyState.VALID]
    assert admin_gw.states("anthropic") == [KeyState.VALID, KeyState.VALID]

    result = complete(admin_gw.url, "openai", stream=False)
    assert result.headers["x-aibridge-attempts"] == "1"
    assert mock.count(key=K0) == 0
    assert mock.requests[-1].key == K1

    response = admin(admin_gw, "POST", f"/admin/keys/openai/{fp}/enable")
    assert response.status == 200
    assert response.json()["state"] == "valid"
    complete(admin_gw.url, "openai", stream=True)
    assert mock.requests[-1].key == K0


def test_admin_key_routes_reject_unknowns(admin_gw: RunningGateway) -> None:
    assert admin(admin_gw, "POST", "/admin/keys/openai/0000000000000000/disable").status == 404
    assert admin(admin_gw, "POST", f"/admin/keys/nope/{fingerprint(K0)}/disable").status == 404
    assert admin(admin_gw, "GET", f"/admin/keys/openai/{fingerprint(K0)}/disable").status == 405
    assert admin(admin_gw, "POST", "/admin/keys").status == 405
    assert admin(admin_gw, "GET", "/admin/reload").status == 405
    assert admin(admin_gw, "GET", "/admin/nothing").status == 404
    assert admin_gw.states("openai") == [KeyState.VALID, KeyState.VALID]


# -- reload ------------------------------------------------------------------------------


def write_config(path: Path, upstream_url: str, keys: list[str] | Any) -> None:
    raw = {
        "admin": {"token": ADMIN_TOKEN},
        "log_requests": False,
        "providers": [
            {"name": "openai", "type": "openai", "base_url": upstream_url + "/v1", "keys": keys}
        ],
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")


def pool_values(gw: RunningGateway) -> list[str]:
    return [k.value for k in gw.runtime("openai").pool.keys]


def test_reload_keeps_state_adds_and_removes_keys(
    tmp_path: Path, mock: MockUpstream, upstream_url: str, start_gateway: StartGateway
) -> None:
    from aibridge.config import load_file

    path = tmp_path / "aibridge.yaml"
    write_config(path, upstream_url, [K0, K1])
    gw = start_gateway(load_file(path), config_path=path)
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    complete(gw.url, "openai", stream=False)
    assert gw.states("openai") == [KeyState.TEMPORARY, KeyState.VALID]

    write_config(path, upstream_url, [K0, K2])
    response = admin(gw, "POST", "/admin/reload")
    assert response.status == 200, response.body
    assert response.json()["reloaded"] is True
    assert_no_key_values(response.body)
    listed = response.json()["providers"][0]["keys"]
    assert [k["fingerprint"] for k in listed] == [fingerprint(K0), fingerprint(K2)]
    assert [k["state"] for k in listed] == ["temporary", "valid"]

    assert pool_values(gw) == [K0, K2]
    assert gw.states("openai") == [KeyState.TEMPORARY, KeyState.VALID]
    assert gw.reasons("openai") == ["rate_limited", None]
    assert 25 < gw.runtime("openai").pool.keys[0].cooldown_remaining() <= 30

    # Traffic follows the new pool: K0 still cools, K2 serves, K1 is never asked again.
    before_k1 = mock.count(key=K1)
    result = complete(gw.url, "openai", stream=True)
    assert result.text == mock.text
    assert mock.requests[-1].key == K2
    assert mock.count(key=K1) == before_k1
    assert mock.count(key=K0) == 1


@pytest.mark.parametrize(
    "content",
    [
        "providers: [\n  - name: openai\n    type: openai\n  oops",
        "providers: []\n",
        None,  # duplicate key (written below)
        "providers:\n  - name: openai\n    type: nope\n    base_url: http://x\n    keys: [a]\n",
    ],
    ids=["bad-yaml", "no-providers", "duplicate-key", "unknown-type"],
)
def test_reload_rejects_an_invalid_file(
    tmp_path: Path,
    mock: MockUpstream,
    upstream_url: str,
    start_gateway: StartGateway,
    content: str | None,
) -> None:
    from aibridge.config import load_file

    path = tmp_path / "aibridge.yaml"
    write_config(path, upstream_url, [K0, K1])
    gw = start_gateway(load_file(path), config_path=path)
    if content is None:
        write_config(path, upstream_url, [K2, K2])
    else:
        path.write_text(content, encoding="utf-8")
    response = admin(gw, "POST", "/admin/reload")
    assert response.status == 400
    message = orjson.loads(response.body)["error"]["message"]
    assert "old config keeps serving" in message
    assert_no_key_values(response.body)
    # The old config keeps serving.
    assert pool_values(gw) == [K0, K1]
    result = complete(gw.url, "openai", stream=False)
    assert result.text == mock.text
    assert mock.requests[-1].key == K0
    assert admin(gw, "GET", "/admin/keys").status == 200


def test_reload_without_a_config_file_is_rejected(admin_gw: RunningGateway) -> None:
    response = admin(admin_gw, "POST", "/admin/reload")
    assert response.status == 400
    assert admin_gw.states("openai") == [KeyState.VALID, KeyState.VALID]
