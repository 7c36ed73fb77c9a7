"""The usage schema, its versioned migrations, and the row shapes the writers insert.

One logical schema for SQLite and PostgreSQL: the DDL below is valid in both
(SQLite maps BIGINT/BOOLEAN/DOUBLE PRECISION to its affinities), so the report
queries are the same too. Times are epoch seconds (DOUBLE PRECISION) on both.

Every table has a deterministic primary key (children are keyed by the
interception id, tool calls by their position), and every insert is
``ON CONFLICT DO NOTHING``: replaying a record that already arrived is a no-op.
"""

import functools
from collections.abc import Sequence
from typing import Any

import orjson

from .records import Interception

SCHEMA_TABLE = "aibridge_schema"

CREATE_SCHEMA_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
    "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)

# (version, statements). Append new versions; never edit an applied one.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE interceptions (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                provider TEXT NOT NULL,
                provider_type TEXT NOT NULL,
                model TEXT NOT NULL,
                route TEXT NOT NULL,
                streaming BOOLEAN NOT NULL,
                client TEXT NOT NULL,
                user_agent TEXT NOT NULL,
                session_id TEXT,
                credential TEXT NOT NULL,
                key_hint TEXT,
                attempts INTEGER NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                ended_at DOUBLE PRECISION NOT NULL,
                status INTEGER NOT NULL,
                error_type TEXT,
                error_message TEXT
            )""",
            """CREATE TABLE token_usages (
                interception_id TEXT PRIMARY KEY
                    REFERENCES interceptions (id) ON DELETE CASCADE,
                input BIGINT NOT NULL,
                output BIGINT NOT NULL,
                cache_read BIGINT NOT NULL,
                cache_write BIGINT NOT NULL,
                extra TEXT NOT NULL
            )""",
            """CREATE TABLE user_prompts (
                interception_id TEXT PRIMARY KEY
                    REFERENCES interceptions (id) ON DELETE CASCADE,
                prompt TEXT NOT NULL
            )""",
            """CREATE TABLE tool_usages (
                interception_id TEXT NOT NULL
                    REFERENCES interceptions (id) ON DELETE CASCADE,
                seq INTEGER NOT NULL,
                name TEXT NOT NULL,
                call_id TEXT NOT NULL,
                arguments TEXT NOT NULL,
                PRIMARY KEY (interception_id, seq)
            )""",
            "CREATE INDEX interceptions_started_at ON interceptions (started_at)",
            "CREATE INDEX interceptions_user_started ON interceptions (user_id, started_at)",
            "CREATE INDEX interceptions_model_started ON interceptions (model, started_at)",
        ),
    ),
)

_TABLES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "interceptions",
        (
            "id",
            "user_id",
            "provider",
            "provider_type",
            "model",
            "route",
            "streaming",
            "client",
            "user_agent",
            "session_id",
            "credential",
            "key_hint",
            "attempts",
            "started_at",
            "ended_at",
            "status",
            "error_type",
            "error_message",
        ),
        ("id",),
    ),
    (
        "token_usages",
        ("interception_id", "input", "output", "cache_read", "cache_write", "extra"),
        ("interception_id",),
    ),
    ("user_prompts", ("interception_id", "prompt"), ("interception_id",)),
    (
        "tool_usages",
        ("interception_id", "seq", "name", "call_id", "arguments"),
        ("interception_id", "seq"),
    ),
)


def insert_statements(placeholder: str) -> tuple[str, str, str, str]:
    """INSERT ... ON CONFLICT DO NOTHING for the four tables, in ``rows()`` order.

    ``placeholder`` is ``"?"`` (sqlite3) or ``"$"`` (asyncpg: ``$1, $2, ...``).
    """
    out: list[str] = []
    for table, cols, key in _TABLES:
        if placeholder == "$":
            marks = ", ".join(f"${n}" for n in range(1, len(cols) + 1))
        else:
            marks = ", ".join("?" for _ in cols)
        out.append(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
        )
    return out[0], out[1], out[2], out[3]


Row = tuple[Any, ...]

# Rows per multi-row INSERT in SQLite (64 x 18 columns stays far below its 32766 limit).
MULTI_ROW_CHUNK = 64


@functools.cache
def multi_row_insert(table_index: int, rows_count: int) -> str:
    """``INSERT ... VALUES (?,..),(?,..) ... ON CONFLICT DO NOTHING`` for SQLite.

    One statement for many rows instead of ``executemany``: the stdlib driver
    releases and retakes the GIL around every ``sqlite3_step``, and with the event
    loop busy in the other thread each of those handoffs is a wait. Measured here
    with a busy main thread: 15-21 µs per record with executemany, 5-6 with this.
    """
    table, cols, key = _TABLES[table_index]
    row = "(" + ", ".join("?" for _ in cols) + ")"
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES {', '.join([row] * rows_count)} "
        f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
    )


def rows(batch: Sequence[Interception]) -> tuple[list[Row], list[Row], list[Row], list[Row]]:
    """Rows for (interceptions, token_usages, user_prompts, tool_usages)."""
    inter: list[Row] = []
    usage: list[Row] = []
    prompts: list[Row] = []
    tools: list[Row] = []
    for i in batch:
        inter.append(
            (
                i.id,
                i.user,
                i.provider,
                i.provider_type,
                i.model,
                i.route,
                i.streaming,
                i.client,
                i.user_agent,
                i.session_id,
                i.credential,
                i.key_hint,
                i.attempts,
                i.started_at,
                i.ended_at,
                i.status,
                i.error_type,
                i.error_message,
            )
        )
        u = i.usage
        if u is not None:
            extra = orjson.dumps(u.extra, option=orjson.OPT_SORT_KEYS).decode()
            usage.append((i.id, u.input, u.output, u.cache_read, u.cache_write, extra))
        if i.prompt is not None:
            prompts.append((i.id, i.prompt))
        for seq, t in enumerate(i.tool_calls):
            tools.append((i.id, seq, t.name, t.call_id, t.arguments))
    return inter, usage, prompts, tools
