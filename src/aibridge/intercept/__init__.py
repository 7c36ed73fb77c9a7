"""Per-API interception: what a request asks for, and what its response used.

Theory of operation
-------------------
The gateway reads a client's body once and calls :func:`parse_request` for the
model, the stream flag, the last user prompt and the bytes to send upstream
(the client's own bytes; for a streaming chat request, possibly with
``stream_options.include_usage`` inserted so the stream reports its usage).

The upstream's answer is relayed through an :class:`Observer` from
:func:`response_observer`: every ``feed(chunk)`` returns the bytes to forward
now, ``close()`` the bytes held back at the end. Meanwhile the observer fills
``usage``, ``tool_calls``, ``complete`` and ``error``.

Rules:

* Bytes pass untouched. The one exception: a chat stream whose usage chunk we
  asked for (``injected_usage``) loses that chunk, so the client sees exactly
  the stream it requested.
* Blocking bodies are forwarded at once and parsed once, at ``close()``.
  Streams are cut into SSE events (``_sse.py``); only events that can carry
  usage, tool calls, an error or the end of the stream are parsed.
* orjson only; nothing is re-serialised; ``feed``/``close`` never raise; every
  buffer is bounded (``_limits.py``).
"""

from typing import Protocol

from aibridge.intercept import _chat, _messages, _responses
from aibridge.intercept._blocking import BlockingObserver
from aibridge.intercept._chat import ChatStreamObserver
from aibridge.intercept._messages import MessagesStreamObserver
from aibridge.intercept._request import BadRequest, RequestInfo, parse_request
from aibridge.intercept._responses import ResponsesStreamObserver
from aibridge.intercept._usage import anthropic_usage, chat_usage, responses_usage
from aibridge.recorder.records import TokenUsage, ToolCall

__all__ = [
    "APIS",
    "BadRequest",
    "Observer",
    "RequestInfo",
    "parse_request",
    "response_observer",
]

APIS = ("chat", "responses", "messages")


class Observer(Protocol):
    """Relays one upstream response body and learns what it used along the way."""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to forward to the client now (possibly b"")."""
        ...

    def close(self) -> bytes:
        """End of the upstream body: the bytes still held back."""
        ...

    @property
    def usage(self) -> TokenUsage | None:
        """Filled as soon as the response reports it."""
        ...

    @property
    def tool_calls(self) -> list[ToolCall]: ...

    @property
    def complete(self) -> bool:
        """The stream's terminal event was seen; for a blocking body, close() parsed it."""
        ...

    @property
    def error(self) -> str | None:
        """An upstream error reported inside a 200 response (a stream's error event)."""
        ...


def response_observer(api: str, stream: bool, *, strip_usage_chunk: bool = False) -> Observer:
    """An observer for one ``chat`` | ``responses`` | ``messages`` response.

    ``strip_usage_chunk`` (chat streams only) is ``RequestInfo.injected_usage``.
    """
    if api == "chat":
        if stream:
            return ChatStreamObserver(strip_usage_chunk)
        return BlockingObserver(_chat.read_body, chat_usage)
    if api == "responses":
        return (
            ResponsesStreamObserver()
            if stream
            else BlockingObserver(_responses.read_body, responses_usage)
        )
    if api == "messages":
        return (
            MessagesStreamObserver()
            if stream
            else BlockingObserver(_messages.read_body, anthropic_usage)
        )
    raise ValueError(f"unknown api {api!r}")
