"""Tool calls assembled from stream deltas, bounded in count and size."""

from collections.abc import Hashable

from aibridge.intercept._limits import MAX_TOOL_ARGS, MAX_TOOL_CALLS, truncate_utf8
from aibridge.recorder.records import ToolCall


class _Pending:
    __slots__ = ("call_id", "name", "parts", "size")

    def __init__(self, call_id: str, name: str) -> None:
        self.call_id = call_id
        self.name = name
        self.parts: list[str] = []
        self.size = 0  # characters so far; characters <= bytes, so it bounds memory


class ToolCallAccumulator:
    """Tool calls keyed by their stream position (chat: choice and index; Anthropic: block)."""

    __slots__ = ("_by_key", "_empty_args", "_order")

    def __init__(self, empty_args: str = "") -> None:
        self._by_key: dict[Hashable, _Pending] = {}
        self._order: list[_Pending] = []
        self._empty_args = empty_args  # Anthropic: a tool_use with no input deltas means {}

    def __len__(self) -> int:
        return len(self._order)

    def start(self, key: Hashable, call_id: str, name: str) -> None:
        if len(self._order) >= MAX_TOOL_CALLS:
            self._by_key.pop(key, None)  # later pieces at this key belong to no kept call
            return
        pending = _Pending(call_id, name)
        self._by_key[key] = pending
        self._order.append(pending)

    def get(self, key: Hashable) -> _Pending | None:
        return self._by_key.get(key)

    def append(self, key: Hashable, piece: str) -> None:
        pending = self._by_key.get(key)
        if pending is None or not piece or pending.size >= MAX_TOOL_ARGS:
            return
        piece = piece[: MAX_TOOL_ARGS - pending.size]
        pending.parts.append(piece)
        pending.size += len(piece)

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(
                name=p.name,
                call_id=p.call_id,
                arguments=truncate_utf8("".join(p.parts), MAX_TOOL_ARGS) or self._empty_args,
            )
            for p in self._order
        ]
