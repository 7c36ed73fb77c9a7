"""OpenTelemetry spans end to end: an in-memory exporter on the gateway's tracer provider,
requests through the official SDKs, and the finished spans read back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from aibridge.app import Gateway
from aibridge.config import from_mapping
from aibridge.keypool import mask_key
from aibridge.mock_upstream import Behaviour, MockUpstream
from aibridge.server_thread import ServerThread
from gateway_support import (
    GATEWAY_TOKEN,
    KEYS,
    anthropic_client,
    gateway_config,
    mock,
    openai_client,
    upstream_server,
    upstream_url,
    wait_until,
)

__all__ = ["mock", "upstream_server", "upstream_url"]

K0, K1 = KEYS[:2]
AUTH = {"tokens": [{"user": "alice", "token": GATEWAY_TOKEN}]}
SECRETS = (*KEYS, GATEWAY_TOKEN)


class Traced:
    def __init__(self, gateway: Gateway, url: str, exporter: InMemorySpanExporter) -> None:
        self.gateway = gateway
        self.url = url
        self.exporter = exporter

    def spans(self, n: int) -> list[ReadableSpan]:
        """The finished spans once there are ``n`` (the interception ends after the last byte)."""
        assert wait_until(lambda: len(self.exporter.get_finished_spans()) >= n, 5.0)
        spans = list(self.exporter.get_finished_spans())
        assert len(spans) == n, [s.name for s in spans]
        return spans


@pytest.fixture
def traced(mock: MockUpstream, upstream_url: str) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway = Gateway(
        from_mapping(gateway_config(upstream_url, auth=AUTH)), tracer_provider=provider
    )
    assert gateway.tracing is not None
    with ServerThread(gateway, ws="none", lifespan="on") as server:
        yield Traced(gateway, server.url, exporter)
    provider.shutdown()


def split(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (root,) = [s for s in spans if s.parent is None]
    attempts = sorted(
        (s for s in spans if s.parent is not None),
        key=lambda s: str(dict(s.attributes or {})["aibridge.attempt"]),
    )
    return root, attempts


def assert_no_secrets(spans: list[ReadableSpan]) -> None:
    for span in spans:
        text = repr(dict(span.attributes or {})) + span.name
        for secret in SECRETS:
            assert secret not in text


@pytest.mark.parametrize(
    ("provider", "stream"),
    [("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True)],
)
def test_failover_gives_one_interception_span_with_two_attempt_children(
    traced: Traced, mock: MockUpstream, provider: str, stream: bool
) -> None:
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    if provider == "openai":
        with openai_client(traced.url, GATEWAY_TOKEN) as oc:
            raw: Any = oc.chat.completions.with_raw_response.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
            body = raw.parse()
            if stream:
                list(body)
    else:
        with anthropic_client(traced.url, GATEWAY_TOKEN) as ac:
            raw = ac.messages.with_raw_response.create(
                model="claude-test",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi"}],
                stream=stream,
            )
            body = raw.parse()
            if stream:
                list(body)
    assert raw.headers["x-aibridge-attempts"] == "2"

    spans = traced.spans(3)
    root, attempts = split(spans)
    api = "chat" if provider == "openai" else "messages"
    assert root.name == f"aibridge {api}"
    attrs = dict(root.attributes or {})
    assert attrs["aibridge.provider"] == provider
    assert attrs["aibridge.provider_type"] == provider
    assert attrs["aibridge.model"] == ("gpt-test" if provider == "openai" else "claude-test")
    assert attrs["aibridge.user"] == "alice"
    assert attrs["aibridge.streaming"] is stream
    assert attrs["aibridge.request_id"] == raw.headers["x-aibridge-request-id"]
    assert attrs["aibridge.attempts"] == 2
    assert attrs["http.response.status_code"] == 200
    assert root.status.status_code is not StatusCode.ERROR

    assert len(attempts) == 2
    for number, (span, key) in enumerate(zip(attempts, (K0, K1), strict=True), start=1):
        a = dict(span.attributes or {})
        assert a["aibridge.attempt"] == number
        assert a["aibridge.key_hint"] == mask_key(key)
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
    assert dict(attempts[0].attributes or {})["http.response.status_code"] == 429
    assert dict(attempts[1].attributes or {})["http.response.status_code"] == 200
    assert_no_secrets(spans)


def test_each_request_is_its_own_trace(traced: Traced, mock: MockUpstream) -> None:
    with openai_client(traced.url, GATEWAY_TOKEN) as oc:
        for _ in range(2):
            oc.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]
            )
    spans = traced.spans(4)
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 2
    assert roots[0].context.trace_id != roots[1].context.trace_id
    for root in roots:
        children = [
            s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id
        ]
        assert len(children) == 1
        assert dict(children[0].attributes or {})["aibridge.attempt"] == 1


def test_exhausted_pool_ends_the_span_with_the_error(traced: Traced, mock: MockUpstream) -> None:
    import anthropic

    mock.set_behaviour("*", Behaviour("rate_limit", retry_after=30))
    with anthropic_client(traced.url, GATEWAY_TOKEN) as ac, pytest.raises(anthropic.RateLimitError):
        ac.messages.create(
            model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    root, attempts = split(traced.spans(3))
    attrs = dict(root.attributes or {})
    assert attrs["http.response.status_code"] == 429
    assert attrs["aibridge.error_type"] == "rate_limited"
    assert attrs["aibridge.attempts"] == 2
    assert [dict(s.attributes or {})["aibridge.key_hint"] for s in attempts] == [
        mask_key(K0),
        mask_key(K1),
    ]


def test_tracing_is_off_by_default(upstream_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    gateway = Gateway(from_mapping(gateway_config(upstream_url)))
    assert gateway.tracing is None
