"""Pre-encoded bodies and SSE frames in the real OpenAI and Anthropic wire formats.

Everything is serialised once, at construction, with three placeholders left in:
``"__MOCK_MODEL__"`` and ``"__MOCK_TOOL__"`` (whole JSON strings, replaced by the
JSON-encoded model / tool name of the request) and ``__RID__`` (inside id strings,
replaced by a per-request hex id). A request then costs a few ``bytes.replace``.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Final

import orjson

__all__ = [
    "MOCK_COUNT_TOKENS",
    "MOCK_USAGE",
    "PH_MODEL",
    "PH_RID",
    "PH_TOOL",
    "TOOL_ARGUMENTS",
    "TOOL_CALL_ID",
    "TOOL_USE_ID",
    "Payloads",
    "mock_text",
]

MODEL_SLOT: Final = "__MOCK_MODEL__"
TOOL_SLOT: Final = "__MOCK_TOOL__"
PH_MODEL: Final = b'"__MOCK_MODEL__"'
PH_TOOL: Final = b'"__MOCK_TOOL__"'
PH_RID: Final = b"__RID__"

# Every number distinct and non-zero, so a field read from the wrong place shows.
MOCK_USAGE: Final[dict[str, dict[str, Any]]] = {
    "chat": {
        "prompt_tokens": 1200,
        "completion_tokens": 340,
        "total_tokens": 1540,
        "prompt_tokens_details": {"cached_tokens": 700, "audio_tokens": 3},
        "completion_tokens_details": {
            "reasoning_tokens": 120,
            "audio_tokens": 5,
            "accepted_prediction_tokens": 7,
            "rejected_prediction_tokens": 11,
        },
    },
    "responses": {
        "input_tokens": 2100,
        "input_tokens_details": {"cached_tokens": 1500},
        "output_tokens": 410,
        "output_tokens_details": {"reasoning_tokens": 150},
        "total_tokens": 2510,
    },
    # The blocking Messages body; a stream splits it into the two entries below.
    "messages": {
        "input_tokens": 900,
        "output_tokens": 480,
        "cache_creation_input_tokens": 250,
        "cache_read_input_tokens": 3200,
        "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 50},
        "server_tool_use": {"web_search_requests": 2},
        "service_tier": "standard",
    },
    # message_start: input and cache tokens, output_tokens 1 (as Anthropic sends).
    "messages_start": {
        "input_tokens": 900,
        "output_tokens": 1,
        "cache_creation_input_tokens": 250,
        "cache_read_input_tokens": 3200,
        "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 50},
        "service_tier": "standard",
    },
    # message_delta: the final output_tokens (cumulative) and server tool use.
    "messages_delta": {
        "output_tokens": 480,
        "server_tool_use": {"web_search_requests": 2},
    },
    "embeddings": {"prompt_tokens": 8, "total_tokens": 8},
}
MOCK_COUNT_TOKENS: Final = 4321

TOOL_ARGUMENTS: Final = '{"path": "README.md"}'
# Split so every stream carries the arguments over several deltas.
_TOOL_ARGUMENT_PIECES: Final = ('{"pa', 'th": "READ', 'ME.md"}')
TOOL_CALL_ID: Final = "call_mock_0001"
TOOL_USE_ID: Final = "toolu_mock_0001"
_FUNCTION_ITEM_ID: Final = "fc_mock_0001"

_WORDS: Final = ("Hello", " from", " the", " mock", " upstream", ".")
_PREAMBLE_TEXT: Final = "I'll read the file."
EMBEDDING: Final = (0.0125, -0.25, 0.5, 0.75, -1.0, 0.375, 0.0625, -0.125)
_EMBEDDING_B64: Final = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()


def _pieces(chunks: int) -> list[str]:
    return [_WORDS[i % len(_WORDS)] for i in range(max(chunks, 1))]


def mock_text(chunks: int = 20) -> str:
    """The assistant text the mock streams in ``chunks`` deltas (and returns whole)."""
    return "".join(_pieces(chunks))


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _data(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(obj) + b"\n\n"


class Payloads:
    """All static bodies for one ``chunks`` setting, keyed by variant.

    ``bodies[name]`` is one JSON body; ``streams[name]`` is a tuple of SSE frames.
    """

    def __init__(self, chunks: int, created: int) -> None:
        self.chunks = max(chunks, 1)
        self.created = created
        self.text = mock_text(self.chunks)
        self.bodies: dict[str, bytes] = {}
        self.streams: dict[str, tuple[bytes, ...]] = {}
        self._build_chat()
        self._build_responses()
        self._build_messages()
        self._build_misc()

    # -- OpenAI chat completions -------------------------------------------------

    def _build_chat(self) -> None:
        usage = MOCK_USAGE["chat"]
        base = {
            "id": "chatcmpl-__RID__",
            "object": "chat.completion",
            "created": self.created,
            "model": MODEL_SLOT,
        }
        tail = {"service_tier": "default", "system_fingerprint": "fp_mock"}
        for tools in (False, True):
            if tools:
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": TOOL_CALL_ID,
                            "type": "function",
                            "function": {"name": TOOL_SLOT, "arguments": TOOL_ARGUMENTS},
                        }
                    ],
                    "refusal": None,
                    "annotations": [],
                }
                finish = "tool_calls"
            else:
                message = {
                    "role": "assistant",
                    "content": self.text,
                    "refusal": None,
                    "annotations": [],
                }
                finish = "stop"
            body = {
                **base,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
                **tail,
            }
            suffix = ".tools" if tools else ""
            self.bodies["chat" + suffix] = _dumps(body)

            for include_usage in (False, True):
                chunk_base = {**base, "object": "chat.completion.chunk"}

                def chunk(
                    delta: dict[str, Any],
                    finish_reason: str | None = None,
                    chunk_base: dict[str, Any] = chunk_base,
                    include_usage: bool = include_usage,
                ) -> bytes:
                    obj: dict[str, Any] = {
                        **chunk_base,
                        **tail,
                        "choices": [
                            {
                                "index": 0,
                                "delta": delta,
                                "logprobs": None,
                                "finish_reason": finish_reason,
                            }
                        ],
                    }
                    if include_usage:
                        obj["usage"] = None
                    return _data(obj)

                frames: list[bytes] = []
                if tools:
                    frames.append(
                        chunk(
                            {
                                "role": "assistant",
                                "content": None,
                                "tool_calls": [
                                    {
                                        "index": 0,
                                        "id": TOOL_CALL_ID,
                                        "type": "function",
                                        "function": {"name": TOOL_SLOT, "arguments": ""},
                                    }
                                ],
                                "refusal": None,
                            }
                        )
                    )
                    frames.extend(
                        chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                        for piece in _TOOL_ARGUMENT_PIECES
                    )
                else:
                    frames.append(chunk({"role": "assistant", "content": "", "refusal": None}))
                    frames.extend(chunk({"content": piece}) for piece in _pieces(self.chunks))
                frames.append(chunk({}, finish))
                if include_usage:
                    frames.append(_data({**chunk_base, **tail, "choices": [], "usage": usage}))
                frames.append(b"data: [DONE]\n\n")
                name = "chat" + suffix + (".usage" if include_usage else "")
                self.streams[name] = tuple(frames)

    # -- OpenAI responses ----------------------------------------------------------

    def _response(self, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        return {
            "id": "resp___RID__",
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "max_tool_calls": None,
            "model": MODEL_SLOT,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    def _build_responses(self) -> None:
        usage = MOCK_USAGE["responses"]
        msg_id = "msg___RID__"
        text_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": self.text}
        message_done = {
            "id": msg_id,
            "type": "message",
            "status": "completed",
            "content": [text_part],
            "role": "assistant",
        }
        call_done = {
            "id": _FUNCTION_ITEM_ID,
            "type": "function_call",
            "status": "completed",
            "arguments": TOOL_ARGUMENTS,
            "call_id": TOOL_CALL_ID,
            "name": TOOL_SLOT,
        }
        for tools in (False, True):
            suffix = ".tools" if tools else ""
            item_done = call_done if tools else message_done
            self.bodies["responses" + suffix] = _dumps(
                self._response("completed", [item_done], usage)
            )

            events: list[tuple[str, dict[str, Any]]] = [
                ("response.created", {"response": self._response("in_progress", [], None)}),
                ("response.in_progress", {"response": self._response("in_progress", [], None)}),
            ]
            if tools:
                events.append(
                    (
                        "response.output_item.added",
                        {
                            "output_index": 0,
                            "item": {**call_done, "status": "in_progress", "arguments": ""},
                        },
                    )
                )
                events.extend(
                    (
                        "response.function_call_arguments.delta",
                        {"item_id": _FUNCTION_ITEM_ID, "output_index": 0, "delta": piece},
                    )
                    for piece in _TOOL_ARGUMENT_PIECES
                )
                events.append(
                    (
                        "response.function_call_arguments.done",
                        {
                            "item_id": _FUNCTION_ITEM_ID,
                            "output_index": 0,
                            "arguments": TOOL_ARGUMENTS,
                        },
                    )
                )
            else:
                where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
                events.append(
                    (
                        "response.output_item.added",
                        {
                            "output_index": 0,
                            "item": {**message_done, "status": "in_progress", "content": []},
                        },
                    )
                )
                events.append(
                    ("response.content_part.added", {**where, "part": {**text_part, "text": ""}})
                )
                events.extend(
                    ("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
                    for piece in _pieces(self.chunks)
                )
                events.append(
                    ("response.output_text.done", {**where, "text": self.text, "logprobs": []})
                )
                events.append(("response.content_part.done", {**where, "part": text_part}))
            events.append(("response.output_item.done", {"output_index": 0, "item": item_done}))
            events.append(
                (
                    "response.completed",
                    {"response": self._response("completed", [item_done], usage)},
                )
            )
            self.streams["responses" + suffix] = tuple(
                _event(name, {"type": name, "sequence_number": seq, **fields})
                for seq, (name, fields) in enumerate(events)
            )

    # -- Anthropic messages --------------------------------------------------------

    def _build_messages(self) -> None:
        usage = MOCK_USAGE["messages"]
        base = {
            "id": "msg___RID__",
            "type": "message",
            "role": "assistant",
            "model": MODEL_SLOT,
        }
        tool_use = {
            "type": "tool_use",
            "id": TOOL_USE_ID,
            "name": TOOL_SLOT,
            "input": orjson.loads(TOOL_ARGUMENTS),
        }
        for tools in (False, True):
            suffix = ".tools" if tools else ""
            text = _PREAMBLE_TEXT if tools else self.text
            content: list[Any] = [{"type": "text", "text": text}]
            if tools:
                content.append(tool_use)
            stop_reason = "tool_use" if tools else "end_turn"
            self.bodies["messages" + suffix] = _dumps(
                {
                    **base,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                }
            )

            text_pieces = [_PREAMBLE_TEXT] if tools else _pieces(self.chunks)
            events: list[tuple[str, dict[str, Any]]] = [
                (
                    "message_start",
                    {
                        "message": {
                            **base,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": MOCK_USAGE["messages_start"],
                        }
                    },
                ),
                (
                    "content_block_start",
                    {"index": 0, "content_block": {"type": "text", "text": ""}},
                ),
                ("ping", {}),
            ]
            events.extend(
                (
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": piece}},
                )
                for piece in text_pieces
            )
            events.append(("content_block_stop", {"index": 0}))
            if tools:
                events.append(
                    (
                        "content_block_start",
                        {"index": 1, "content_block": {**tool_use, "input": {}}},
                    )
                )
                events.extend(
                    (
                        "content_block_delta",
                        {"index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}},
                    )
                    for piece in _TOOL_ARGUMENT_PIECES
                )
                events.append(("content_block_stop", {"index": 1}))
            events.append(
                (
                    "message_delta",
                    {
                        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                        "usage": MOCK_USAGE["messages_delta"],
                    },
                )
            )
            events.append(("message_stop", {}))
            self.streams["messages" + suffix] = tuple(
                _event(name, {"type": name, **fields}) for name, fields in events
            )

    # -- the rest ------------------------------------------------------------------

    def _build_misc(self) -> None:
        self.bodies["count_tokens"] = _dumps({"input_tokens": MOCK_COUNT_TOKENS})
        openai_models = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "text-embedding-3-small"]
        self.openai_models = [
            {"id": m, "object": "model", "created": self.created, "owned_by": "openai"}
            for m in openai_models
        ]
        self.bodies["openai.models"] = _dumps({"object": "list", "data": self.openai_models})
        anthropic_models = [
            ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
            ("claude-opus-4-1", "Claude Opus 4.1"),
            ("claude-haiku-4-5", "Claude Haiku 4.5"),
        ]
        self.anthropic_models = [
            {
                "type": "model",
                "id": m,
                "display_name": name,
                "created_at": "2025-09-29T00:00:00Z",
            }
            for m, name in anthropic_models
        ]
        self.bodies["anthropic.models"] = _dumps(
            {
                "data": self.anthropic_models,
                "has_more": False,
                "first_id": self.anthropic_models[0]["id"],
                "last_id": self.anthropic_models[-1]["id"],
            }
        )

    def openai_model(self, model_id: str) -> bytes:
        return _dumps(
            {"id": model_id, "object": "model", "created": self.created, "owned_by": "openai"}
        )

    def anthropic_model(self, model_id: str) -> bytes:
        return _dumps(
            {
                "type": "model",
                "id": model_id,
                "display_name": model_id,
                "created_at": "2025-09-29T00:00:00Z",
            }
        )

    def embeddings(self, model: bytes, count: int, as_base64: bool) -> bytes:
        vector: Any = _EMBEDDING_B64 if as_base64 else list(EMBEDDING)
        data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)]
        body = _dumps(
            {"object": "list", "data": data, "model": MODEL_SLOT, "usage": MOCK_USAGE["embeddings"]}
        )
        return body.replace(PH_MODEL, model)
