"""The fake upstream, driven by the real ``openai`` and ``anthropic`` SDKs over loopback."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest

from aibridge.mock_upstream import (
    EMBEDDING,
    MOCK_COUNT_TOKENS,
    MOCK_USAGE,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_USE_ID,
    Behaviour,
    MockUpstream,
    mock_text,
    parse_behaviour_spec,
)
from aibridge.server_thread import ServerThread

CHUNKS = 5
OPENAI_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "read_file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}
RESPONSES_TOOL: Any = {
    "type": "function",
    "name": "read_file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
}
ANTHROPIC_TOOL: Any = {
    "name": "read_file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}
USER: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[MockUpstream, ServerThread]]:
    mock = MockUpstream(chunks=CHUNKS)
    with ServerThread(mock) as thread:
        yield mock, thread


@pytest.fixture
def mock(server: tuple[MockUpstream, ServerThread]) -> MockUpstream:
    server[0].reset()
    return server[0]


@pytest.fixture
def url(server: tuple[MockUpstream, ServerThread]) -> str:
    return server[1].url


def oai(url: str, key: str = "k-ok") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def ant(url: str, key: str = "k-ok") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def dump(model: Any) -> dict[str, Any]:
    """An SDK object as the JSON it came from (unset fields left out)."""
    out: dict[str, Any] = model.model_dump(exclude_unset=True)
    return out


# -- chat completions ---------------------------------------------------------------


def test_chat_blocking(mock: MockUpstream, url: str) -> None:
    completion = oai(url).chat.completions.create(model="gpt-test", messages=USER)
    assert completion.model == "gpt-test"
    assert completion.choices[0].message.content == mock_text(CHUNKS)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert dump(completion.usage) == MOCK_USAGE["chat"]
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 700


def test_chat_stream_without_usage(url: str) -> None:
    chunks = list(oai(url).chat.completions.create(model="gpt-test", messages=USER, stream=True))
    assert len(chunks) == CHUNKS + 2  # role chunk, content chunks, finish chunk
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == mock_text(CHUNKS)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.model == "gpt-test" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_with_usage(url: str) -> None:
    stream = oai(url).chat.completions.create(
        model="gpt-test",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) == CHUNKS + 3
    assert all(c.usage is None for c in chunks[:-1])
    assert all("usage" in c.model_fields_set for c in chunks)  # sent as null, like OpenAI
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert dump(chunks[-1].usage) == MOCK_USAGE["chat"]


def test_chat_tool_call(url: str) -> None:
    client = oai(url)
    completion = client.chat.completions.create(
        model="gpt-test",
        messages=USER,
        tools=[OPENAI_TOOL],
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.id == TOOL_CALL_ID
    assert call.function.name == "read_file"
    assert orjson.loads(call.function.arguments) == {"path": "README.md"}

    arguments: list[str] = []
    finish = None
    for chunk in client.chat.completions.create(
        model="gpt-test",
        messages=USER,
        tools=[OPENAI_TOOL],
        stream=True,
    ):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.id is not None:
                assert delta.id == TOOL_CALL_ID
                assert delta.function is not None and delta.function.name == "read_file"
            if delta.function is not None and delta.function.arguments:
                arguments.append(delta.function.arguments)
    assert len(arguments) >= 2
    assert "".join(arguments) == TOOL_ARGUMENTS
    assert finish == "tool_calls"


# -- responses ------------------------------------------------------------------------


def test_responses_blocking_and_retrieve(mock: MockUpstream, url: str) -> None:
    client = oai(url)
    response = client.responses.create(model="gpt-resp", input="hi")
    assert response.model == "gpt-resp"
    assert response.status == "completed"
    assert response.output_text == mock_text(CHUNKS)
    assert response.usage is not None
    assert dump(response.usage) == MOCK_USAGE["responses"]
    again = client.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == response.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")


def test_responses_stream(url: str) -> None:
    events = list(oai(url).responses.create(model="gpt-resp", input="hi", stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * CHUNKS,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == mock_text(CHUNKS)
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert dump(completed.response.usage) == MOCK_USAGE["responses"]
    assert completed.response.output_text == mock_text(CHUNKS)


def test_responses_stream_helper_final_response(url: str) -> None:
    with oai(url).responses.stream(model="gpt-resp", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == mock_text(CHUNKS)
    assert final.usage is not None and final.usage.input_tokens == 2100


def test_responses_tool_call(url: str) -> None:
    client = oai(url)
    response = client.responses.create(model="gpt-resp", input="hi", tools=[RESPONSES_TOOL])
    call = response.output[0]
    assert call.type == "function_call"
    assert call.name == "read_file" and call.call_id == TOOL_CALL_ID
    assert call.arguments == TOOL_ARGUMENTS

    events = list(
        client.responses.create(model="gpt-resp", input="hi", tools=[RESPONSES_TOOL], stream=True)
    )
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) >= 2 and "".join(deltas) == TOOL_ARGUMENTS
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done[0].arguments == TOOL_ARGUMENTS
    item_done = next(e for e in events if e.type == "response.output_item.done")
    assert item_done.item.type == "function_call" and item_done.item.name == "read_file"


# -- anthropic messages -----------------------------------------------------------------


def test_messages_blocking(url: str) -> None:
    message = ant(url).messages.create(model="claude-test", max_tokens=100, messages=USER)
    assert message.model == "claude-test"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text == mock_text(CHUNKS)
    assert dump(message.usage) == MOCK_USAGE["messages"]


def test_messages_stream_raw_events(url: str) -> None:
    events = list(
        ant(url).messages.create(model="claude-test", max_tokens=100, messages=USER, stream=True)
    )
    types = [e.type for e in events]  # the SDK drops ping
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * CHUNKS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert dump(start.message.usage) == MOCK_USAGE["messages_start"]
    assert dump(delta.usage) == MOCK_USAGE["messages_delta"]
    assert delta.delta.stop_reason == "end_turn"


def test_messages_stream_helper_merges_usage(url: str) -> None:
    with ant(url).messages.stream(model="claude-test", max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == mock_text(CHUNKS)
    assert final.usage.input_tokens == 900
    assert final.usage.output_tokens == 480
    assert final.usage.cache_read_input_tokens == 3200
    assert final.usage.cache_creation_input_tokens == 250
    assert final.usage.server_tool_use is not None
    assert final.usage.server_tool_use.web_search_requests == 2


def test_messages_tool_use(url: str) -> None:
    client = ant(url)
    message = client.messages.create(
        model="claude-test",
        max_tokens=100,
        messages=USER,
        tools=[ANTHROPIC_TOOL],
    )
    assert message.stop_reason == "tool_use"
    block = message.content[-1]
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == (TOOL_USE_ID, "read_file", {"path": "README.md"})

    events = list(
        client.messages.create(
            model="claude-test",
            max_tokens=100,
            messages=USER,
            tools=[ANTHROPIC_TOOL],
            stream=True,
        )
    )
    partial = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(partial) >= 2 and "".join(partial) == TOOL_ARGUMENTS

    with client.messages.stream(
        model="claude-test",
        max_tokens=100,
        messages=USER,
        tools=[ANTHROPIC_TOOL],
    ) as stream:
        final = stream.get_final_message()
    tool = final.content[-1]
    assert final.stop_reason == "tool_use"
    assert tool.type == "tool_use" and tool.input == {"path": "README.md"}


def test_count_tokens_and_beta_query(mock: MockUpstream, url: str) -> None:
    client = ant(url)
    counted = client.messages.count_tokens(model="claude-test", messages=USER)
    assert counted.input_tokens == MOCK_COUNT_TOKENS
    # Claude Code sends /v1/messages?beta=true (this SDK version's beta client does not).
    beta = httpx.post(
        f"{url}/v1/messages?beta=true",
        json={"model": "claude-test", "max_tokens": 10, "messages": USER},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    assert beta.json()["usage"] == MOCK_USAGE["messages"]
    assert mock.requests[-1].query == "beta=true"
    assert mock.requests[-1].path == "/v1/messages"


# -- models and embeddings ----------------------------------------------------------------


def test_models_in_each_shape(url: str) -> None:
    openai_models = oai(url).models.list()
    assert [m.object for m in openai_models.data] == ["model"] * len(openai_models.data)
    assert oai(url).models.retrieve("gpt-x").id == "gpt-x"
    anthropic_models = ant(url).models.list()
    assert all(m.type == "model" for m in anthropic_models.data)
    assert ant(url).models.retrieve("claude-x").id == "claude-x"


def test_embeddings_float_and_base64(url: str) -> None:
    client = oai(url)
    result = client.embeddings.create(model="emb", input=["a", "b"], encoding_format="float")
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(list(EMBEDDING))
    assert result.usage.prompt_tokens == 8
    raw = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": "emb", "input": "a", "encoding_format": "base64"},
        headers={"authorization": "Bearer k"},
    ).json()
    vector = base64.b64decode(raw["data"][0]["embedding"])
    assert struct.unpack(f"<{len(EMBEDDING)}f", vector) == pytest.approx(EMBEDDING)


# -- behaviours --------------------------------------------------------------------------

ERROR_CASES = [
    ("rate_limit", 429, 429, openai.RateLimitError, anthropic.RateLimitError, "rate_limit_error"),
    (
        "unauthorized",
        401,
        401,
        openai.AuthenticationError,
        anthropic.AuthenticationError,
        "authentication_error",
    ),
    (
        "forbidden",
        403,
        403,
        openai.PermissionDeniedError,
        anthropic.PermissionDeniedError,
        "permission_error",
    ),
    (
        "server_error",
        500,
        500,
        openai.InternalServerError,
        anthropic.InternalServerError,
        "api_error",
    ),
    (
        "overloaded",
        503,
        529,
        openai.InternalServerError,
        anthropic.OverloadedError,
        "overloaded_error",
    ),
    (
        "bad_request",
        400,
        400,
        openai.BadRequestError,
        anthropic.BadRequestError,
        "invalid_request_error",
    ),
]


@pytest.mark.parametrize(
    ("kind", "oai_status", "ant_status", "oai_exc", "ant_exc", "ant_type"), ERROR_CASES
)
@pytest.mark.parametrize("stream", [False, True])
def test_error_kinds(
    mock: MockUpstream,
    url: str,
    kind: Any,
    oai_status: int,
    ant_status: int,
    oai_exc: type[openai.APIStatusError],
    ant_exc: type[anthropic.APIStatusError],
    ant_type: str,
    stream: bool,
) -> None:
    mock.set_behaviour("bad", Behaviour(kind))
    with pytest.raises(oai_exc) as oai_info:
        oai(url, "bad").chat.completions.create(model="m", messages=USER, stream=stream)
    assert oai_info.value.status_code == oai_status
    body = oai_info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert oai_info.value.response.headers["x-request-id"].startswith("req_")

    with pytest.raises(ant_exc) as ant_info:
        ant(url, "bad").messages.create(model="m", max_tokens=5, messages=USER, stream=stream)
    assert ant_info.value.status_code == ant_status
    body = ant_info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == ant_type
    assert body["request_id"] == ant_info.value.response.headers["request-id"]
    assert ant_info.value.request_id == body["request_id"]
    assert mock.count(key="bad") == 2


def test_rate_limit_headers(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("rl", Behaviour("rate_limit", retry_after=5, retry_after_ms=1500))
    with pytest.raises(openai.RateLimitError) as oai_info:
        oai(url, "rl").chat.completions.create(model="m", messages=USER)
    headers = oai_info.value.response.headers
    assert headers["retry-after"] == "5" and headers["retry-after-ms"] == "1500"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(anthropic.RateLimitError) as ant_info:
        ant(url, "rl").messages.create(model="m", max_tokens=5, messages=USER)
    headers = ant_info.value.response.headers
    assert headers["retry-after"] == "5"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_success_carries_ratelimit_headers(url: str) -> None:
    oai_raw = oai(url).chat.completions.with_raw_response.create(model="m", messages=USER)
    assert oai_raw.headers["x-ratelimit-remaining-requests"] == "9999"
    ant_raw = ant(url).messages.with_raw_response.create(model="m", max_tokens=5, messages=USER)
    assert int(ant_raw.headers["anthropic-ratelimit-requests-remaining"]) > 0
    assert ant_raw.headers["request-id"].startswith("req_")


def test_missing_key_is_401_in_provider_shape(url: str) -> None:
    oai_body = httpx.post(f"{url}/v1/chat/completions", json={"model": "m"})
    assert oai_body.status_code == 401 and "message" in oai_body.json()["error"]
    ant_body = httpx.post(
        f"{url}/v1/messages", json={"model": "m"}, headers={"anthropic-version": "2023-06-01"}
    )
    assert ant_body.status_code == 401
    assert ant_body.json()["error"]["type"] == "authentication_error"


def test_slow_waits_before_answering(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("slow", parse_behaviour_spec("slow=slow:0.2")[1])
    started = time.perf_counter()
    oai(url, "slow").chat.completions.create(model="m", messages=USER)
    assert time.perf_counter() - started >= 0.2
    with pytest.raises(openai.APITimeoutError):
        openai.OpenAI(
            base_url=f"{url}/v1", api_key="slow", max_retries=0, timeout=0.05
        ).chat.completions.create(model="m", messages=USER)


def test_times_reverts_to_ok(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("once", Behaviour("rate_limit", times=1))
    with pytest.raises(openai.RateLimitError):
        oai(url, "once").chat.completions.create(model="m", messages=USER)
    assert oai(url, "once").chat.completions.create(model="m", messages=USER).model == "m"


def test_wildcard_behaviour(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("*", Behaviour("unauthorized"))
    mock.set_behaviour("good", Behaviour())
    with pytest.raises(anthropic.AuthenticationError):
        ant(url, "any").messages.create(model="m", max_tokens=5, messages=USER)
    assert ant(url, "good").messages.create(model="m", max_tokens=5, messages=USER).model == "m"


# -- stream faults -------------------------------------------------------------------------


def test_cut_breaks_openai_stream(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("cut", Behaviour("cut", cut_after=3))
    stream = oai(url, "cut").chat.completions.create(model="m", messages=USER, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    assert mock.stream_disconnects == 0  # the server hung up, not the client


def test_cut_breaks_anthropic_stream(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("cut", Behaviour("cut", cut_after=4))
    stream = ant(url, "cut").messages.create(model="m", max_tokens=5, messages=USER, stream=True)
    received = []
    with pytest.raises((anthropic.APIConnectionError, httpx.TransportError)):
        for event in stream:
            received.append(event.type)
    assert received == ["message_start", "content_block_start", "content_block_delta"]  # + ping


def test_cut_breaks_responses_stream(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("cut", parse_behaviour_spec("cut=cut:2")[1])
    with pytest.raises(openai.APIConnectionError):
        list(oai(url, "cut").responses.create(model="m", input="hi", stream=True))


def test_stall_then_client_disconnect_is_counted(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("stall", Behaviour("stall", cut_after=2))
    stream = oai(url, "stall").chat.completions.create(model="m", messages=USER, stream=True)
    iterator = iter(stream)
    assert next(iterator).choices[0].delta.role == "assistant"
    assert next(iterator).choices[0].delta.content == "Hello"
    assert mock.inflight == 1
    stream.close()
    assert mock.wait_disconnect(5.0)
    assert mock.stream_disconnects == 1
    assert not mock.wait_disconnect(0.01)


def test_stall_times_out_sdk(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("stall", Behaviour("stall", cut_after=1))
    client = anthropic.Anthropic(base_url=url, api_key="stall", max_retries=0, timeout=0.2)
    with pytest.raises((anthropic.APITimeoutError, httpx.TimeoutException)):
        for _ in client.messages.create(model="m", max_tokens=5, messages=USER, stream=True):
            pass
    assert mock.wait_disconnect(5.0)


def test_stream_error_event(mock: MockUpstream, url: str) -> None:
    mock.set_behaviour("err", Behaviour("stream_error", cut_after=3))
    with pytest.raises(anthropic.APIStatusError) as info:
        list(ant(url, "err").messages.create(model="m", max_tokens=5, messages=USER, stream=True))
    assert "overloaded_error" in str(info.value)
    with pytest.raises(openai.APIError):
        list(oai(url, "err").chat.completions.create(model="m", messages=USER, stream=True))


def test_paced_stream() -> None:
    mock = MockUpstream(chunks=4, chunk_delay=0.02)
    with ServerThread(mock) as thread:
        started = time.perf_counter()
        chunks = list(
            oai(thread.url).chat.completions.create(model="m", messages=USER, stream=True)
        )
        elapsed = time.perf_counter() - started
    assert len(chunks) == 6
    assert elapsed >= 0.02 * 6  # 7 frames incl. [DONE], a pause between each


# -- recording, control API, specs ------------------------------------------------------------


def test_recorded_requests(mock: MockUpstream, url: str) -> None:
    oai(url, "rec-1").chat.completions.create(model="m", messages=USER)
    ant(url, "rec-2").messages.create(model="m", max_tokens=5, messages=USER)
    first, second = mock.requests
    assert (first.method, first.path, first.key) == ("POST", "/v1/chat/completions", "rec-1")
    assert first.headers["authorization"] == "Bearer rec-1"
    assert first.json()["model"] == "m"
    assert second.key == "rec-2" and second.headers["anthropic-version"]
    assert mock.count() == 2
    assert mock.count(key="rec-1") == 1
    assert mock.count(path="/v1/messages") == 1
    assert mock.count(key="rec-1", path="/v1/messages") == 0
    assert mock.inflight == 0


def test_recording_is_bounded() -> None:
    mock = MockUpstream(chunks=1)
    with ServerThread(mock) as thread, httpx.Client(base_url=thread.url) as client:
        for _ in range(1005):
            client.get("/v1/models", headers={"authorization": "Bearer k"})
    assert len(mock.requests) == 1000
    assert mock.count() == 1005


def test_control_api(mock: MockUpstream, url: str) -> None:
    with httpx.Client(base_url=url) as client:
        posted = client.post(
            "/_mock/behaviours", json={"k9": {"kind": "rate_limit", "retry_after": 2}}
        )
        assert posted.status_code == 200
        assert posted.json()["k9"]["kind"] == "rate_limit"
        assert mock.behaviours["k9"] == Behaviour("rate_limit", retry_after=2)
        bad = client.post("/_mock/behaviours", json={"k9": {"kind": "nope"}})
        assert bad.status_code == 400
        with pytest.raises(openai.RateLimitError):
            oai(url, "k9").chat.completions.create(model="m", messages=USER)
        stats = client.get("/_mock/stats").json()
        assert stats["requests"] == 1 and stats["by_key"] == {"k9": 1}
        assert client.post("/_mock/reset").json() == {"ok": True}
        assert client.get("/_mock/stats").json()["requests"] == 0
        assert mock.behaviours == {}


@pytest.mark.parametrize(
    ("spec", "key", "behaviour"),
    [
        ("k0=rate_limit:5", "k0", Behaviour("rate_limit", retry_after=5)),
        ("k1=unauthorized", "k1", Behaviour("unauthorized")),
        ("k2=slow:0.5", "k2", Behaviour("slow", delay=0.5)),
        ("k3=cut:3", "k3", Behaviour("cut", cut_after=3)),
        ("k4=stall:7", "k4", Behaviour("stall", cut_after=7)),
        (
            "k5=rate_limit:retry_after_ms=1500,times=2",
            "k5",
            Behaviour("rate_limit", retry_after_ms=1500, times=2),
        ),
        ("*=overloaded", "*", Behaviour("overloaded")),
    ],
)
def test_parse_behaviour_spec(spec: str, key: str, behaviour: Behaviour) -> None:
    assert parse_behaviour_spec(spec) == (key, behaviour)


@pytest.mark.parametrize("spec", ["k0", "k0=", "k0=explode", "k0=rate_limit:x", "k0=ok:3", "=ok"])
def test_parse_behaviour_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_behaviour_spec(spec)


# -- ServerThread -----------------------------------------------------------------------------


def test_server_thread_lifespan_and_restart_free_port() -> None:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    thread = ServerThread(app, lifespan="on").start()
    assert thread.port > 0 and thread.url == f"http://127.0.0.1:{thread.port}"
    assert events == ["lifespan.startup"]
    thread.stop()
    assert events == ["lifespan.startup", "lifespan.shutdown"]


def test_server_thread_reports_failed_startup() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no"})

    with pytest.raises(RuntimeError, match="failed to start"):
        ServerThread(app, lifespan="on").start()
