"""/metrics end to end: known requests through the official SDKs, then the exposition
parsed with prometheus_client's own parser and matched against what was sent."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aibridge.keypool import mask_key
from aibridge.metrics import MAX_LABEL_VALUES
from aibridge.mock_upstream import MOCK_USAGE, Behaviour, MockUpstream
from gateway_support import (
    GATEWAY_TOKEN,
    KEYS,
    RunningGateway,
    StartGateway,
    anthropic_client,
    gateway_config,
    mock,
    openai_client,
    raw_request,
    start_gateway,
    upstream_server,
    upstream_url,
    wait_until,
)

__all__ = ["mock", "start_gateway", "upstream_server", "upstream_url"]

K0, K1, K2, K3 = KEYS
BOB_TOKEN = "aibridge-token-bob-fedcba9876543210ab"
SECRETS = (*KEYS, GATEWAY_TOKEN, BOB_TOKEN)
AUTH = {"tokens": [{"user": "alice", "token": GATEWAY_TOKEN}, {"user": "bob", "token": BOB_TOKEN}]}
CLAUDE_UA = "claude-cli/2.0.1 (external, cli)"
MESSAGES_TOOL = {
    "name": "read_file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def find(self, metric: str, /, **labels: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, metric: str, /, **labels: str) -> float:
        """The one sample matching exactly these labels (a subset match must be unique)."""
        found = self.find(metric, **labels)
        assert len(found) == 1, f"{metric}{labels}: {found}"
        return found[0].value

    def total(self, metric: str, /, **labels: str) -> float:
        return sum(s.value for s in self.find(metric, **labels))

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.find(name) if label in s.labels}


def scrape(url: str) -> Scrape:
    response = raw_request(url, "GET", "/metrics")
    assert response.status == 200
    return Scrape(response.body.decode())


def settled(url: str, interceptions: float) -> Scrape:
    """The gateway observes after the last byte: poll until every request is counted."""
    last: list[Scrape] = []

    def done() -> bool:
        s = scrape(url)
        last[:] = [s]
        return s.total("aibridge_interceptions_total") >= interceptions

    assert wait_until(done, 10.0), "interceptions never reached the expected count"
    return last[0]


@pytest.fixture
def gw(mock: MockUpstream, upstream_url: str, start_gateway: StartGateway) -> Iterator[Any]:
    config = gateway_config(upstream_url, auth=AUTH)
    config["providers"].append(
        {
            "name": "strict",
            "type": "anthropic",
            "base_url": upstream_url,
            "keys": [K2, K3],
            "on_unauthorized": "disable",
        }
    )
    yield start_gateway(config)


def chat(url: str, token: str = GATEWAY_TOKEN, stream: bool = False, **kwargs: Any) -> Any:
    with openai_client(url, token) as oc:
        result = oc.chat.completions.create(
            model=kwargs.pop("model", "gpt-test"),
            messages=[{"role": "user", "content": "hello"}],
            stream=stream,
            **kwargs,
        )
        return list(result) if stream else result


def messages(url: str, token: str, name: str = "anthropic", **kwargs: Any) -> Any:
    with anthropic_client(url, token, name) as ac:
        return ac.messages.create(
            model="claude-test",
            max_tokens=16,
            messages=[{"role": "user", "content": "hello"}],
            **kwargs,
        )


def test_metrics_match_what_was_sent(gw: RunningGateway, mock: MockUpstream) -> None:
    import openai

    url = gw.url
    # 1. alice: two blocking chats on openai K0.
    chat(url)
    chat(url)
    # 2. bob, as Claude Code: a streamed message that calls a tool.
    events = list(
        messages(
            url,
            BOB_TOKEN,
            stream=True,
            tools=[MESSAGES_TOOL],
            extra_headers={"User-Agent": CLAUDE_UA},
        )
    )
    assert events[-1].type == "message_stop"
    # 3. passthrough: models (GET, openai) and count_tokens (POST, anthropic).
    with openai_client(url, GATEWAY_TOKEN) as oc:
        assert oc.models.list().data
    with anthropic_client(url, BOB_TOKEN) as ac:
        assert ac.messages.count_tokens(
            model="claude-test", messages=[{"role": "user", "content": "hi"}]
        ).input_tokens
    # 4. K0 rate-limited: alice's chat stream fails over to K1.
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    chunks = chat(url, stream=True)
    assert chunks
    # 5. strict (on_unauthorized: disable): K2 refused for good, K3 answers.
    mock.set_behaviour(K2, Behaviour("unauthorized"))
    messages(url, GATEWAY_TOKEN, "strict")
    # 6. K1 rate-limited too: openai's pool is exhausted.
    mock.set_behaviour(K1, Behaviour("rate_limit", retry_after=30))
    with pytest.raises(openai.RateLimitError):
        chat(url)

    m = settled(url, 6)
    oa = {"provider": "openai", "model": "gpt-test", "route": "chat"}
    # -- interceptions by status/model/route/client
    assert m.value("aibridge_interceptions_total", **oa, status="200", client="openai-python") == 3
    assert m.value("aibridge_interceptions_total", **oa, status="429", client="openai-python") == 1
    an = {"model": "claude-test", "route": "messages", "status": "200"}
    assert m.value("aibridge_interceptions_total", provider="anthropic", **an) == 1
    assert m.find("aibridge_interceptions_total", provider="anthropic")[0].labels["client"] == (
        "claude-code"
    )
    assert (
        m.value("aibridge_interceptions_total", provider="strict", **an, client="anthropic-python")
        == 1
    )
    assert m.total("aibridge_interceptions_total") == 6

    # -- tokens by type and user: three successful chats for alice, one message each.
    c, msg = MOCK_USAGE["chat"], MOCK_USAGE["messages"]
    cached = c["prompt_tokens_details"]["cached_tokens"]
    want_chat = {
        "input": c["prompt_tokens"] - cached,
        "output": c["completion_tokens"],
        "cache_read": cached,
        "reasoning_tokens": c["completion_tokens_details"]["reasoning_tokens"],
        "audio_tokens": c["completion_tokens_details"]["audio_tokens"],
        "accepted_prediction_tokens": c["completion_tokens_details"]["accepted_prediction_tokens"],
        "rejected_prediction_tokens": c["completion_tokens_details"]["rejected_prediction_tokens"],
        "input_audio_tokens": c["prompt_tokens_details"]["audio_tokens"],
    }
    want_messages = {
        "input": msg["input_tokens"],
        "output": msg["output_tokens"],
        "cache_read": msg["cache_read_input_tokens"],
        "cache_write": msg["cache_creation_input_tokens"],
        "ephemeral_5m_input_tokens": msg["cache_creation"]["ephemeral_5m_input_tokens"],
        "ephemeral_1h_input_tokens": msg["cache_creation"]["ephemeral_1h_input_tokens"],
        "web_search_requests": msg["server_tool_use"]["web_search_requests"],
    }

    def tokens(provider: str, user: str) -> dict[str, float]:
        return {
            s.labels["type"]: s.value
            for s in m.find("aibridge_tokens_total", provider=provider, user=user)
        }

    assert tokens("openai", "alice") == {k: 3 * v for k, v in want_chat.items()}
    assert tokens("anthropic", "bob") == want_messages
    assert tokens("strict", "alice") == want_messages
    assert tokens("openai", "bob") == {} and tokens("anthropic", "alice") == {}

    # -- prompts (every bridged request carried one, the exhausted one too) and tool calls
    assert m.value("aibridge_prompts_total", provider="openai", user="alice") == 4
    assert m.value("aibridge_prompts_total", provider="anthropic", user="bob") == 1
    assert m.value("aibridge_prompts_total", provider="strict", user="alice") == 1
    assert m.value("aibridge_tool_calls_total", provider="anthropic", name="read_file") == 1
    assert m.total("aibridge_tool_calls_total") == 1

    # -- passthrough
    assert m.value("aibridge_passthrough_total", provider="openai", method="GET") == 1
    assert m.value("aibridge_passthrough_total", provider="anthropic", method="POST") == 1
    assert m.total("aibridge_passthrough_total") == 2

    # -- key pool state: labels are hints; 0 valid, 1 cooling down, 2 disabled
    state = {
        (s.labels["provider"], s.labels["key"]): s.value for s in m.find("aibridge_key_pool_state")
    }
    assert state == {
        ("openai", mask_key(K0)): 1,
        ("openai", mask_key(K1)): 1,
        ("anthropic", mask_key(K0)): 0,
        ("anthropic", mask_key(K1)): 0,
        ("strict", mask_key(K2)): 2,
        ("strict", mask_key(K3)): 0,
    }
    assert (
        m.value(
            "aibridge_key_pool_state_transitions_total", provider="openai", reason="rate_limited"
        )
        == 2
    )
    assert (
        m.value(
            "aibridge_key_pool_state_transitions_total", provider="strict", reason="unauthorized"
        )
        == 1
    )
    assert m.total("aibridge_key_pool_state_transitions_total") == 3
    assert (
        m.value("aibridge_key_pool_exhaustions_total", provider="openai", kind="rate_limited") == 1
    )
    assert m.total("aibridge_key_pool_exhaustions_total") == 1

    # -- keys tried per request: openai 1, 1, 2 (failover), 1 (K1 only; K0 cooling down)
    h = "aibridge_key_pool_failover_attempts"
    assert m.value(f"{h}_count", provider="openai") == 4
    assert m.value(f"{h}_sum", provider="openai") == 5
    assert m.value(f"{h}_count", provider="anthropic") == 1
    assert m.value(f"{h}_sum", provider="anthropic") == 1
    assert m.value(f"{h}_count", provider="strict") == 1
    assert m.value(f"{h}_sum", provider="strict") == 2
    assert m.value(f"{h}_bucket", provider="openai", le="1.0") == 3

    # -- durations: one observation per bridged request; inflight back to 0
    up = "aibridge_upstream_duration_seconds"
    assert m.value(f"{up}_count", provider="openai", route="chat") == 4
    assert m.value(f"{up}_count", provider="anthropic", route="messages") == 1
    assert m.value(f"{up}_count", provider="strict", route="messages") == 1
    assert m.value(f"{up}_sum", provider="openai", route="chat") > 0
    assert m.value("aibridge_overhead_seconds_count", route="chat") == 4
    assert m.value("aibridge_overhead_seconds_count", route="messages") == 2
    assert m.value("aibridge_interceptions_duration_seconds_count", provider="openai") == 4
    inflight = m.find("aibridge_interceptions_inflight")
    assert inflight and all(s.value == 0 for s in inflight)
    assert {(s.labels["provider"], s.labels["route"]) for s in inflight} == {
        ("openai", "chat"),
        ("anthropic", "messages"),
        ("strict", "messages"),
    }

    # -- nothing secret anywhere in the exposition
    for secret in SECRETS:
        assert secret not in m.text
    hints = {mask_key(k) for k in KEYS}
    assert m.label_values("aibridge_key_pool_state", "key") == hints


def test_inflight_counts_an_open_stream(gw: RunningGateway, mock: MockUpstream) -> None:
    mock.set_behaviour(K0, Behaviour("stall", cut_after=2))
    with openai_client(gw.url, GATEWAY_TOKEN) as oc:
        stream = oc.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        next(iter(stream))
        open_now = scrape(gw.url)
        assert (
            open_now.value("aibridge_interceptions_inflight", provider="openai", route="chat") == 1
        )
        stream.close()
    assert mock.wait_disconnect(5.0)
    m = settled(gw.url, 1)
    assert m.value("aibridge_interceptions_inflight", provider="openai", route="chat") == 0
    assert (
        m.value(
            "aibridge_interceptions_total", provider="openai", status="200", client="openai-python"
        )
        == 1
    )


def test_random_model_names_cannot_grow_the_registry(
    mock: MockUpstream, upstream_url: str, start_gateway: StartGateway
) -> None:
    gw = start_gateway(gateway_config(upstream_url))
    n = 600
    models = {f"model-{secrets.token_hex(8)}" for _ in range(n)}
    with openai_client(gw.url) as oc:
        for model in models:
            oc.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    m = settled(gw.url, n)
    assert m.total("aibridge_interceptions_total") == n
    for name in (
        "aibridge_interceptions_total",
        "aibridge_tokens_total",
        "aibridge_prompts_total",
        "aibridge_interceptions_duration_seconds_count",
    ):
        values = m.label_values(name, "model")
        assert len(values) <= MAX_LABEL_VALUES + 1, name
        assert "other" in values, name
        assert values - {"other"} <= models, name
    counted = {s.labels["model"]: s.value for s in m.find("aibridge_interceptions_total")}
    assert counted["other"] == n - MAX_LABEL_VALUES
