"""SQLite backend: stdlib sqlite3, WAL, one connection owned by the writer thread."""

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from .records import Interception
from .schema import (
    CREATE_SCHEMA_TABLE,
    MIGRATIONS,
    MULTI_ROW_CHUNK,
    SCHEMA_TABLE,
    multi_row_insert,
    rows,
)
from .sink import BadRecordError


def migrate_sqlite(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version; returns how many migrations ran.

    ``BEGIN IMMEDIATE`` takes the write lock first, so two processes starting at
    once apply each migration exactly once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(CREATE_SCHEMA_TABLE)
        current = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {SCHEMA_TABLE}").fetchone()[
            0
        ]
        applied = 0
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for stmt in statements:
                conn.execute(stmt)
            conn.execute(
                f"INSERT INTO {SCHEMA_TABLE} (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
            applied += 1
        conn.execute("COMMIT")
        return applied
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def connect_sqlite(path: Path, *, busy_timeout: float = 5.0) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteSink:
    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None

    @property
    def description(self) -> str:
        return f"sqlite:///{self.path}"

    def open(self) -> None:
        self.close()
        if self.path.parent != Path():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect_sqlite(self.path, busy_timeout=self._busy_timeout)
        try:
            migrate_sqlite(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def write(self, batch: Sequence[Interception]) -> None:
        conn = self._conn
        if conn is None:
            raise sqlite3.OperationalError("not connected")
        tables = rows(batch)
        try:
            conn.execute("BEGIN")
            for index, table_rows in enumerate(tables):
                for start in range(0, len(table_rows), MULTI_ROW_CHUNK):
                    chunk = table_rows[start : start + MULTI_ROW_CHUNK]
                    conn.execute(
                        multi_row_insert(index, len(chunk)),
                        [value for row in chunk for value in row],
                    )
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            # OperationalError (locked, I/O, read-only, disk full) or a bare DatabaseError
            # (corrupt file) means "unavailable"; anything else (integrity, binding,
            # encoding, int overflow) is the data's fault.
            if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
                raise
            if isinstance(exc, Exception):
                raise BadRecordError(f"{type(exc).__name__}: {exc}") from exc
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
