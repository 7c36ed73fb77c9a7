"""Recorder test support: sample records and polling; for PostgreSQL, a throwaway
schema per test and a TCP proxy that can "kill the database" (cut every
connection, refuse new ones) and bring it back."""

import asyncio
import os
import secrets
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from aibridge.recorder import Interception, TokenUsage, ToolCall, mask_url

PG_URL = os.environ.get("AIBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test")


def with_search_path(url: str, schema: str) -> str:
    # asyncpg turns unknown URL query parameters into server settings.
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}search_path={schema}"


def via_port(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port`` (the proxy), keeping user, password, db."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def _try_connect(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=3)
    await conn.close()


def require_postgres() -> None:
    """Skip when nothing answers — but fail under CI=true, where PostgreSQL must be there."""
    try:
        run(_try_connect(PG_URL))
    except Exception as exc:
        msg = f"PostgreSQL not reachable at {mask_url(PG_URL)} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; CI=true requires it")
        pytest.skip(msg + "; set AIBRIDGE_TEST_POSTGRES_URL")


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema ``aibridge_test_<random>``, dropped afterwards; yields its name."""
    require_postgres()
    schema = f"aibridge_test_{secrets.token_hex(6)}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run(execute(f"CREATE SCHEMA {schema}"))
    try:
        yield schema
    finally:
        run(execute(f"DROP SCHEMA {schema} CASCADE"))


async def fetch(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


class TcpProxy:
    """A loopback TCP proxy on its own thread and event loop, with a kill switch."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> "TcpProxy":
        self._thread.start()
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        # Same port every time, so the URL stays valid across cut/restore.
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
            except OSError:
                writer.transport.abort()
                return
            self._transports |= {writer.transport, up_writer.transport}
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    def cut(self) -> None:
        """The database "dies": stop listening and abort every open connection."""
        self._call(self._cut())

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for t in self._transports:
            t.abort()
        self._transports.clear()

    def restore(self) -> None:
        self._call(self._listen())

    def close(self) -> None:
        self.cut()

        async def cancel() -> None:
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self._call(cancel())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


# -- shared by the recorder tests (SQLite and PostgreSQL) ------------------------


def make_interception(n: int, **overrides: Any) -> Interception:
    """A fully populated record; ``n`` varies every field so mix-ups show."""
    import uuid

    fields: dict[str, Any] = {
        "id": str(uuid.UUID(int=(n + 1) * 7919 + (secrets.randbits(64) << 64))),
        "user": f"user{n % 3}",
        "provider": "openai" if n % 2 else "anthropic",
        "provider_type": "openai" if n % 2 else "anthropic",
        "model": f"model-{n % 4}",
        "route": ("chat", "responses", "messages")[n % 3],
        "streaming": bool(n % 2),
        "client": "claude-code",
        "user_agent": f"agent/{n} ünïcode ✓",
        "session_id": None if n % 5 == 0 else f"sess-{n}",
        "credential": "pool" if n % 7 else "byok",
        "key_hint": None if n % 7 == 0 else f"sk-a...{n % 5:04d}",
        "attempts": 1 + n % 3,
        "started_at": 1_700_000_000.0 + n + 0.123456,
        "ended_at": 1_700_000_000.0 + n + 1.5,
        "status": 200 if n % 6 else 429,
        "error_type": None if n % 6 else "rate_limited",
        "error_message": None if n % 6 else f"slow down {n}",
        "usage": None
        if n % 8 == 0
        else TokenUsage(
            input=10 * n,
            output=n,
            cache_read=n % 11,
            cache_write=n % 13,
            extra={"reasoning": n % 5} if n % 2 else {},
        ),
        "prompt": None if n % 4 == 0 else f"prompt {n}\nwith 'quotes' and \"more\"",
        "tool_calls": [
            ToolCall(name=f"tool{k}", call_id=f"call_{n}_{k}", arguments=f'{{"k": {k}}}')
            for k in range(n % 3)
        ],
    }
    fields.update(overrides)
    return Interception(**fields)


def wait_until(predicate: Any, *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail with ``what`` at the deadline (no fixed sleeps)."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def spooled_ids(spool_path: Any) -> list[str]:
    """Ids in the active spool file and any rotated replay files."""
    from pathlib import Path

    import orjson

    p = Path(spool_path)
    ids: list[str] = []
    for f in [*sorted(p.parent.glob(p.name + ".*.replay")), p]:
        if f.exists():
            ids += [orjson.loads(line)["id"] for line in f.read_bytes().splitlines() if line]
    return ids
