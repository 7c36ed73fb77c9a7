"""parse_request: what the gateway reads from a client body, and the one edit it makes."""

import orjson
import pytest

from aibridge.intercept import BadRequest, parse_request
from aibridge.intercept._request import INCLUDE_USAGE


def _body(**fields: object) -> bytes:
    return orjson.dumps(fields)


# -- model, stream, errors ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"model": "gpt-4o",',
        b"[1, 2]",
        b'"gpt-4o"',
        b"null",
        b'{"messages": []}',
        b'{"model": 5}',
        b'{"model": null}',
        b'{"model": "gpt-4o", "stream": "true"}',
        b'{"model": "gpt-4o", "stream": 1}',
        b'{"model": "gpt-4o", "stream": {}}',
    ],
)
@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_unusable_bodies_are_bad_requests(api: str, body: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(api, body)
    assert caught.value.message


def test_unknown_api_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_request("embeddings", b'{"model": "x"}')


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_model_and_stream(api: str) -> None:
    info = parse_request(api, b'{"model": "m-1", "stream": false, "max_tokens": 0}')
    assert (info.model, info.stream, info.injected_usage) == ("m-1", False, False)
    assert parse_request(api, b'{"model": "m-1"}').stream is False
    # null is "not set": OpenAI declares stream nullable.
    assert parse_request(api, b'{"model": "m-1", "stream": null}').stream is False


# -- the stream_options edit -----------------------------------------------------


def test_chat_stream_gets_include_usage_inserted_and_nothing_else() -> None:
    body = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}],"n":0}'
    info = parse_request("chat", body)
    assert info.stream is True and info.injected_usage is True
    assert info.body == b"{" + INCLUDE_USAGE + body[1:]
    assert info.body.replace(INCLUDE_USAGE, b"", 1) == body
    assert orjson.loads(info.body) == {
        **orjson.loads(body),
        "stream_options": {"include_usage": True},
    }


def test_insertion_skips_leading_whitespace_and_keeps_formatting() -> None:
    body = b' \r\n\t{\n  "stream": true,\n  "model": "gpt-4o",\n  "temperature": 0.0\n}\n'
    info = parse_request("chat", body)
    assert info.injected_usage
    assert info.body == b" \r\n\t{" + INCLUDE_USAGE + body[5:]
    assert info.body.replace(INCLUDE_USAGE, b"", 1) == body
    assert orjson.loads(info.body)["stream_options"] == {"include_usage": True}
    assert orjson.loads(info.body)["temperature"] == 0.0


@pytest.mark.parametrize(
    "stream_options",
    [
        b'{"include_usage": true}',
        b'{"include_usage": false}',
        b"{}",
        b"null",
        b'{"include_obfuscation": false}',
    ],
)
def test_client_stream_options_are_never_touched(stream_options: bytes) -> None:
    body = b'{"model":"gpt-4o","stream":true,"stream_options":' + stream_options + b"}"
    info = parse_request("chat", body)
    assert info.body is body
    assert info.injected_usage is False


@pytest.mark.parametrize(
    ("api", "body"),
    [
        ("chat", b'{"model":"gpt-4o","stream":false}'),
        ("chat", b'{"model":"gpt-4o"}'),
        ("responses", b'{"model":"gpt-4.1","stream":true,"input":"hi"}'),
        ("messages", b'{"model":"claude-sonnet-4-0","stream":true,"max_tokens":5}'),
    ],
)
def test_other_bodies_pass_as_the_same_bytes(api: str, body: bytes) -> None:
    info = parse_request(api, body)
    assert info.body is body
    assert info.injected_usage is False


# -- prompts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "prompt"),
    [
        ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "hi"),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "first"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                        {"type": "text", "text": "what is in this image?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                }
            ],
            "what is in this image?",
        ),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], None),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], None),
        ([{"role": "tool", "tool_call_id": "call_1", "content": "22C"}], None),
        ([], None),
        ("not a list", None),
    ],
)
def test_chat_prompt(messages: object, prompt: str | None) -> None:
    assert parse_request("chat", _body(model="m", messages=messages)).prompt == prompt


@pytest.mark.parametrize(
    ("given", "prompt"),
    [
        ("Tell me a joke", "Tell me a joke"),
        ([{"role": "user", "content": "plain"}], "plain"),
        (
            [
                {"role": "developer", "content": "be brief"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "https://x/y.png"},
                        {"type": "input_text", "text": "describe it"},
                        {"type": "input_file", "file_id": "file-1"},
                    ],
                },
            ],
            "describe it",
        ),
        (
            [
                {"role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "22C"},
            ],
            None,
        ),
        ([{"role": "assistant", "content": "hello"}], None),
        ([], None),
        (None, None),
    ],
)
def test_responses_prompt(given: object, prompt: str | None) -> None:
    assert parse_request("responses", _body(model="m", input=given)).prompt == prompt


@pytest.mark.parametrize(
    ("messages", "prompt"),
    [
        ([{"role": "user", "content": "Hello, Claude"}], "Hello, Claude"),
        (
            [
                {"role": "user", "content": "weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "22C"},
                        {"type": "text", "text": "and in Rome?"},
                        {"type": "image", "source": {"type": "base64", "data": "AA"}},
                    ],
                },
            ],
            "and in Rome?",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}],
                }
            ],
            None,
        ),
        ([{"role": "assistant", "content": "prefill"}], None),
    ],
)
def test_messages_prompt(messages: object, prompt: str | None) -> None:
    body = _body(model="claude-sonnet-4-0", max_tokens=64, messages=messages)
    assert parse_request("messages", body).prompt == prompt


def test_prompt_is_truncated_to_64_kib_on_a_character_boundary() -> None:
    text = "é" * 40000  # 80000 UTF-8 bytes
    prompt = parse_request("chat", _body(model="m", messages=[{"role": "user", "content": text}]))
    assert prompt.prompt is not None
    assert prompt.prompt == "é" * 32768
    assert len(prompt.prompt.encode()) == 65536
    odd = "a" + "€" * 30000  # 3-byte characters: the cut falls inside one
    cut = parse_request("chat", _body(model="m", messages=[{"role": "user", "content": odd}]))
    assert cut.prompt == "a" + "€" * 21845
