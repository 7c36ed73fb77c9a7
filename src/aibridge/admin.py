"""The admin API: see every key's health and steer it.

Served under ``/admin/`` only when ``admin.token`` is configured (401
otherwise); the token is compared in constant time. Keys are named by their
fingerprint, never by value.
"""

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from aibridge.asgi import Receive, Scope, Send, send_whole
from aibridge.auth import bearer_token
from aibridge.keypool import Key, Pool

if TYPE_CHECKING:
    from aibridge.app import Gateway

_JSON = (b"content-type", b"application/json")


def key_view(key: Key, pool: Pool) -> dict[str, Any]:
    """What an operator needs to know about one key (times as wall-clock epochs)."""
    now_mono = pool.clock.now()
    now_wall = time.time()

    def wall(t: float | None) -> float | None:
        return None if t is None else round(now_wall - (now_mono - t), 3)

    return {
        "fingerprint": key.fingerprint,
        "hint": key.hint,
        "state": key.state().value,
        "reason": key.reason,
        "cooldown_remaining": round(key.cooldown_remaining(), 3),
        "consecutive_failures": key.consecutive_failures,
        "last_status": key.last_status,
        "last_failure_at": wall(key.last_failure_at),
        "served": key.served,
        "last_used": wall(key.last_used),
    }


def keys_document(gateway: "Gateway") -> dict[str, Any]:
    return {
        "providers": [
            {
                "name": rt.name,
                "type": rt.type.TYPE,
                "strategy": rt.config.strategy,
                "keys": [key_view(k, rt.pool) for k in rt.pool.keys],
            }
            for rt in gateway.providers.values()
        ]
    }


async def _json(send: Send, status: int, document: Any) -> None:
    await send_whole(send, status, [_JSON], orjson.dumps(document))


async def _error(send: Send, status: int, message: str) -> None:
    await _json(send, status, {"error": {"message": message, "status": status}})


async def handle_admin(
    gateway: "Gateway",
    scope: Scope,
    receive: Receive,
    send: Send,
    reload: Callable[[], Awaitable[str | None]],
) -> None:
    admin = gateway.config.admin
    presented: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            presented = bearer_token(value.decode("latin-1"))
        elif name == b"x-aibridge-admin-token" and presented is None:
            presented = value.decode("latin-1")
    if admin is None:
        await _error(send, 401, "the admin API is disabled: configure admin.token")
        return
    if presented is None or not hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), admin.token.encode()
    ):
        await _error(send, 401, "invalid admin token")
        return
    method: str = scope["method"]
    parts = scope["path"].strip("/").split("/")  # ["admin", ...]
    if parts == ["admin", "keys"]:
        if method != "GET":
            await _error(send, 405, "use GET")
            return
        await _json(send, 200, keys_document(gateway))
        return
    if parts == ["admin", "reload"]:
        if method != "POST":
            await _error(send, 405, "use POST")
            return
        problem = await reload()
        if problem is not None:
            await _error(send, 400, f"reload rejected, the old config keeps serving: {problem}")
            return
        await _json(send, 200, {"reloaded": True, **keys_document(gateway)})
        return
    if len(parts) == 5 and parts[:2] == ["admin", "keys"] and parts[4] in ("enable", "disable"):
        if method != "POST":
            await _error(send, 405, "use POST")
            return
        rt = gateway.providers.get(parts[2])
        key = None
        if rt is not None:
            key = next((k for k in rt.pool.keys if k.fingerprint == parts[3]), None)
        if rt is None or key is None:
            await _error(send, 404, "no such provider or key fingerprint")
            return
        if parts[4] == "disable":
            key.mark_permanent("disabled")
        else:
            key.enable()
        await _json(send, 200, {"provider": rt.name, **key_view(key, rt.pool)})
        return
    await _error(send, 404, "unknown admin route")
