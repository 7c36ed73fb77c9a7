"""Observers against broken, hostile and oversized upstream data: never raise, stay bounded."""

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aibridge.intercept import Observer, _blocking, response_observer
from aibridge.intercept._limits import MAX_HELD_EVENT, MAX_TOOL_ARGS, MAX_TOOL_CALLS
from aibridge.intercept._sse import StreamObserver, last_boundary_end
from aibridge.recorder.records import TokenUsage

APIS = ["chat", "responses", "messages"]


def relay(observer: Observer, chunks: list[bytes]) -> bytes:
    return b"".join([observer.feed(chunk) for chunk in chunks]) + observer.close()


# -- the splitter -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"", 0),
        (b"data: x\n", 0),
        (b"data: x\n\n", 9),
        (b"data: x\r\n\r\n", 11),
        (b"data: x\r\r", 9),
        (b"data: x\n\ndata: y\r\n\r\ndata: z", 20),
        (b"data: x\r\n\r", 0),
    ],
)
def test_last_boundary_end(data: bytes, end: int) -> None:
    assert last_boundary_end(data) == end


def test_complete_events_are_forwarded_at_once_and_partials_held() -> None:
    observer = response_observer("chat", stream=True)
    assert observer.feed(b'data: {}\n\ndata: {"a') == b"data: {}\n\n"
    assert observer.feed(b'":1}\n') == b""
    assert observer.feed(b"\n") == b'data: {"a":1}\n\n'
    assert observer.feed(b"data: [DO") == b""
    assert observer.close() == b"data: [DO"


def test_a_last_event_without_blank_line_is_forwarded_and_observed() -> None:
    observer = response_observer("chat", stream=True, strip_usage_chunk=True)
    tail = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n'
    assert observer.feed(tail) == b""
    assert observer.close() == tail  # never dropped: it was not a complete event
    assert observer.usage == TokenUsage(input=3, output=2)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False])
@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes_never_raise_and_pass_unchanged(
    api: str, stream: bool, chunks: list[bytes]
) -> None:
    observer = response_observer(api, stream)
    assert relay(observer, chunks) == b"".join(chunks)


_EVENT_NAMES = [
    b"message_start",
    b"message_delta",
    b"message_stop",
    b"content_block_start",
    b"content_block_delta",
    b"error",
    b"response.completed",
    b"response.failed",
    b"response.output_item.done",
]
_PAYLOADS = [
    b"{",
    b"[]",
    b"null",
    b'"usage":{',
    b'{"usage":{"prompt_tokens":"x","input_tokens":null}}',
    b'{"usage":[1]}',
    b'{"choices":[{"delta":{"tool_calls":[null,{"index":[1]},{"function":"f"}]}}]}',
    b'{"choices":"x","usage":{"prompt_tokens":1e400}}',
    b'{"type":"message_start","message":{"usage":"x"}}',
    b'{"type":"message_start","message":[]}',
    b'{"type":"content_block_start","index":{},"content_block":{"type":"tool_use"}}',
    b'{"type":"content_block_delta","index":[],"delta":{"type":"input_json_delta"}}',
    b'{"type":"error","error":null}',
    b'{"response":{"usage":{"input_tokens":true},"output":[null,{"type":"function_call"}]}}',
    b'{"item":{"type":"function_call","arguments":5}}',
    b'{"error":{"message":{"nested":1}}}',
]


@pytest.mark.parametrize("api", APIS)
@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from([b"", *_EVENT_NAMES]), st.sampled_from(_PAYLOADS)), max_size=12
    ),
    strip=st.booleans(),
)
def test_malformed_events_never_raise(
    api: str, events: list[tuple[bytes, bytes]], strip: bool
) -> None:
    data = b"".join(
        (b"event: " + name + b"\n" if name else b"") + b"data: " + payload + b"\n\n"
        for name, payload in events
    )
    observer = response_observer(api, stream=True, strip_usage_chunk=strip and api == "chat")
    out = relay(observer, [data])
    if not strip:
        assert out == data
    assert isinstance(observer.tool_calls, list)
    observer.usage  # noqa: B018 - reading must not raise either


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("body", [b"", b"<html>502 Bad Gateway</html>", b"[]", b'{"usage": 5}'])
def test_odd_blocking_bodies_yield_nothing(api: str, body: bytes) -> None:
    observer = response_observer(api, stream=False)
    assert relay(observer, [body]) == body
    assert observer.usage is None
    assert observer.tool_calls == []


# -- bounds -------------------------------------------------------------------------


def test_an_oversized_partial_event_is_flushed_unparsed() -> None:
    observer = response_observer("chat", stream=True)
    big = b'data: {"choices":[{"delta":{"content":"' + b"x" * (MAX_HELD_EVENT + 10)
    out = observer.feed(big)
    assert out == big  # held no longer than the cap
    assert isinstance(observer, StreamObserver)
    more = b"y" * 1000 + b'"}}]}\n'
    assert observer.feed(more) == more
    # The boundary straddles two chunks; what follows it is parsed again.
    rest = b'\ndata: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}}\n\n'
    assert observer.feed(rest) == rest
    assert observer.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert observer.close() == b""
    assert observer.usage == TokenUsage(input=7, output=1)
    assert observer.complete


def test_oversized_responses_completed_event_still_yields_usage() -> None:
    # A response with a generated image: response.completed repeats it, far past the cap.
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "output": [{"type": "image_generation_call", "result": "A" * (2 * MAX_HELD_EVENT)}],
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1056,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1106,
        },
    }
    data = (
        b"event: response.completed\ndata: "
        + orjson.dumps({"type": "response.completed", "sequence_number": 9, "response": response})
        + b"\n\n"
    )
    observer = response_observer("responses", stream=True)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    outs = [observer.feed(chunk) for chunk in chunks]
    assert max(len(o) for o in outs) <= MAX_HELD_EVENT + 65536 * 2
    assert b"".join(outs) + observer.close() == data
    assert observer.complete
    assert observer.usage == TokenUsage(input=50, output=1056)


def test_oversized_blocking_body_keeps_only_its_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_blocking, "MAX_BLOCKING_BODY", 4096)
    body = orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "content": [{"type": "text", "text": "z" * 20000}],
            "usage": {"input_tokens": 9, "cache_read_input_tokens": 4, "output_tokens": 5000},
        }
    )
    observer = response_observer("messages", stream=False)
    assert relay(observer, [body[i : i + 1000] for i in range(0, len(body), 1000)]) == body
    assert observer.usage == TokenUsage(input=9, output=5000, cache_read=4)
    assert observer.complete is False  # the body itself was never parsed


def _chat_tool_deltas(calls: int, args: str) -> bytes:
    events = []
    for i in range(calls):
        delta = {"tool_calls": [{"index": i, "id": f"call_{i}", "function": {"name": "f"}}]}
        events.append({"choices": [{"index": 0, "delta": delta}]})
        for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
            delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
            events.append({"choices": [{"index": 0, "delta": delta}]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)


def test_tool_calls_are_capped_in_number_and_size() -> None:
    observer = response_observer("chat", stream=True)
    relay(observer, [_chat_tool_deltas(MAX_TOOL_CALLS + 20, "{}")])
    assert len(observer.tool_calls) == MAX_TOOL_CALLS
    assert observer.tool_calls[-1].call_id == f"call_{MAX_TOOL_CALLS - 1}"

    observer = response_observer("chat", stream=True)
    relay(observer, [_chat_tool_deltas(1, "é" * MAX_TOOL_ARGS)])
    (call,) = observer.tool_calls
    assert len(call.arguments.encode()) == MAX_TOOL_ARGS


def test_anthropic_tool_args_capped() -> None:
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "big", "input": {}},
    }
    piece = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": "a" * 50000},
    }
    data = b"event: content_block_start\ndata: " + orjson.dumps(start) + b"\n\n"
    data += (b"event: content_block_delta\ndata: " + orjson.dumps(piece) + b"\n\n") * 3
    observer = response_observer("messages", stream=True)
    relay(observer, [data])
    assert len(observer.tool_calls[0].arguments) == MAX_TOOL_ARGS


# -- compatible servers ----------------------------------------------------------------


def test_anthropic_stream_without_event_lines() -> None:
    data = (
        b'data: {"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}'
        b'\n\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":"hi"}}\n\ndata: {"type":"message_delta","delta":{},"usage":{"output_tokens":3}}'
        b'\n\ndata: {"type":"message_stop"}\n\n'
    )
    observer = response_observer("messages", stream=True)
    assert relay(observer, [data]) == data
    assert observer.usage == TokenUsage(input=10, output=3)
    assert observer.complete


def test_responses_error_event() -> None:
    data = (
        b"event: error\ndata: "
        b'{"type":"error","code":"rate_limit_exceeded","message":"Slow down","param":null,'
        b'"sequence_number":3}\n\n'
    )
    observer = response_observer("responses", stream=True)
    assert relay(observer, [data]) == data
    assert observer.error == "rate_limit_exceeded: Slow down"
    assert not observer.complete


def test_error_message_is_bounded() -> None:
    data = b'event: error\ndata: {"type":"error","error":{"type":"x","message":"' + b"m" * 5000
    data += b'"}}\n\n'
    observer = response_observer("messages", stream=True)
    relay(observer, [data])
    assert observer.error is not None and len(observer.error.encode()) <= 1024


def test_chat_tool_call_split_across_reused_index() -> None:
    # Some compatible servers send every call at index 0, each with its own id.
    data = b"".join(
        b"data: " + orjson.dumps(e) + b"\n\n"
        for e in [
            {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "a",
              "function": {"name": "f", "arguments": "{}"}}]}}]},
            {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "b",
              "function": {"name": "g", "arguments": "{\"x\":1}"}}]}}]},
        ]
    )  # fmt: skip
    observer = response_observer("chat", stream=True)
    relay(observer, [data])
    assert [(c.name, c.call_id, c.arguments) for c in observer.tool_calls] == [
        ("f", "a", "{}"),
        ("g", "b", '{"x":1}'),
    ]
