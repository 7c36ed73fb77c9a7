"""OpenAI chat completions: usage and tool calls from a body or a chunk stream."""

from typing import Any

from aibridge.intercept._limits import MAX_TOOL_ARGS, MAX_TOOL_CALLS, truncate_utf8
from aibridge.intercept._sse import (
    StreamObserver,
    error_text,
    event_fields,
    load_object,
    split_events,
)
from aibridge.intercept._tool_calls import ToolCallAccumulator
from aibridge.intercept._usage import chat_usage
from aibridge.recorder.records import TokenUsage, ToolCall


def read_body(body: dict[str, Any]) -> tuple[TokenUsage | None, list[ToolCall], str | None]:
    usage = body.get("usage")
    calls: list[ToolCall] = []
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        tool_calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in tool_calls if isinstance(tool_calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or len(calls) >= MAX_TOOL_CALLS:
                continue
            arguments = function.get("arguments")
            calls.append(
                ToolCall(
                    name=str(function.get("name") or ""),
                    call_id=str(call.get("id") or ""),
                    arguments=truncate_utf8(arguments, MAX_TOOL_ARGS)
                    if isinstance(arguments, str)
                    else "",
                )
            )
    error = body.get("error")
    return (
        chat_usage(usage) if isinstance(usage, dict) else None,
        calls,
        error_text(error) if error else None,
    )


_END_WINDOW = 16 * 1024  # bytes of the last run that on_end looks at
_DONE_ENDINGS = (b"[DONE]\n\n", b"[DONE]\r\n\r\n", b"[DONE]\r\r")


def has_usage_object(data: bytes) -> bool:
    """Whether ``data`` may hold a usage object: one scan for a ``*_tokens"`` key.

    Every usage object has ``prompt_tokens``/``completion_tokens``; ``"usage":null``
    (in every chunk once usage is asked for) has none, and a model's text cannot
    produce the bytes ``_tokens"`` (its quotes arrive escaped).
    """
    return b'_tokens"' in data


def _is_error(data: bytes) -> bool:
    # An error event's data is an object whose first key is "error".
    return data[:1] == b"{" and b'"error"' in data[:24]


class ChatStreamObserver(StreamObserver):
    """``data: {chunk}`` events ending in ``data: [DONE]``.

    Usage arrives in a chunk of its own (``"choices":[]``) when the request asked
    for it with ``stream_options.include_usage``; the other chunks then carry
    ``"usage":null``. A run is parsed only when it holds a usage object, a tool
    call delta, or ends in ``[DONE]``: two scans per text chunk. An error event
    ends a broken stream, so it is looked for in the last run only, at close().
    """

    __slots__ = ("_calls", "_strip_usage_chunk")

    def __init__(self, strip_usage_chunk: bool = False) -> None:
        super().__init__()
        self._calls = ToolCallAccumulator()
        self._strip_usage_chunk = strip_usage_chunk

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self._calls.calls()

    def wants(self, run: bytes) -> bool:
        return (
            has_usage_object(run)
            or b"tool_calls" in run
            or run.endswith(_DONE_ENDINGS)
            or b'"error"' in run[:24]  # an error event read on its own: O(1) to spot
        )

    def _observe(self, ready: bytes) -> bytes:
        # The common run: text deltas, maybe the usage chunk and [DONE]. Find the one
        # usage event directly instead of cutting the run into events; anything rarer
        # (tool calls, an error, CR line endings) takes the general path.
        if b"tool_calls" in ready or b'"error"' in ready or b"\r" in ready:
            return super()._observe(ready)
        if ready.endswith(_DONE_ENDINGS):
            self.complete = True
        at = ready.rfind(b'_tokens"')
        if at < 0:
            return ready
        start = ready.rfind(b"\n\n", 0, at) + 2  # 0 when the run starts with this event
        if start == 1:
            start = 0
        stop = ready.find(b"\n\n", at)
        stop = len(ready) if stop < 0 else stop + 2
        try:
            keep = self.on_event(ready[start:stop])
        except Exception:  # malformed upstream data is never our crash
            keep = True
        return ready if keep else ready[:start] + ready[stop:]

    def worth(self, event: bytes) -> bool:
        return (
            has_usage_object(event)
            or b"tool_calls" in event
            or b"[DONE]" in event
            or b'"error"' in event[:32]
        )

    def on_end(self, last_run: bytes) -> None:
        if self.complete:
            return  # [DONE] was seen: the stream ended as it should
        # Only the stream's last events can say it completed or broke: look at its tail
        # (a run may hold the whole stream when the upstream wrote faster than we read).
        tail = last_run[-_END_WINDOW:]
        events = split_events(tail)
        if len(tail) < len(last_run):
            events = events[1:]  # the window may start mid-event
        for event in events[-2:]:
            _, data = event_fields(event)
            data = data.strip()
            if data == b"[DONE]":
                self.complete = True
            elif self.error is None and _is_error(data):
                chunk = load_object(data)
                if chunk is not None and chunk.get("error"):
                    self.error = error_text(chunk["error"])

    def on_event(self, event: bytes) -> bool:
        _, data = event_fields(event)
        if data == b"[DONE]":
            self.complete = True
            return True
        if not (has_usage_object(data) or b"tool_calls" in data or _is_error(data)):
            return True
        chunk = load_object(data)
        if chunk is None:
            return True
        if chunk.get("error"):
            self.error = error_text(chunk["error"])
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._on_choice(choice)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = chat_usage(usage)
            if self._strip_usage_chunk and choices == []:
                # The usage-only chunk exists because we asked for it: the client never did.
                self._strip_usage_chunk = False
                return False
        return True

    def _on_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        deltas = delta.get("tool_calls") if isinstance(delta, dict) else None
        if not isinstance(deltas, list):
            return
        choice_index = choice.get("index", 0)
        for part in deltas:
            if not isinstance(part, dict):
                continue
            key = (choice_index, part.get("index", 0))
            function = part.get("function")
            function = function if isinstance(function, dict) else {}
            call_id, name = part.get("id"), function.get("name")
            call_id = call_id if isinstance(call_id, str) else ""
            name = name if isinstance(name, str) else ""
            pending = self._calls.get(key)
            # A new id at a known index is a new call (some compatible servers reuse index 0).
            if pending is None or (call_id and pending.call_id and call_id != pending.call_id):
                self._calls.start(key, call_id, name)
            else:
                pending.call_id = pending.call_id or call_id
                pending.name = pending.name or name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                self._calls.append(key, arguments)
