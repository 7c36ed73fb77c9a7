"""Shared pieces for the gateway's integration tests (imported explicitly, no conftest).

Everything here is real: a ``MockUpstream`` and the ``Gateway`` each run under
uvicorn in a ``ServerThread`` on loopback, and the clients are the official
``openai`` and ``anthropic`` SDKs or plain ``http.client`` sockets.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from aibridge.app import Gateway, ProviderRuntime
from aibridge.asgi import Receive, Scope, Send
from aibridge.config import Config, from_mapping
from aibridge.keypool import KeyState
from aibridge.mock_upstream import MockUpstream
from aibridge.server_thread import ServerThread

# Long enough that a masked hint keeps only 4 characters at each end.
KEYS = (
    "sk-pool-key-zero-0000000000000000",
    "sk-pool-key-one-11111111111111111",
    "sk-pool-key-two-22222222222222222",
    "sk-pool-key-three-333333333333333",
)
GATEWAY_TOKEN = "aibridge-token-alice-0123456789abcdef"
ADMIN_TOKEN = "aibridge-admin-token-fedcba9876543210"
CLIENT_KEY = "sk-client-own-key-5555555555555555"

PROVIDERS = ("openai", "anthropic")
OPENAI_CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_MESSAGES = {
    "model": "claude-test",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
BRIDGED_PATH = {"openai": "/openai/v1/chat/completions", "anthropic": "/anthropic/v1/messages"}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; True if it held."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.005)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- upstreams ------------------------------------------------------------------------


class Wrapped:
    """An ASGI wrapper around the mock: strips a path prefix, adds response headers.

    Records the paths exactly as they arrived (before stripping).
    """

    def __init__(
        self,
        app: MockUpstream,
        prefix: str = "",
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.extra_headers = list(extra_headers)
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.paths.append(scope["path"])
        scope = dict(scope)
        if self.prefix and scope["path"].startswith(self.prefix):
            scope["path"] = scope["path"][len(self.prefix) :]

        async def send_more(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message["headers"], *self.extra_headers]
            await send(message)

        await self.app(scope, receive, send_more)


@dataclass
class Upstream:
    mock: MockUpstream
    url: str


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[Upstream]:
    mock = MockUpstream()
    with ServerThread(mock, lifespan="on") as server:
        yield Upstream(mock, server.url)


@pytest.fixture
def mock(upstream_server: Upstream) -> MockUpstream:
    """The module's mock upstream, reset (behaviours, records, counters) for this test."""
    upstream_server.mock.reset()
    return upstream_server.mock


@pytest.fixture
def upstream_url(upstream_server: Upstream) -> str:
    return upstream_server.url


# -- gateways -------------------------------------------------------------------------


def provider_entries(
    upstream_url: str, keys: tuple[str, ...] = KEYS[:2], **extra: Any
) -> list[dict[str, Any]]:
    """One openai and one anthropic provider against ``upstream_url``."""
    return [
        {
            "name": "openai",
            "type": "openai",
            "base_url": upstream_url + "/v1",
            "keys": list(keys),
            **extra,
        },
        {
            "name": "anthropic",
            "type": "anthropic",
            "base_url": upstream_url,
            "keys": list(keys),
            **extra,
        },
    ]


def gateway_config(
    upstream_url: str, keys: tuple[str, ...] = KEYS[:2], provider: Any = None, **top: Any
) -> dict[str, Any]:
    """A raw config mapping; ``provider`` holds extra per-provider fields."""
    return {
        "providers": provider_entries(upstream_url, keys, **(provider or {})),
        "log_requests": False,
        **top,
    }


class RunningGateway:
    def __init__(self, gateway: Gateway, url: str) -> None:
        self.gateway = gateway
        self.url = url

    def runtime(self, name: str) -> ProviderRuntime:
        return self.gateway.providers[name]

    def states(self, name: str) -> list[KeyState]:
        states: list[KeyState] = self.runtime(name).pool.states()
        return states

    def reasons(self, name: str) -> list[str | None]:
        return [k.reason for k in self.runtime(name).pool.keys]


StartGateway = Callable[..., RunningGateway]


@pytest.fixture
def start_gateway() -> Iterator[StartGateway]:
    """Start Gateways in ServerThreads (ws off, lifespan on); all stopped at teardown."""
    threads: list[ServerThread] = []

    def start(
        config: Mapping[str, Any] | Config, config_path: Path | None = None
    ) -> RunningGateway:
        cfg = config if isinstance(config, Config) else from_mapping(dict(config))
        gateway = Gateway(cfg, config_path=config_path)
        thread = ServerThread(gateway, ws="none", lifespan="on")
        thread.start()
        threads.append(thread)
        return RunningGateway(gateway, thread.url)

    yield start
    for thread in reversed(threads):
        thread.stop()


@pytest.fixture
def gateway(mock: MockUpstream, upstream_url: str, start_gateway: StartGateway) -> RunningGateway:
    """Both providers, two pool keys each, no auth."""
    return start_gateway(gateway_config(upstream_url))


# -- clients --------------------------------------------------------------------------


def openai_client(
    gateway_url: str, api_key: str = "unused", name: str = "openai", **kwargs: Any
) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway_url}/{name}/v1", api_key=api_key, max_retries=0, **kwargs
    )


def anthropic_client(
    gateway_url: str, api_key: str = "unused", name: str = "anthropic", **kwargs: Any
) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{gateway_url}/{name}", api_key=api_key, max_retries=0, **kwargs
    )


@dataclass
class Completion:
    headers: Mapping[str, str]
    text: str
    usage: dict[str, Any]


def complete(
    gateway_url: str,
    provider: str,
    *,
    stream: bool,
    api_key: str = "unused",
    name: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> Completion:
    """One chat completion / message through the gateway with the official SDK."""
    headers = dict(extra_headers or {})
    if provider == "openai":
        oc = openai_client(gateway_url, api_key, name or "openai")
        with oc:
            if not stream:
                raw = oc.chat.completions.with_raw_response.create(
                    model="gpt-test",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers=headers,
                )
                completion = raw.parse()
                assert completion.usage is not None
                return Completion(
                    raw.headers,
                    completion.choices[0].message.content or "",
                    completion.usage.model_dump(exclude_none=True),
                )
            raw_stream = oc.chat.completions.with_raw_response.create(
                model="gpt-test",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            )
            text = ""
            usage: dict[str, Any] = {}
            for chunk in raw_stream.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if chunk.usage is not None:
                    usage = chunk.usage.model_dump(exclude_none=True)
            return Completion(raw_stream.headers, text, usage)

    ac = anthropic_client(gateway_url, api_key, name or "anthropic")
    with ac:
        if not stream:
            raw_message = ac.messages.with_raw_response.create(
                model="claude-test",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=headers,
            )
            message = raw_message.parse()
            text = "".join(b.text for b in message.content if b.type == "text")
            return Completion(
                raw_message.headers, text, message.usage.model_dump(exclude_none=True)
            )
        with ac.messages.stream(
            model="claude-test",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=headers,
        ) as message_stream:
            final = message_stream.get_final_message()
            text = "".join(b.text for b in final.content if b.type == "text")
            return Completion(
                message_stream.response.headers, text, final.usage.model_dump(exclude_none=True)
            )


def sdk_module(provider: str) -> Any:
    return openai if provider == "openai" else anthropic


def expected_usage(provider: str) -> dict[str, Any]:
    from aibridge.mock_upstream import MOCK_USAGE

    return MOCK_USAGE["chat"] if provider == "openai" else MOCK_USAGE["messages"]


def assert_provider_error_shape(provider: str, body: Any) -> dict[str, Any]:
    """The body is an error in the provider's own format; returns the inner error."""
    assert isinstance(body, dict), body
    if provider == "openai":
        error = body["error"]
        assert set(error) >= {"message", "type", "param", "code"}, body
    else:
        assert body["type"] == "error", body
        error = body["error"]
        assert set(error) >= {"type", "message"}, body
    assert isinstance(error["message"], str) and error["message"]
    result: dict[str, Any] = error
    return result


# -- raw HTTP -------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lowercased names; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def client_headers(provider: str, token: str = "unused") -> dict[str, str]:
    """What each SDK would send for auth and content."""
    if provider == "openai":
        return {"authorization": f"Bearer {token}", "content-type": "application/json"}
    return {
        "x-api-key": token,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }


def raw_request(
    base_url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> RawResponse:
    host, _, port = base_url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        merged: dict[str, str] = {}
        for name, value in response.getheaders():
            lowered = name.lower()
            merged[lowered] = f"{merged[lowered]}, {value}" if lowered in merged else value
        return RawResponse(response.status, merged, data)
    finally:
        conn.close()


def bridged_body(provider: str, stream: bool = False) -> bytes:
    payload = dict(OPENAI_CHAT if provider == "openai" else ANTHROPIC_MESSAGES)
    if stream:
        payload["stream"] = True
    return orjson.dumps(payload)


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """Split an SSE body into (event, data) pairs."""
    events: list[tuple[str | None, str]] = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        event: str | None = None
        data: list[str] = []
        for line in block.decode().split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        events.append((event, "\n".join(data)))
    return events
