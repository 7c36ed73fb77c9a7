"""Anthropic Messages: usage and tool calls from a body or an event stream."""

import contextlib
from collections.abc import Callable
from typing import Any

import orjson

from aibridge.intercept._limits import MAX_TOOL_ARGS, MAX_TOOL_CALLS, truncate_utf8
from aibridge.intercept._sse import (
    TypedEventObserver,
    error_text,
)
from aibridge.intercept._tool_calls import ToolCallAccumulator
from aibridge.intercept._usage import anthropic_usage, merge_anthropic_usage
from aibridge.recorder.records import TokenUsage, ToolCall


def _compact(value: object) -> str:
    return truncate_utf8(orjson.dumps(value).decode(), MAX_TOOL_ARGS)


def read_body(body: dict[str, Any]) -> tuple[TokenUsage | None, list[ToolCall], str | None]:
    usage = body.get("usage")
    calls: list[ToolCall] = []
    content = body.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict) or block.get("type") != "tool_use":
            continue  # server tools (web search, ...) are not the client's to run
        if len(calls) < MAX_TOOL_CALLS:
            calls.append(
                ToolCall(
                    name=str(block.get("name") or ""),
                    call_id=str(block.get("id") or ""),
                    arguments=_compact(block.get("input", {})),
                )
            )
    error = body.get("error") if body.get("type") == "error" else None
    return (
        anthropic_usage(usage) if isinstance(usage, dict) else None,
        calls,
        error_text(error) if error else None,
    )


_TEXT_RUN_EVENTS = (b"event: message_start", b"event: message_delta", b"event: message_stop")


def _line_start_find(data: bytes, marker: bytes) -> int:
    """Where ``marker`` starts a line in ``data`` (not inside a data: line's text), or -1."""
    at = data.find(marker)
    while at > 0 and data[at - 1] != 0x0A:  # b"\n"
        at = data.find(marker, at + 1)
    return at


def _wanted(name: bytes, event: bytes) -> bool:
    """Whether an event named ``name`` needs parsing: text deltas and pings never do."""
    if name == b"content_block_delta":
        return b"input_json_delta" in event
    return name in _HANDLERS


class MessagesStreamObserver(TypedEventObserver):
    """``event: <type>`` + ``data: {...}`` pairs, from message_start to message_stop.

    Usage is split over two events: ``message_start.message.usage`` (input and
    cache counts) and ``message_delta.usage`` (final cumulative output, and
    sometimes updated input counts); they are merged, later non-null values winning.
    Text deltas (``content_block_delta`` with ``text_delta``) and pings are never parsed.
    """

    MARKERS = (
        b"message_start",
        b"message_delta",
        b"message_stop",
        b"content_block_start",
        b"input_json_delta",
        b"event: error",
        b'"type":"error"',
    )

    __slots__ = ("_calls", "_raw_usage")

    def __init__(self) -> None:
        super().__init__()
        self._calls = ToolCallAccumulator(empty_args="{}")
        self._raw_usage: dict[str, Any] = {}

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self._calls.calls()

    def _observe(self, ready: bytes) -> bytes:
        # A text-only run: find the three events that matter (start, delta, stop) instead
        # of cutting the whole run into events. Tool use, errors, events without an
        # ``event:`` line or CR line endings take the general path.
        if (
            b'"tool_use"' in ready  # quoted: "server_tool_use" in usage must not match
            or b"input_json_delta" in ready
            or b"event: error" in ready
            or b'"type":"error"' in ready
            or b"\r" in ready
            or not ready.startswith(b"event:")
        ):
            return super()._observe(ready)
        for marker in _TEXT_RUN_EVENTS:
            start = _line_start_find(ready, marker)
            if start < 0:
                continue
            stop = ready.find(b"\n\n", start)
            stop = len(ready) if stop < 0 else stop + 2
            with contextlib.suppress(Exception):  # malformed upstream data is never our crash
                self.on_event(ready[start:stop])
        return ready

    wanted = staticmethod(_wanted)

    def on_payload(self, name: bytes, payload: dict[str, Any]) -> None:
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, payload)

    def _merge_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            merge_anthropic_usage(self._raw_usage, usage)
            self.usage = anthropic_usage(self._raw_usage)

    def _on_message_start(self, payload: dict[str, Any]) -> None:
        message = payload.get("message")
        if isinstance(message, dict):
            self._merge_usage(message.get("usage"))

    def _on_message_delta(self, payload: dict[str, Any]) -> None:
        self._merge_usage(payload.get("usage"))

    def _on_message_stop(self, payload: dict[str, Any]) -> None:
        self.complete = True

    def _on_block_start(self, payload: dict[str, Any]) -> None:
        block = payload.get("content_block")
        if not isinstance(block, dict) or block.get("type") != "tool_use":
            return
        key = payload.get("index", 0)
        call_id, name = block.get("id"), block.get("name")
        self._calls.start(
            key, call_id if isinstance(call_id, str) else "", name if isinstance(name, str) else ""
        )
        initial = block.get("input")
        if isinstance(initial, dict) and initial:  # Anthropic sends {} and streams the input
            self._calls.append(key, orjson.dumps(initial).decode())

    def _on_block_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "input_json_delta":
            piece = delta.get("partial_json")
            if isinstance(piece, str):
                self._calls.append(payload.get("index", 0), piece)

    def _on_error(self, payload: dict[str, Any]) -> None:
        self.error = error_text(payload.get("error") or payload)


_HANDLERS: dict[bytes, Callable[[MessagesStreamObserver, dict[str, Any]], None]] = {
    b"message_start": MessagesStreamObserver._on_message_start,
    b"message_delta": MessagesStreamObserver._on_message_delta,
    b"message_stop": MessagesStreamObserver._on_message_stop,
    b"content_block_start": MessagesStreamObserver._on_block_start,
    b"content_block_delta": MessagesStreamObserver._on_block_delta,
    b"error": MessagesStreamObserver._on_error,
}
