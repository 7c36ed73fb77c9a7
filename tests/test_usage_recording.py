"""Usage recording end to end: the official SDKs -> Gateway -> MockUpstream, then the
real database (SQLite file, or PostgreSQL), read back with sqlite3 / asyncpg and
with ``aibridge usage``.

A recorder is handed every interception after the response's last byte, so each
test waits (with a deadline) until the gateway has handed over as many records as
it sent requests, then closes the recorder (which flushes) and reads the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from aibridge.app import Gateway
from aibridge.config import from_mapping
from aibridge.intercept._request import INCLUDE_USAGE
from aibridge.keypool import mask_key
from aibridge.mock_upstream import (
    MOCK_USAGE,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_USE_ID,
    Behaviour,
    MockUpstream,
)
from aibridge.recorder import Interception, Recorder, open_recorder
from aibridge.recorder.report import usage_report
from aibridge.server import build_gateway
from aibridge.server_thread import ServerThread
from gateway_support import (
    CLIENT_KEY,
    GATEWAY_TOKEN,
    KEYS,
    anthropic_client,
    gateway_config,
    mock,
    openai_client,
    raw_request,
    upstream_server,
    upstream_url,
)
from pg_support import PG_URL, fetch, pg_schema, with_search_path

__all__ = ["mock", "upstream_server", "upstream_url"]

K0, K1 = KEYS[:2]
BOB_TOKEN = "aibridge-token-bob-fedcba9876543210ab"
SECRETS = (*KEYS, GATEWAY_TOKEN, BOB_TOKEN, CLIENT_KEY)
AUTH = {"tokens": [{"user": "alice", "token": GATEWAY_TOKEN}, {"user": "bob", "token": BOB_TOKEN}]}
REQUEST_ID = "x-aibridge-request-id"

APIS = ("chat", "responses", "messages")
PROVIDER_OF = {"chat": "openai", "responses": "openai", "messages": "anthropic"}
MODEL_OF = {"chat": "gpt-test", "responses": "gpt-test", "messages": "claude-test"}
apis = pytest.mark.parametrize("api", APIS)
modes = pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])


# -- the spec's normalisation, written out independently of the code under test -------


def expected_tokens(api: str) -> dict[str, Any]:
    """(input, output, cache_read, cache_write, extra) for MOCK_USAGE, per the spec."""
    if api == "chat":
        u = MOCK_USAGE["chat"]
        cached = u["prompt_tokens_details"]["cached_tokens"]
        done = u["completion_tokens_details"]
        return {
            "input": u["prompt_tokens"] - cached,
            "output": u["completion_tokens"],
            "cache_read": cached,
            "cache_write": 0,
            "extra": {
                "reasoning_tokens": done["reasoning_tokens"],
                "audio_tokens": done["audio_tokens"],
                "accepted_prediction_tokens": done["accepted_prediction_tokens"],
                "rejected_prediction_tokens": done["rejected_prediction_tokens"],
                "input_audio_tokens": u["prompt_tokens_details"]["audio_tokens"],
            },
        }
    if api == "responses":
        u = MOCK_USAGE["responses"]
        cached = u["input_tokens_details"]["cached_tokens"]
        return {
            "input": u["input_tokens"] - cached,
            "output": u["output_tokens"],
            "cache_read": cached,
            "cache_write": 0,
            "extra": {"reasoning_tokens": u["output_tokens_details"]["reasoning_tokens"]},
        }
    u = MOCK_USAGE["messages"]
    return {
        "input": u["input_tokens"],
        "output": u["output_tokens"],
        "cache_read": u["cache_read_input_tokens"],
        "cache_write": u["cache_creation_input_tokens"],
        "extra": {
            "ephemeral_5m_input_tokens": u["cache_creation"]["ephemeral_5m_input_tokens"],
            "ephemeral_1h_input_tokens": u["cache_creation"]["ephemeral_1h_input_tokens"],
            "web_search_requests": u["server_tool_use"]["web_search_requests"],
        },
    }


# -- a gateway whose recorder we can wait on ------------------------------------------


class CountingRecorder:
    """Delegates to the real recorder; lets a test wait until N records were handed over."""

    def __init__(self, inner: Recorder) -> None:
        self.inner = inner
        self.count = 0
        self._cond = threading.Condition()

    def record(self, interception: Interception) -> None:
        self.inner.record(interception)
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.inner.close(timeout)

    def stats(self) -> dict[str, int]:
        return self.inner.stats()


@dataclass
class RecordingGateway:
    url: str
    gateway: Gateway
    recorder: CountingRecorder
    database: str  # the URL
    db_path: Path | None  # SQLite only
    thread: ServerThread
    spool: Path

    def wait_records(self, n: int) -> None:
        assert self.recorder.wait_for(n), f"only {self.recorder.count} of {n} records handed over"
        self.recorder.close()
        assert self.recorder.count == n, "more interceptions recorded than requests sent"
        stats = self.recorder.stats()
        assert stats["written"] == n, stats
        assert stats["spooled"] == 0 and stats["dropped"] == 0, stats

    def rows(self, n: int) -> list[Row]:
        """Wait for ``n`` records, flush, and read every interception back from SQLite."""
        self.wait_records(n)
        assert self.db_path is not None
        found = read_sqlite(self.db_path)
        assert len(found) == n
        return found


@dataclass
class Row:
    """One interception with its children, as read back from the database."""

    fields: dict[str, Any]
    usage: dict[str, Any] | None
    prompt: str | None
    tools: list[dict[str, Any]] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


def _assemble(
    inter: list[dict[str, Any]],
    usages: list[dict[str, Any]],
    prompts: list[dict[str, Any]],
    tools: list[dict[str, Any]],
) -> list[Row]:
    by_usage = {u["interception_id"]: u for u in usages}
    by_prompt = {p["interception_id"]: p["prompt"] for p in prompts}
    out: list[Row] = []
    for i in inter:
        u = by_usage.get(i["id"])
        usage = None
        if u is not None:
            usage = {k: u[k] for k in ("input", "output", "cache_read", "cache_write")}
            usage["extra"] = json.loads(u["extra"])
        calls = sorted(
            (t for t in tools if t["interception_id"] == i["id"]), key=lambda t: t["seq"]
        )
        out.append(Row(i, usage, by_prompt.get(i["id"]), calls))
    return out


def read_sqlite(path: Path) -> list[Row]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:

        def table(sql: str) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(sql).fetchall()]

        return _assemble(
            table("SELECT * FROM interceptions ORDER BY started_at"),
            table("SELECT * FROM token_usages"),
            table("SELECT * FROM user_prompts"),
            table("SELECT * FROM tool_usages"),
        )
    finally:
        conn.close()


def by_id(rows: list[Row]) -> dict[str, Row]:
    return {r["id"]: r for r in rows}


@pytest.fixture
def start_recording(tmp_path: Path) -> Iterator[Any]:
    """Start a Gateway with a real SQLite recorder (``database: sqlite:///<tmp>/u.db``)."""
    threads: list[ServerThread] = []

    def start(config: Mapping[str, Any], database: str | None = None) -> RecordingGateway:
        db_path = tmp_path / "u.db"
        url = database or f"sqlite:///{db_path}"
        spool = tmp_path / "spool.jsonl"
        cfg = from_mapping({**config, "database": url, "spool": str(spool)})
        assert cfg.database == url
        recorder = CountingRecorder(open_recorder(cfg.database, spool_path=cfg.spool))
        gateway = Gateway(cfg, recorder=recorder)
        thread = ServerThread(gateway, ws="none", lifespan="on")
        thread.start()
        threads.append(thread)
        sqlite_path = db_path if database is None else None
        return RecordingGateway(thread.url, gateway, recorder, url, sqlite_path, thread, spool)

    yield start
    for thread in reversed(threads):
        thread.stop()


@pytest.fixture
def rec(mock: MockUpstream, upstream_url: str, start_recording: Any) -> RecordingGateway:
    """Both providers, two pool keys each, an auth block with alice and bob."""
    gw: RecordingGateway = start_recording(gateway_config(upstream_url, auth=AUTH))
    return gw


# -- driving each API through its official SDK ----------------------------------------

CHAT_TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}
RESPONSES_TOOL = {
    "type": "function",
    "name": "read_file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
}
MESSAGES_TOOL = {
    "name": "read_file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}


@dataclass
class Sent:
    request_id: str
    attempts: str
    events: list[Any]  # stream chunks/events as the SDK parsed them (or [the body])


def drive(
    url: str,
    api: str,
    *,
    stream: bool,
    token: str = GATEWAY_TOKEN,
    headers: Mapping[str, str] | None = None,
    tools: bool = False,
    content: Any = "hello there",
    extra: Mapping[str, Any] | None = None,
) -> Sent:
    """One request through the gateway with the official SDK; the whole response read."""
    kwargs: dict[str, Any] = {"extra_headers": dict(headers or {}), **(extra or {})}
    if stream:
        kwargs["stream"] = True
    if api == "messages":
        ac = anthropic_client(url, token)
        kwargs.update(
            model=MODEL_OF[api],
            max_tokens=16,
            messages=[{"role": "user", "content": content}],
        )
        if tools:
            kwargs["tools"] = [MESSAGES_TOOL]
        with ac:
            raw: Any = ac.messages.with_raw_response.create(**kwargs)
            parsed = raw.parse()
            events = list(parsed) if stream else [parsed]
    else:
        oc = openai_client(url, token)
        with oc:
            if api == "chat":
                kwargs.update(model=MODEL_OF[api], messages=[{"role": "user", "content": content}])
                if tools:
                    kwargs["tools"] = [CHAT_TOOL]
                raw = oc.chat.completions.with_raw_response.create(**kwargs)
            else:
                kwargs.update(model=MODEL_OF[api], input=content)
                if tools:
                    kwargs["tools"] = [RESPONSES_TOOL]
                raw = oc.responses.with_raw_response.create(**kwargs)
            parsed = raw.parse()
            events = list(parsed) if stream else [parsed]
    return Sent(raw.headers[REQUEST_ID], raw.headers["x-aibridge-attempts"], events)


# -- token counts ---------------------------------------------------------------------


@apis
@modes
def test_token_usage_is_recorded_normalised(
    rec: RecordingGateway, mock: MockUpstream, api: str, stream: bool
) -> None:
    sent = drive(rec.url, api, stream=stream)
    (row,) = rec.rows(1)
    assert row["id"] == sent.request_id
    assert row.usage == expected_tokens(api)
    provider = PROVIDER_OF[api]
    assert row["provider"] == provider
    assert row["provider_type"] == provider
    assert row["model"] == MODEL_OF[api]
    assert row["route"] == api
    assert bool(row["streaming"]) is stream
    assert row["client"] == ("anthropic-python" if api == "messages" else "openai-python")
    assert row["user_id"] == "alice"
    assert row["credential"] == "pool"
    assert row["key_hint"] == mask_key(K0)
    assert row["attempts"] == 1
    assert row["status"] == 200
    assert row["error_type"] is None and row["error_message"] is None
    assert row.prompt == "hello there"
    assert row.tools == []
    assert row["started_at"] <= row["ended_at"]


# -- chat streams: the injected include_usage ----------------------------------------


def test_chat_stream_gets_include_usage_injected_and_the_usage_chunk_stripped(
    rec: RecordingGateway, mock: MockUpstream, upstream_url: str
) -> None:
    # What the SDK sends for this call, taken straight from the mock (no gateway).
    import openai

    with openai.OpenAI(base_url=upstream_url + "/v1", api_key=K0, max_retries=0) as direct:
        list(
            direct.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    client_body = mock.requests[-1].body
    assert b"stream_options" not in client_body
    mock.reset()

    sent = drive(rec.url, "chat", stream=True, content="hi")
    upstream = mock.requests[-1]
    assert upstream.json()["stream_options"] == {"include_usage": True}
    # Only the insertion; every other byte is the client's.
    assert upstream.body.replace(INCLUDE_USAGE, b"", 1) == client_body
    assert upstream.body.count(b"stream_options") == 1

    chunks = sent.events
    assert len(chunks) == mock.payloads.chunks + 2  # role, the text deltas, finish
    assert not [c for c in chunks if not c.choices], "the client got a usage-only chunk"
    assert all(c.usage is None for c in chunks)
    (row,) = rec.rows(1)
    assert row.usage == expected_tokens("chat")


def test_chat_stream_client_asking_for_usage_gets_its_usage_chunk(
    rec: RecordingGateway, mock: MockUpstream
) -> None:
    sent = drive(rec.url, "chat", stream=True, extra={"stream_options": {"include_usage": True}})
    upstream = mock.requests[-1]
    assert upstream.body.count(b"stream_options") == 1
    assert INCLUDE_USAGE not in upstream.body  # the client's own member, not ours
    usage_chunks = [c for c in sent.events if not c.choices and c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].usage.model_dump(exclude_none=True) == MOCK_USAGE["chat"]
    (row,) = rec.rows(1)
    assert row.usage == expected_tokens("chat")


def test_chat_stream_raw_bytes_are_relayed_with_only_the_insertion(
    rec: RecordingGateway, mock: MockUpstream
) -> None:
    # Odd spacing, unknown fields, zero values: nothing is re-serialised.
    body = (
        b'  {"model" : "gpt-test",  "stream":true, "x_unknown": {"a": [1, 0.0, null]},\n'
        b' "temperature": 0, "messages": [{"role": "user", "content": "caf\\u00e9 \xe2\x9c\x93"}]}'
    )
    headers = {"authorization": f"Bearer {GATEWAY_TOKEN}", "content-type": "application/json"}
    response = raw_request(rec.url, "POST", "/openai/v1/chat/completions", body, headers)
    assert response.status == 200
    sent = mock.requests[-1].body
    at = body.index(b"{") + 1
    assert sent == body[:at] + INCLUDE_USAGE + body[at:]
    assert b'"usage":{' not in response.body  # the usage chunk we asked for is not relayed
    assert response.body.rstrip().endswith(b"data: [DONE]")
    (row,) = rec.rows(1)
    assert row["id"] == response.headers[REQUEST_ID]
    assert row.usage == expected_tokens("chat")
    assert row.prompt == "café ✓"


# -- who, how, with what ---------------------------------------------------------------


CLAUDE_UA = "claude-cli/2.0.1 (external, cli)"
CODEX_UA = "codex_cli_rs/0.50.0 (Mac OS 15.0; arm64) iTerm.app"


def test_interception_rows_identify_user_client_session_and_credential(
    rec: RecordingGateway, mock: MockUpstream
) -> None:
    sent = {
        "claude": drive(
            rec.url,
            "messages",
            stream=True,
            token=BOB_TOKEN,
            headers={"User-Agent": CLAUDE_UA, "X-Claude-Code-Session-Id": "sess-claude-1"},
        ),
        "codex": drive(
            rec.url,
            "responses",
            stream=True,
            headers={"User-Agent": CODEX_UA, "session_id": "sess-codex-2"},
        ),
        "cursor": drive(
            rec.url, "chat", stream=False, headers={"x-cursor-client-version": "1.7.3"}
        ),
        "sdk": drive(rec.url, "chat", stream=False, token=BOB_TOKEN),
        # BYOK: the gateway token names the user, the client's key goes upstream.
        "byok": drive(
            rec.url,
            "messages",
            stream=False,
            token=CLIENT_KEY,
            headers={"x-aibridge-token": GATEWAY_TOKEN},
        ),
    }
    assert mock.requests[-1].key == CLIENT_KEY
    rows = by_id(rec.rows(len(sent)))
    expect = {
        "claude": ("bob", "claude-code", "sess-claude-1", "pool", mask_key(K0), CLAUDE_UA),
        "codex": ("alice", "codex", "sess-codex-2", "pool", mask_key(K0), CODEX_UA),
        "cursor": ("alice", "cursor", None, "pool", mask_key(K0), None),
        "sdk": ("bob", "openai-python", None, "pool", mask_key(K0), None),
        "byok": ("alice", "anthropic-python", None, "byok", mask_key(CLIENT_KEY), None),
    }
    for name, (user, client, session, credential, hint, agent) in expect.items():
        row = rows[sent[name].request_id]
        got = (row["user_id"], row["client"], row["session_id"], row["credential"])
        assert got == (user, client, session, credential), name
        assert row["key_hint"] == hint, name
        if agent is not None:
            assert row["user_agent"] == agent
        else:
            assert row["user_agent"].lower().startswith(("openai/python", "anthropic/python"))
        assert row["status"] == 200 and row["error_type"] is None, name
    assert_no_secrets_in(rec)


def assert_no_secrets_in(rec: RecordingGateway) -> None:
    assert rec.db_path is not None
    files = [p for p in rec.db_path.parent.iterdir() if p.name.startswith(rec.db_path.name)]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"a secret is stored in {path.name}"


def test_failover_records_two_attempts_and_the_answering_keys_hint(
    rec: RecordingGateway, mock: MockUpstream
) -> None:
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    sent = drive(rec.url, "messages", stream=True)
    assert sent.attempts == "2"
    (row,) = rec.rows(1)
    assert row["attempts"] == 2
    assert row["key_hint"] == mask_key(K1)
    assert row["status"] == 200 and row["error_type"] is None
    assert row.usage == expected_tokens("messages")


# -- errors -----------------------------------------------------------------------------


def sdk_error(call: Any) -> Any:
    import anthropic
    import openai

    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as info:
        call()
    return info.value


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_error_types_are_recorded(rec: RecordingGateway, mock: MockUpstream, api: str) -> None:
    ids: dict[str, str] = {}
    # A relayed 400, with a message far longer than 1 KiB (and multi-byte characters).
    mock.set_behaviour("*", Behaviour("bad_request", message="é" * 3000))
    err = sdk_error(lambda: drive(rec.url, api, stream=False))
    ids["bad_request"] = err.response.headers[REQUEST_ID]
    # A 500 from the upstream is relayed (no failover).
    mock.set_behaviour("*", Behaviour("server_error"))
    err = sdk_error(lambda: drive(rec.url, api, stream=True))
    ids["server_error"] = err.response.headers[REQUEST_ID]
    # Every key rate-limited: the pool is exhausted.
    mock.set_behaviour("*", Behaviour("rate_limit", retry_after=30))
    err = sdk_error(lambda: drive(rec.url, api, stream=False))
    assert err.status_code == 429
    ids["rate_limited"] = err.response.headers[REQUEST_ID]

    rows = by_id(rec.rows(3))
    bad = rows[ids["bad_request"]]
    assert (bad["status"], bad["error_type"], bad["attempts"]) == (400, "bad_request", 1)
    assert "éé" in bad["error_message"]
    assert len(bad["error_message"].encode()) <= 1024
    assert bad["key_hint"] == mask_key(K0)
    server = rows[ids["server_error"]]
    assert (server["status"], server["error_type"], server["attempts"]) == (500, "server_error", 1)
    assert bool(server["streaming"]) is True
    assert server["error_message"]
    limited = rows[ids["rate_limited"]]
    assert (limited["status"], limited["error_type"]) == (429, "rate_limited")
    assert limited["attempts"] == 2
    assert limited["key_hint"] is None  # no key answered
    assert "rate-limited" in limited["error_message"]
    for row in rows.values():
        assert row.usage is None
        assert row.prompt == "hello there"  # the request was read before it failed


def test_a_request_refused_as_bad_json_is_recorded(rec: RecordingGateway) -> None:
    """Refused before any key was spent, but still the user's interception."""
    response = raw_request(
        rec.url,
        "POST",
        "/openai/v1/chat/completions",
        body=b'{"model": "gpt-4o", "messages": [',
        headers={
            "authorization": f"Bearer {GATEWAY_TOKEN}",
            "content-type": "application/json",
            "user-agent": "claude-cli/2.0.1 (external, cli)",
        },
    )
    assert response.status == 400
    row = by_id(rec.rows(1))[response.headers[REQUEST_ID]]
    assert (row["status"], row["error_type"], row["attempts"]) == (400, "bad_request", 0)
    assert row["user_id"] == "alice"
    assert row["client"] == "claude-code"
    assert row["key_hint"] is None
    assert row["error_message"]


# -- prompts and tools ----------------------------------------------------------------


def content_list(api: str) -> list[dict[str, Any]]:
    text_type = "input_text" if api == "responses" else "text"
    parts: list[dict[str, Any]] = [
        {"type": text_type, "text": "first part"},
        {"type": text_type, "text": "the last text part"},
    ]
    if api == "chat":
        parts.append({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
    elif api == "messages":
        parts.append(
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
        )
    return parts


@apis
@modes
def test_prompt_and_tool_calls_are_recorded(
    rec: RecordingGateway, mock: MockUpstream, api: str, stream: bool
) -> None:
    if api == "responses":
        content: Any = [{"role": "user", "content": content_list(api)}]
        sent = drive(rec.url, api, stream=stream, tools=True, content=content)
    else:
        sent = drive(rec.url, api, stream=stream, tools=True, content=content_list(api))
    (row,) = rec.rows(1)
    assert row["id"] == sent.request_id
    assert row.prompt == "the last text part"
    assert len(row.tools) == 1
    call = row.tools[0]
    assert call["name"] == "read_file"
    assert call["call_id"] == (TOOL_USE_ID if api == "messages" else TOOL_CALL_ID)
    assert orjson.loads(call["arguments"]) == orjson.loads(TOOL_ARGUMENTS)
    if stream or api != "messages":
        assert call["arguments"] == TOOL_ARGUMENTS  # as the upstream sent it
    assert row.usage == expected_tokens(api)


# -- a stream the client abandons -----------------------------------------------------


@apis
def test_cancelled_stream_is_recorded_as_client_closed(
    rec: RecordingGateway, mock: MockUpstream, api: str
) -> None:
    # The upstream sends three frames and then nothing until the client goes away.
    mock.set_behaviour(K0, Behaviour("stall", cut_after=3))
    read: list[Any] = []
    if api == "messages":
        ac = anthropic_client(rec.url, GATEWAY_TOKEN)
        with ac:
            raw: Any = ac.messages.with_raw_response.create(
                model="claude-test",
                max_tokens=16,
                messages=[{"role": "user", "content": "stop me"}],
                stream=True,
            )
            stream = raw.parse()
            for event in stream:
                read.append(event)
                if len(read) == 2:
                    break
            stream.close()
    else:
        oc = openai_client(rec.url, GATEWAY_TOKEN)
        with oc:
            if api == "chat":
                raw = oc.chat.completions.with_raw_response.create(
                    model="gpt-test", messages=[{"role": "user", "content": "stop me"}], stream=True
                )
            else:
                raw = oc.responses.with_raw_response.create(
                    model="gpt-test", input="stop me", stream=True
                )
            stream = raw.parse()
            for event in stream:
                read.append(event)
                if len(read) == 2:
                    break
            stream.close()
    assert len(read) == 2
    assert mock.wait_disconnect(5.0)
    (row,) = rec.rows(1)
    assert row["id"] == raw.headers[REQUEST_ID]
    assert row["error_type"] == "client_closed"
    assert row["status"] == 200  # committed: the client had the status line
    assert row["key_hint"] == mask_key(K0)
    assert row.prompt == "stop me"
    if api == "messages":
        # message_start carried the input side; output is what was seen so far.
        start = MOCK_USAGE["messages_start"]
        assert row.usage == {
            "input": start["input_tokens"],
            "output": start["output_tokens"],
            "cache_read": start["cache_read_input_tokens"],
            "cache_write": start["cache_creation_input_tokens"],
            "extra": {
                "ephemeral_5m_input_tokens": start["cache_creation"]["ephemeral_5m_input_tokens"],
                "ephemeral_1h_input_tokens": start["cache_creation"]["ephemeral_1h_input_tokens"],
            },
        }
    else:
        assert row.usage is None  # OpenAI reports usage only at the end


# -- aibridge usage --------------------------------------------------------------------


def aibridge_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("aibridge")
    assert exe.exists(), f"console script missing next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "AIBRIDGE_DATABASE"}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def test_usage_command_reports_what_was_sent(rec: RecordingGateway, mock: MockUpstream) -> None:
    drive(rec.url, "chat", stream=False)
    drive(rec.url, "chat", stream=True)
    drive(rec.url, "messages", stream=True, token=BOB_TOKEN)
    mock.set_behaviour("*", Behaviour("server_error"))
    sdk_error(lambda: drive(rec.url, "responses", stream=False, token=BOB_TOKEN))
    rec.wait_records(4)

    chat, messages = expected_tokens("chat"), expected_tokens("messages")
    tokens = ("input", "output", "cache_read", "cache_write")
    want_user = [
        {"user": "alice", "requests": 2, "errors": 0, **{t: 2 * chat[t] for t in tokens}},
        {"user": "bob", "requests": 2, "errors": 1, **{t: messages[t] for t in tokens}},
    ]
    result = aibridge_cli("usage", "--json", "--since", "all", "--database", rec.database)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == want_user
    assert usage_report(rec.database, None, "user") == want_user

    result = aibridge_cli("usage", "--json", "--by", "model", "--database", rec.database)
    assert result.returncode == 0, result.stderr
    by_model = {r["model"]: r for r in json.loads(result.stdout)}
    assert by_model["gpt-test"]["requests"] == 3 and by_model["gpt-test"]["errors"] == 1
    assert by_model["claude-test"]["output"] == messages["output"]

    result = aibridge_cli("usage", "--json", "--by", "key", "--database", rec.database)
    assert result.returncode == 0, result.stderr
    by_key = {r["key"]: r["requests"] for r in json.loads(result.stdout)}
    assert by_key == {mask_key(K0): 4}
    for secret in SECRETS:
        assert secret not in result.stdout


# -- PostgreSQL -------------------------------------------------------------------------


def test_postgres_records_the_same_rows(
    mock: MockUpstream, upstream_url: str, tmp_path: Path
) -> None:
    with pg_schema() as schema:
        url = with_search_path(PG_URL, schema)
        cfg = from_mapping(
            {
                **gateway_config(upstream_url, auth=AUTH),
                "database": url,
                "spool": str(tmp_path / "pg-spool.jsonl"),
            }
        )
        gateway = build_gateway(cfg)  # the gateway builds its own recorder from the config
        counting = CountingRecorder(gateway.recorder)
        gateway.recorder = counting
        with ServerThread(gateway, ws="none", lifespan="on") as server:
            chat = drive(server.url, "chat", stream=True, tools=True)
            messages = drive(server.url, "messages", stream=False, token=BOB_TOKEN)
            assert counting.wait_for(2)
        counting.close()
        assert counting.stats()["written"] == 2, counting.stats()

        def table(sql: str) -> list[dict[str, Any]]:
            conn_rows = asyncio.run(_fetch_dicts(url, sql))
            return conn_rows

        rows = by_id(
            _assemble(
                table("SELECT * FROM interceptions"),
                table("SELECT * FROM token_usages"),
                table("SELECT * FROM user_prompts"),
                table("SELECT * FROM tool_usages"),
            )
        )
        assert set(rows) == {chat.request_id, messages.request_id}
        c, m = rows[chat.request_id], rows[messages.request_id]
        assert (c["user_id"], c["route"], c["streaming"], c["client"]) == (
            "alice",
            "chat",
            True,
            "openai-python",
        )
        assert c.usage == expected_tokens("chat")
        assert [(t["name"], t["call_id"], t["arguments"]) for t in c.tools] == [
            ("read_file", TOOL_CALL_ID, TOOL_ARGUMENTS)
        ]
        assert (m["user_id"], m["route"], m["streaming"]) == ("bob", "messages", False)
        assert m.usage == expected_tokens("messages")
        assert m["key_hint"] == mask_key(K0)
        assert m.prompt == "hello there"
        report = usage_report(url, None, "user")
        assert [(r["user"], r["requests"], r["input"]) for r in report] == [
            ("alice", 1, expected_tokens("chat")["input"]),
            ("bob", 1, expected_tokens("messages")["input"]),
        ]
        dump = repr(asyncio.run(fetch(url, "SELECT * FROM interceptions")))
        for secret in SECRETS:
            assert secret not in dump


async def _fetch_dicts(url: str, sql: str) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


@apis
@pytest.mark.parametrize("fault", ["stream_error", "cut"])
def test_broken_stream_is_recorded_as_server_error(
    rec: RecordingGateway, mock: MockUpstream, api: str, fault: str
) -> None:
    import anthropic
    import openai

    mock.set_behaviour(K0, Behaviour(fault, cut_after=3))  # type: ignore[arg-type]
    with pytest.raises((openai.APIError, anthropic.APIError)):
        drive(rec.url, api, stream=True)
    (row,) = rec.rows(1)
    assert row["status"] == 200
    assert row["error_type"] == "server_error"
    assert row["error_message"]
    assert len(row["error_message"].encode()) <= 1024
    assert row["attempts"] == 1 and row["key_hint"] == mask_key(K0)
    if api == "messages":
        assert row.usage is not None
        assert row.usage["input"] == MOCK_USAGE["messages_start"]["input_tokens"]
    else:
        assert row.usage is None
