"""A client's request body: what the gateway needs from it, and the one edit we make.

The body is parsed once with orjson to read ``model``, ``stream`` and the last
user prompt; it is never re-serialised. The bytes sent upstream are the
client's bytes, except for one byte-level insertion (see ``_with_include_usage``).
"""

from dataclasses import dataclass
from typing import Any

import orjson

from aibridge.intercept._limits import MAX_PROMPT, truncate_utf8

INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


class BadRequest(Exception):
    """The client's body cannot be relayed: the gateway answers with a provider-shaped 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class RequestInfo:
    model: str
    stream: bool
    prompt: str | None  # the last message's text when the user sent it, <= 64 KiB
    body: bytes  # the bytes to send upstream
    injected_usage: bool  # we asked for the usage chunk: the observer must strip it


def parse_request(api: str, body: bytes) -> RequestInfo:
    """Read a ``chat`` | ``responses`` | ``messages`` request body; BadRequest if unusable."""
    if api not in _PROMPT_READERS:
        raise ValueError(f"unknown api {api!r}")
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("request body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str):
        raise BadRequest("'model' is required and must be a string")
    stream = request.get("stream")
    # null means "not set" (OpenAI's schema declares stream nullable), so it is not refused.
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    stream = bool(stream)
    injected = False
    if api == "chat" and stream and "stream_options" not in request:
        body = _with_include_usage(body)
        injected = True
    prompt = _PROMPT_READERS[api](request)
    return RequestInfo(
        model=model,
        stream=stream,
        prompt=truncate_utf8(prompt, MAX_PROMPT) if prompt is not None else None,
        body=body,
        injected_usage=injected,
    )


def _with_include_usage(body: bytes) -> bytes:
    """``body`` with ``"stream_options":{"include_usage":true},`` after its opening brace.

    Only when the client sent no ``stream_options`` at all: chat streams carry
    usage only when asked, and we need it for accounting. The object is known
    to hold ``model``, so the trailing comma is always followed by a member. If
    the client sent ``stream_options`` without ``include_usage: true`` we leave
    the body alone (changing a member means re-serialising, which we never do)
    and that stream records no usage. If it sent ``include_usage: true`` the
    usage chunk is the client's and is relayed.
    """
    at = body.index(b"{")  # only whitespace can precede it in a body orjson parsed as an object
    return body[: at + 1] + INCLUDE_USAGE + body[at + 1 :]


def _last_text(content: object, part_type: str) -> str | None:
    """A string content, or the text of the last ``part_type`` part of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for part in reversed(content):
            if isinstance(part, dict) and part.get("type") == part_type:
                text = part.get("text")
                if isinstance(text, str):
                    return text
    return None


def _last_user_message(messages: object, part_type: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    return _last_text(last.get("content"), part_type)


def _chat_prompt(request: dict[str, Any]) -> str | None:
    return _last_user_message(request.get("messages"), "text")


def _responses_prompt(request: dict[str, Any]) -> str | None:
    given = request.get("input")
    if isinstance(given, str):
        return given
    if isinstance(given, list) and given:
        last = given[-1]
        # An input item is a message when it has a role; "type":"message" is optional.
        if isinstance(last, dict) and last.get("type", "message") != "message":
            return None
        return _last_user_message(given, "input_text")
    return None


def _messages_prompt(request: dict[str, Any]) -> str | None:
    return _last_user_message(request.get("messages"), "text")


_PROMPT_READERS = {
    "chat": _chat_prompt,
    "responses": _responses_prompt,
    "messages": _messages_prompt,
}
