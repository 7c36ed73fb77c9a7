"""Each provider's usage object, normalised into :class:`TokenUsage`.

``input`` never includes cached input; provider-specific counters go to
``extra`` only when present and non-zero (a zero is the absence of the feature,
recording it would be noise).
"""

from typing import Any

import orjson

from aibridge.recorder.records import TokenUsage


def as_int(value: object) -> int:
    """A token count from untrusted JSON: ints (not bools) and finite floats, else 0."""
    if type(value) is int:
        return value
    if type(value) is float and value == value and abs(value) < 1e18:
        return int(value)
    return 0


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, dict) else {}


def _put_extra(extra: dict[str, int], name: str, value: object) -> None:
    count = as_int(value)
    if count:
        extra[name] = count


def chat_usage(usage: dict[str, Any]) -> TokenUsage:
    """OpenAI chat completions ``usage``."""
    prompt_details = _details(usage, "prompt_tokens_details")
    completion_details = _details(usage, "completion_tokens_details")
    cached = as_int(prompt_details.get("cached_tokens"))
    extra: dict[str, int] = {}
    for name in (
        "reasoning_tokens",
        "audio_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
    ):
        _put_extra(extra, name, completion_details.get(name))
    _put_extra(extra, "input_audio_tokens", prompt_details.get("audio_tokens"))
    return TokenUsage(
        input=max(as_int(usage.get("prompt_tokens")) - cached, 0),
        output=as_int(usage.get("completion_tokens")),
        cache_read=cached,
        extra=extra,
    )


def responses_usage(usage: dict[str, Any]) -> TokenUsage:
    """OpenAI Responses API ``usage``."""
    cached = as_int(_details(usage, "input_tokens_details").get("cached_tokens"))
    extra: dict[str, int] = {}
    _put_extra(
        extra, "reasoning_tokens", _details(usage, "output_tokens_details").get("reasoning_tokens")
    )
    return TokenUsage(
        input=max(as_int(usage.get("input_tokens")) - cached, 0),
        output=as_int(usage.get("output_tokens")),
        cache_read=cached,
        extra=extra,
    )


def merge_anthropic_usage(into: dict[str, Any], later: dict[str, Any]) -> None:
    """Fold a later Anthropic usage object (``message_delta``) over an earlier one.

    Later non-null values win, one level deep into ``cache_creation`` and
    ``server_tool_use``; ``output_tokens`` in ``message_delta`` is cumulative.
    """
    for key, value in later.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **{k: v for k, v in value.items() if v is not None}}
        else:
            into[key] = value


def anthropic_usage(usage: dict[str, Any]) -> TokenUsage:
    """Anthropic Messages ``usage`` (already merged across stream events)."""
    extra: dict[str, int] = {}
    cache_creation = _details(usage, "cache_creation")
    _put_extra(extra, "ephemeral_5m_input_tokens", cache_creation.get("ephemeral_5m_input_tokens"))
    _put_extra(extra, "ephemeral_1h_input_tokens", cache_creation.get("ephemeral_1h_input_tokens"))
    _put_extra(
        extra, "web_search_requests", _details(usage, "server_tool_use").get("web_search_requests")
    )
    return TokenUsage(
        input=as_int(usage.get("input_tokens")),
        output=as_int(usage.get("output_tokens")),
        cache_read=as_int(usage.get("cache_read_input_tokens")),
        cache_write=as_int(usage.get("cache_creation_input_tokens")),
        extra=extra,
    )


def salvage_usage(tail: bytes) -> dict[str, Any] | None:
    """The last ``"usage":{...}`` object found in the tail of a too-large body or event.

    Used when a body or event is past the size we parse (a response carrying
    images, say): usage sits at its end, and a usage object holds only numbers
    and nested objects, so counting braces finds where it ends.
    """
    at = max(tail.rfind(b'"usage":{'), tail.rfind(b'"usage": {'))
    if at < 0:
        return None
    start = tail.index(b"{", at)
    depth = 0
    for i in range(start, min(len(tail), start + 4096)):
        byte = tail[i]
        if byte == 0x7B:  # {
            depth += 1
        elif byte == 0x7D:  # }
            depth -= 1
            if depth == 0:
                try:
                    value = orjson.loads(tail[start : i + 1])
                except orjson.JSONDecodeError:
                    return None
                return value if isinstance(value, dict) else None
    return None
