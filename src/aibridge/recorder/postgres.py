"""PostgreSQL backend: asyncpg on the writer thread's own private event loop.

The gateway's loop never touches this connection: the writer thread owns a
loop of its own and drives it with ``run_until_complete``, one batch at a time.
"""

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from aibridge.masked_url import mask_url

from .records import Interception
from .schema import (
    CREATE_SCHEMA_TABLE,
    MIGRATIONS,
    SCHEMA_TABLE,
    Row,
    insert_statements,
    rows,
)
from .sink import BadRecordError

_INSERTS = insert_statements("$")
_MIGRATION_LOCK = 0x41494272  # pg_advisory_xact_lock key: "AIBr"


async def migrate_postgres(conn: Any) -> int:
    """Bring the schema to the latest version; returns how many migrations ran.

    An advisory lock serialises replicas starting at the same time.
    """
    applied = 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(CREATE_SCHEMA_TABLE)
        current = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {SCHEMA_TABLE}")
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for stmt in statements:
                await conn.execute(stmt)
            await conn.execute(
                f"INSERT INTO {SCHEMA_TABLE} (version, applied_at) VALUES ($1, $2)",
                version,
                time.time(),
            )
            applied += 1
    return applied


def _is_data_error(exc: BaseException) -> bool:
    """True when the data is at fault (retrying the same rows cannot succeed)."""
    if isinstance(exc, asyncpg.exceptions.DataError | UnicodeError | OverflowError | TypeError):
        return True  # client-side encoding of an argument failed
    sqlstate = getattr(exc, "sqlstate", None)
    # 22: data exception (bad encoding, out of range); 23: integrity violation.
    return isinstance(exc, asyncpg.PostgresError) and str(sqlstate)[:2] in ("22", "23")


def _no_nul(rows_: list[Row]) -> list[Row]:
    # PostgreSQL text cannot hold U+0000, and a prompt may contain one: replace it
    # rather than reject the whole record.
    return [
        tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v for v in r)
        for r in rows_
    ]


class PostgresSink:
    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self._url = url
        self._masked = mask_url(url)
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._server_settings = server_settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None

    @property
    def description(self) -> str:
        return self._masked

    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def open(self) -> None:
        self._drop_connection()
        try:
            self._conn = self._run(self._open())
        except ValueError:
            # asyncpg's own parse errors quote pieces of the URL, password included.
            raise ValueError(f"invalid PostgreSQL URL {self._masked}") from None

    async def _open(self) -> Any:
        conn = await asyncpg.connect(
            self._url,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings=self._server_settings,
        )
        try:
            await migrate_postgres(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def write(self, batch: Sequence[Interception]) -> None:
        if self._conn is None:
            raise ConnectionError("not connected")
        try:
            self._run(self._write(self._conn, batch))
        except Exception as exc:
            if _is_data_error(exc):
                raise BadRecordError(f"{type(exc).__name__}: {exc}") from exc
            self._drop_connection()  # reconnect on the next open()
            raise

    @staticmethod
    async def _write(conn: Any, batch: Sequence[Interception]) -> None:
        inter, usage, prompts, tools = rows(batch)
        async with conn.transaction():
            await conn.executemany(_INSERTS[0], _no_nul(inter))
            if usage:
                await conn.executemany(_INSERTS[1], _no_nul(usage))
            if prompts:
                await conn.executemany(_INSERTS[2], _no_nul(prompts))
            if tools:
                await conn.executemany(_INSERTS[3], _no_nul(tools))

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # no round trip: the connection may be dead

    def close(self) -> None:
        conn, self._conn = self._conn, None
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            if conn is not None:
                try:
                    loop.run_until_complete(conn.close(timeout=2.0))
                except Exception:
                    conn.terminate()
        finally:
            loop.close()
