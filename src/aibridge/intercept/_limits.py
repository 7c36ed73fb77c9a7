"""Bounds on what the interceptors keep, so a hostile or broken peer cannot grow memory."""

MAX_PROMPT = 64 * 1024  # bytes of the recorded prompt
MAX_ERROR = 1024  # bytes of a recorded upstream error message
MAX_TOOL_ARGS = 64 * 1024  # bytes of one tool call's arguments
MAX_TOOL_CALLS = 128  # tool calls kept per response
MAX_HELD_EVENT = 1024 * 1024  # bytes of an incomplete SSE event held back before flushing it
MAX_BLOCKING_BODY = 32 * 1024 * 1024  # bytes of a blocking body copied for parsing at close()
SALVAGE_TAIL = 64 * 1024  # tail kept of an oversized body/event to find its usage in


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never splitting a character."""
    if len(text) * 4 <= limit:  # a character is at most 4 bytes: no need to encode
        return text
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")
