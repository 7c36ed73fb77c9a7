"""OpenAI Responses API: usage and function calls from a body or an event stream."""

from typing import Any

from aibridge.intercept._limits import MAX_TOOL_ARGS, MAX_TOOL_CALLS, truncate_utf8
from aibridge.intercept._sse import (
    TypedEventObserver,
    error_text,
    event_fields,
)
from aibridge.intercept._usage import responses_usage, salvage_usage
from aibridge.recorder.records import TokenUsage, ToolCall

_TERMINAL = frozenset({b"response.completed", b"response.failed", b"response.incomplete"})


def _add_function_calls(calls: dict[str, ToolCall], output: object) -> None:
    """Function-call output items into ``calls``, keyed by call id (so never twice)."""
    for item in output if isinstance(output, list) else ():
        if isinstance(item, dict):
            _add_function_call(calls, item)


def _add_function_call(calls: dict[str, ToolCall], item: dict[str, Any]) -> None:
    if item.get("type") != "function_call" or len(calls) >= MAX_TOOL_CALLS:
        return
    call_id = str(item.get("call_id") or "")
    key = call_id or str(item.get("id") or len(calls))
    if key in calls:
        return
    arguments = item.get("arguments")
    calls[key] = ToolCall(
        name=str(item.get("name") or ""),
        call_id=call_id,
        arguments=truncate_utf8(arguments, MAX_TOOL_ARGS) if isinstance(arguments, str) else "",
    )


def read_body(body: dict[str, Any]) -> tuple[TokenUsage | None, list[ToolCall], str | None]:
    usage = body.get("usage")
    calls: dict[str, ToolCall] = {}
    _add_function_calls(calls, body.get("output"))
    error = body.get("error")
    return (
        responses_usage(usage) if isinstance(usage, dict) else None,
        list(calls.values()),
        error_text(error) if error else None,
    )


def _wanted(name: bytes, event: bytes) -> bool:
    """Whether an event named ``name`` needs parsing: deltas never do."""
    if name == b"response.output_item.done":
        return b"function_call" in event
    return name in _TERMINAL or name == b"error"


class ResponsesStreamObserver(TypedEventObserver):
    """Typed ``event: response.*`` events, ending in response.completed/failed/incomplete.

    Function calls come whole in ``response.output_item.done`` (the argument
    deltas before it are not parsed); the terminal event repeats the full
    response with its usage, and any function call not yet seen.
    """

    MARKERS = (
        b"response.output_item.done",
        b"response.completed",
        b"response.failed",
        b"response.incomplete",
        b"event: error",
        b'"type":"error"',
    )

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[str, ToolCall] = {}

    @property
    def tool_calls(self) -> list[ToolCall]:
        return list(self._calls.values())

    wanted = staticmethod(_wanted)

    def on_payload(self, name: bytes, payload: dict[str, Any]) -> None:
        if name == b"response.output_item.done":
            item = payload.get("item")
            if isinstance(item, dict):
                _add_function_call(self._calls, item)
        elif name in _TERMINAL:
            self._on_terminal(name, payload.get("response"))
        elif name == b"error":
            self.error = error_text(payload.get("error") or payload)

    def _on_terminal(self, name: bytes, response: object) -> None:
        self.complete = True
        if not isinstance(response, dict):
            return
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.usage = responses_usage(usage)
        _add_function_calls(self._calls, response.get("output"))
        if name == b"response.failed":
            self.error = error_text(response.get("error") or "response.failed")

    def on_oversized(self, head: bytes, tail: bytes) -> None:
        # A terminal event repeats the whole output (images included): too big to hold,
        # but its usage sits at its end.
        name, _ = event_fields(head.split(b"\n", 1)[0] + b"\n")
        if name not in _TERMINAL:
            return
        self.complete = True
        usage = salvage_usage(tail)
        if usage is not None:
            self.usage = responses_usage(usage)
        if name == b"response.failed":
            self.error = "response.failed"
