"""What observing costs on the hot path: printed, not asserted (run with -s to see it)."""

import time
from pathlib import Path

import pytest

from aibridge.intercept import parse_request, response_observer
from aibridge.recorder.records import TokenUsage

_HEAD = (
    b'{"id":"chatcmpl-C2OmA7bQ1rS3tU5vW7xY9zA1bC3dE","object":"chat.completion.chunk",'
    b'"created":1754492900,"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
    b'"system_fingerprint":"fp_34a54ae93c",'
)


def twenty_chunk_stream() -> list[bytes]:
    """A 20-chunk chat stream (role, 17 text deltas, finish, usage) plus [DONE], one per read."""
    events = [
        _HEAD + b'"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
        b'"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"xQ2"}'
    ]
    for i in range(17):
        events.append(
            _HEAD + b'"choices":[{"index":0,"delta":{"content":" word%d"},"logprobs":null,'
            b'"finish_reason":null}],"usage":null,"obfuscation":"k%d"}' % (i, i)
        )
    events.append(
        _HEAD + b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":null,"obfuscation":"Zp"}'
    )
    events.append(
        _HEAD + b'"choices":[],"usage":{"prompt_tokens":1187,"completion_tokens":18,'
        b'"total_tokens":1205,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},'
        b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
        b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"q7F"}'
    )
    return [b"data: " + e + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def _per_stream(run: object, iterations: int) -> float:
    assert callable(run)
    start = time.process_time()
    for _ in range(iterations):
        run()
    return (time.process_time() - start) / iterations * 1e6


def test_cost_of_observing_a_20_chunk_chat_stream() -> None:
    chunks = twenty_chunk_stream()
    request = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'

    def bare() -> None:  # the floor: a relay that forwards each read as it comes
        out = []
        for chunk in chunks:
            out.append(chunk)

    def observed() -> None:
        info = parse_request("chat", request)
        observer = response_observer("chat", True, strip_usage_chunk=info.injected_usage)
        out = []
        for chunk in chunks:
            out.append(observer.feed(chunk))
        out.append(observer.close())
        assert observer.usage is not None

    observed()
    observer = response_observer("chat", True, strip_usage_chunk=True)
    for chunk in chunks:
        observer.feed(chunk)
    assert observer.usage == TokenUsage(input=163, output=18, cache_read=1024)

    iterations = 5000
    for _ in range(2):  # warm up, then measure
        floor = _per_stream(bare, iterations)
        cost = _per_stream(observed, iterations)
    print(
        f"\n20-chunk chat stream: {cost:.1f} µs CPU per stream incl. parse_request "
        f"({cost / len(chunks):.2f} µs per chunk); bare loop {floor:.1f} µs"
    )


@pytest.mark.parametrize("file", ["messages_stream.sse", "responses_stream.sse"])
def test_cost_of_observing_other_streams(file: str) -> None:
    data = (Path(__file__).parent / "fixtures" / "intercept" / file).read_bytes()
    chunks = [event + b"\n\n" for event in data.split(b"\n\n")[:-1]]
    api = file.split("_")[0]

    def observed() -> None:
        observer = response_observer(api, True)
        for chunk in chunks:
            observer.feed(chunk)
        observer.close()
        assert observer.usage is not None

    iterations = 3000
    for _ in range(2):
        cost = _per_stream(observed, iterations)
    print(f"\n{file} ({len(chunks)} events): {cost:.1f} µs CPU per stream")
