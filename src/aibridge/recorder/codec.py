"""Explicit, versioned dict form of an Interception, for the spool file.

Written by hand rather than via ``dataclasses.asdict`` so the on-disk format is
stable and readable by an older/newer aibridge; unknown keys are ignored on read.
"""

from collections.abc import Mapping
from typing import Any

import orjson

from .records import Interception, TokenUsage, ToolCall

FORMAT_VERSION = 1


def interception_to_dict(i: Interception) -> dict[str, Any]:
    usage = i.usage
    return {
        "v": FORMAT_VERSION,
        "id": i.id,
        "user": i.user,
        "provider": i.provider,
        "provider_type": i.provider_type,
        "model": i.model,
        "route": i.route,
        "streaming": i.streaming,
        "client": i.client,
        "user_agent": i.user_agent,
        "session_id": i.session_id,
        "credential": i.credential,
        "key_hint": i.key_hint,
        "attempts": i.attempts,
        "started_at": i.started_at,
        "ended_at": i.ended_at,
        "status": i.status,
        "error_type": i.error_type,
        "error_message": i.error_message,
        "usage": None
        if usage is None
        else {
            "input": usage.input,
            "output": usage.output,
            "cache_read": usage.cache_read,
            "cache_write": usage.cache_write,
            "extra": dict(usage.extra),
        },
        "prompt": i.prompt,
        "tool_calls": [
            {"name": t.name, "call_id": t.call_id, "arguments": t.arguments} for t in i.tool_calls
        ],
    }


def interception_from_dict(d: Mapping[str, Any]) -> Interception:
    u = d.get("usage")
    usage = (
        None
        if u is None
        else TokenUsage(
            input=int(u.get("input", 0)),
            output=int(u.get("output", 0)),
            cache_read=int(u.get("cache_read", 0)),
            cache_write=int(u.get("cache_write", 0)),
            extra={str(k): int(v) for k, v in (u.get("extra") or {}).items()},
        )
    )
    return Interception(
        id=d["id"],
        user=d["user"],
        provider=d["provider"],
        provider_type=d["provider_type"],
        model=d["model"],
        route=d["route"],
        streaming=bool(d["streaming"]),
        client=d["client"],
        user_agent=d["user_agent"],
        session_id=d.get("session_id"),
        credential=d["credential"],
        key_hint=d.get("key_hint"),
        attempts=int(d["attempts"]),
        started_at=float(d["started_at"]),
        ended_at=float(d["ended_at"]),
        status=int(d["status"]),
        error_type=d.get("error_type"),
        error_message=d.get("error_message"),
        usage=usage,
        prompt=d.get("prompt"),
        tool_calls=[
            ToolCall(name=t["name"], call_id=t["call_id"], arguments=t["arguments"])
            for t in d.get("tool_calls") or ()
        ],
    )


def dumps_line(i: Interception) -> bytes:
    """One JSON line (with its newline) for the spool."""
    return orjson.dumps(interception_to_dict(i), option=orjson.OPT_APPEND_NEWLINE)


def loads_line(line: bytes) -> Interception:
    return interception_from_dict(orjson.loads(line))
