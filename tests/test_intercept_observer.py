"""Response observers over recorded upstream wire data (tests/fixtures/intercept/).

Every fixture is relayed under many ways of cutting it into network chunks:
the bytes the client gets must be the bytes upstream sent, and what the
observer learns must not depend on where the cuts fell.
"""

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aibridge.intercept import Observer, response_observer
from aibridge.recorder.records import TokenUsage, ToolCall

FIXTURES = Path(__file__).parent / "fixtures" / "intercept"


@dataclass(frozen=True)
class Case:
    file: str
    api: str
    usage: TokenUsage | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    complete: bool = True
    error: str | None = None

    @property
    def stream(self) -> bool:
        return self.file.endswith(".sse")

    @property
    def data(self) -> bytes:
        return (FIXTURES / self.file).read_bytes()


WEATHER = '{"location":"Paris, France","unit":"celsius"}'

CASES = [
    Case(
        "chat_blocking.json",
        "chat",
        TokenUsage(input=230, output=8, cache_read=1920),
    ),
    Case(
        "chat_blocking_tools.json",
        "chat",
        TokenUsage(input=312, output=219, extra={"reasoning_tokens": 128}),
        [
            ToolCall("get_weather", "call_Vq3mZ1xK9pL2nR7sT4uW6yA8", WEATHER),
            ToolCall("get_time", "call_B5cD7eF9gH1iJ3kL5mN7oP9q", '{"timezone":"Europe/Paris"}'),
        ],
    ),
    Case(
        "chat_stream.sse",
        "chat",
        TokenUsage(input=163, output=12, cache_read=1024),
    ),
    Case(
        "chat_stream_tools.sse",
        "chat",
        TokenUsage(input=402, output=58),
        [
            ToolCall("get_weather", "call_Vq3mZ1xK9pL2nR7sT4uW6yA8", WEATHER),
            ToolCall("get_time", "call_B5cD7eF9gH1iJ3kL5mN7oP9q", '{"timezone":"Europe/Paris"}'),
        ],
    ),
    Case(
        "chat_stream_error.sse",
        "chat",
        None,
        complete=False,
        error="server_error: The server had an error while processing your request. "
        "Sorry about that!",
    ),
    Case(
        "responses_blocking.json",
        "responses",
        TokenUsage(input=214, output=9, cache_read=1792),
    ),
    Case(
        "responses_blocking_tools.json",
        "responses",
        TokenUsage(input=84, output=150, extra={"reasoning_tokens": 128}),
        [ToolCall("get_weather", "call_Xk2pQ9rT4vW7yZ1aC3eG5iK8", '{"location":"Paris, France"}')],
    ),
    Case(
        "responses_stream.sse",
        "responses",
        TokenUsage(input=214, output=9, cache_read=1792),
    ),
    Case(
        "responses_stream_tools.sse",
        "responses",
        TokenUsage(input=84, output=150, extra={"reasoning_tokens": 128}),
        [ToolCall("get_weather", "call_Xk2pQ9rT4vW7yZ1aC3eG5iK8", '{"location":"Paris, France"}')],
    ),
    Case(
        "responses_stream_failed.sse",
        "responses",
        None,
        error="server_error: The model produced invalid content.",
    ),
    Case(
        "messages_blocking.json",
        "messages",
        TokenUsage(
            input=12,
            output=9,
            cache_read=15360,
            cache_write=2051,
            extra={"ephemeral_5m_input_tokens": 51, "ephemeral_1h_input_tokens": 2000},
        ),
    ),
    Case(
        "messages_blocking_tools.json",
        "messages",
        TokenUsage(input=2048, output=140, extra={"web_search_requests": 1}),
        [
            ToolCall("get_weather", "toolu_01T1x1fJ34qAmk2tNTrN7Up6", WEATHER),
            ToolCall("get_time", "toolu_01VnkLmvgT5ZJxqwyYcPfCe2", "{}"),
        ],
    ),
    Case(
        "messages_stream.sse",
        "messages",
        TokenUsage(
            input=12,
            output=23,
            cache_read=15360,
            cache_write=2051,
            extra={"ephemeral_5m_input_tokens": 51, "ephemeral_1h_input_tokens": 2000},
        ),
    ),
    Case(
        "messages_stream_tools.sse",
        "messages",
        TokenUsage(input=1024, output=187),
        [
            # Streamed input is recorded as sent, spaces and all.
            ToolCall(
                "get_weather",
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                '{"location": "Paris, France", "unit": "celsius"}',
            ),
            ToolCall("get_time", "toolu_01VnkLmvgT5ZJxqwyYcPfCe2", "{}"),
        ],
    ),
    Case(
        "messages_stream_error.sse",
        "messages",
        TokenUsage(input=25, output=1),
        complete=False,
        error="overloaded_error: Overloaded",
    ),
]
IDS = [case.file for case in CASES]


def relay(observer: Observer, chunks: list[bytes]) -> bytes:
    return b"".join([observer.feed(chunk) for chunk in chunks]) + observer.close()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def check(case: Case, chunks: list[bytes], data: bytes | None = None) -> Observer:
    observer = response_observer(case.api, case.stream)
    assert relay(observer, chunks) == (case.data if data is None else data)
    assert observer.usage == case.usage
    assert observer.tool_calls == case.tool_calls
    assert observer.complete is case.complete
    assert observer.error == case.error
    return observer


def test_every_api_has_every_shape() -> None:
    shapes = {(case.api, case.stream, bool(case.tool_calls)) for case in CASES}
    assert len(shapes) == 12


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_whole_body(case: Case) -> None:
    check(case, [case.data])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_one_byte_chunks(case: Case) -> None:
    data = case.data
    check(case, [data[i : i + 1] for i in range(len(data))])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_one_event_per_chunk(case: Case) -> None:
    data = case.data
    check(case, [event + b"\n\n" for event in data.split(b"\n\n")[:-1]] or [data])


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=30))
def test_any_split(case: Case, points: list[int]) -> None:
    data = case.data
    check(case, cut(data, [p % (len(data) + 1) for p in points]))


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "cr"])
@pytest.mark.parametrize("case", [case for case in CASES if case.stream], ids=lambda c: c.file)
@settings(max_examples=20, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=30))
def test_other_line_endings(case: Case, newline: bytes, points: list[int]) -> None:
    data = case.data.replace(b"\n", newline)
    check(case, cut(data, [p % (len(data) + 1) for p in points]), data)


@pytest.mark.parametrize("case", [case for case in CASES if not case.stream], ids=lambda c: c.file)
def test_blocking_feed_never_holds_back(case: Case) -> None:
    observer = response_observer(case.api, stream=False)
    data = case.data
    for i in range(0, len(data), 100):
        assert observer.feed(data[i : i + 100]) == data[i : i + 100]
        assert observer.usage is None  # nothing is parsed before close()
    assert observer.close() == b""
    assert observer.usage == case.usage


# -- stripping the usage chunk we asked for -------------------------------------


def _usage_event(data: bytes) -> bytes:
    (event,) = [e + b"\n\n" for e in data.split(b"\n\n") if b'"choices":[]' in e]
    return event


@pytest.mark.parametrize("file", ["chat_stream.sse", "chat_stream_tools.sse"])
@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=30))
def test_strip_removes_exactly_the_usage_chunk(file: str, points: list[int]) -> None:
    case = next(c for c in CASES if c.file == file)
    data = case.data
    usage_event = _usage_event(data)
    observer = response_observer("chat", stream=True, strip_usage_chunk=True)
    out = relay(observer, cut(data, [p % (len(data) + 1) for p in points]))
    assert out == data.replace(usage_event, b"")
    assert len(out) == len(data) - len(usage_event)
    assert observer.usage == case.usage
    assert observer.tool_calls == case.tool_calls
    assert observer.complete


def test_strip_leaves_a_stream_without_usage_chunk_alone() -> None:
    data = (FIXTURES / "chat_stream.sse").read_bytes()
    data = data.replace(_usage_event(data), b"")
    observer = response_observer("chat", stream=True, strip_usage_chunk=True)
    assert relay(observer, [data[i : i + 7] for i in range(0, len(data), 7)]) == data
    assert observer.usage is None
    assert observer.complete


def test_strip_keeps_a_usage_carrying_chunk_with_choices() -> None:
    # Some compatible servers put usage on the last content chunk: that chunk is content.
    data = (
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        b'{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,'
        b'"completion_tokens":1,"total_tokens":6}}\n\ndata: [DONE]\n\n'
    )
    observer = response_observer("chat", stream=True, strip_usage_chunk=True)
    assert relay(observer, [data]) == data
    assert observer.usage == TokenUsage(input=5, output=1)
