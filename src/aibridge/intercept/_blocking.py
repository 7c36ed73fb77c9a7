"""The observer of a blocking (non-streaming) response body."""

from collections.abc import Callable
from typing import Any

import orjson

from aibridge.intercept._limits import MAX_BLOCKING_BODY, SALVAGE_TAIL
from aibridge.intercept._usage import salvage_usage
from aibridge.recorder.records import TokenUsage, ToolCall

# What one API reads out of a parsed body: (usage, tool calls, error message).
BodyReader = Callable[[dict[str, Any]], tuple[TokenUsage | None, list[ToolCall], str | None]]
UsageReader = Callable[[dict[str, Any]], TokenUsage]


class BlockingObserver:
    """Forwards each piece at once and keeps a copy; ``close()`` parses the body once.

    A body past ``MAX_BLOCKING_BODY`` is not parsed: only its tail is kept, and the
    usage object found there is read.
    """

    __slots__ = (
        "_parts",
        "_read_body",
        "_read_usage",
        "_size",
        "complete",
        "error",
        "tool_calls",
        "usage",
    )

    def __init__(self, read_body: BodyReader, read_usage: UsageReader) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._read_body = read_body
        self._read_usage = read_usage
        self.usage: TokenUsage | None = None
        self.tool_calls: list[ToolCall] = []
        self.complete = False
        self.error: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        self._parts.append(chunk)
        if self._size > MAX_BLOCKING_BODY and len(self._parts) > 1:
            self._parts = [b"".join(self._parts)[-SALVAGE_TAIL:]]
        return chunk

    def close(self) -> bytes:
        body = b"".join(self._parts)
        self._parts = []
        try:
            if self._size > MAX_BLOCKING_BODY:
                usage = salvage_usage(body[-SALVAGE_TAIL:])
                if usage is not None:
                    self.usage = self._read_usage(usage)
                return b""
            parsed = orjson.loads(body)
            if isinstance(parsed, dict):
                self.usage, self.tool_calls, self.error = self._read_body(parsed)
                self.complete = True
        except Exception:  # a non-JSON or odd upstream body just yields nothing
            pass
        return b""
