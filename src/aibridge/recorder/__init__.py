"""Recording interceptions into SQLite or PostgreSQL, off the request path.

``open_recorder(url)`` returns a Recorder whose ``record()`` is an O(1),
non-blocking, never-raising hand-off from the event loop; one background thread
writes batches, and a local spool file holds records while the database is slow
or down (replayed, idempotently, when it is back). See ``writer.py``.
"""

from pathlib import Path
from typing import Protocol, TypedDict, Unpack

from aibridge.masked_url import mask_url

from .dburl import DEFAULT_DATABASE_URL, parse_database_url
from .postgres import PostgresSink
from .records import Interception, TokenUsage, ToolCall
from .sink import Sink
from .spool import Spool
from .sqlite import SqliteSink
from .writer import BatchRecorder

__all__ = [
    "DEFAULT_DATABASE_URL",
    "BatchRecorder",
    "Interception",
    "NullRecorder",
    "PostgresSink",
    "Recorder",
    "Sink",
    "Spool",
    "SqliteSink",
    "TokenUsage",
    "ToolCall",
    "mask_url",
    "open_recorder",
    "parse_database_url",
]

DEFAULT_PG_SPOOL = "aibridge-spool.jsonl"


class Recorder(Protocol):
    def record(self, interception: Interception) -> None:
        """Hand over one finished interception; O(1), non-blocking, thread-safe, never raises."""

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything queued (to the database, or the spool if it is down); stop."""

    def stats(self) -> dict[str, int]:
        """Counters: queued, written, spooled, replayed, rejected, dropped, database_up."""


class NullRecorder:
    """Records nothing (recording disabled)."""

    def record(self, interception: Interception) -> None:
        pass

    def close(self, timeout: float = 10.0) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}


class BatchOptions(TypedDict, total=False):
    """``BatchRecorder``'s tuning, passed through (its defaults are the only ones)."""

    batch_size: int
    flush_interval: float
    queue_size: int
    retry_initial: float
    retry_max: float


def open_recorder(
    database_url: str | None,
    *,
    spool_path: str | Path | None = None,
    **options: Unpack[BatchOptions],
) -> Recorder:
    """Start a recorder for ``database_url`` (default ``sqlite:///aibridge.db``).

    The spool defaults to ``<db stem>-spool.jsonl`` next to a SQLite file, or
    ``./aibridge-spool.jsonl`` for PostgreSQL. Raises ValueError for an unknown
    URL scheme (with any password masked). The database need not be up: records
    are spooled until it is. ``none`` records nothing (an explicit opt-out).
    """
    if database_url == "none":
        return NullRecorder()
    db = parse_database_url(database_url)
    sink: Sink
    if db.sqlite_path is not None:
        sink = SqliteSink(db.sqlite_path)
        default_spool = db.sqlite_path.with_name(db.sqlite_path.stem + "-spool.jsonl")
    else:
        sink = PostgresSink(db.url)
        default_spool = Path(DEFAULT_PG_SPOOL)
    return BatchRecorder(
        sink, Spool(spool_path if spool_path is not None else default_spool), **options
    )
