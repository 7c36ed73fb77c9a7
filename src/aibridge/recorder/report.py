"""Usage report: requests, errors and tokens grouped by user, model, provider or key."""

import asyncio
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from .dburl import DEFAULT_DATABASE_URL, parse_database_url

GROUPS: dict[str, str] = {
    "user": "i.user_id",
    "model": "i.model",
    "provider": "i.provider",
    "key": "i.key_hint",
}
COLUMNS = ("requests", "errors", "input", "output", "cache_read", "cache_write")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_since(text: str) -> float | None:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> seconds; ``all`` -> None (no limit)."""
    t = text.strip().lower()
    if t == "all":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", t)
    if m is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 30m, 24h, 7d, 2w or 'all'")
    return float(m[1]) * _UNITS[m[2]]


def _query(by: str, placeholder: str | None) -> str:
    col = GROUPS[by]
    where = f"WHERE i.started_at >= {placeholder}" if placeholder else ""
    # Aliases avoid input/output, which are keywords in PostgreSQL.
    return f"""
        SELECT {col} AS grp,
               COUNT(*) AS n_requests,
               SUM(CASE WHEN i.status >= 400 OR i.error_type IS NOT NULL
                        THEN 1 ELSE 0 END) AS n_errors,
               CAST(COALESCE(SUM(t.input), 0) AS BIGINT) AS t_input,
               CAST(COALESCE(SUM(t.output), 0) AS BIGINT) AS t_output,
               CAST(COALESCE(SUM(t.cache_read), 0) AS BIGINT) AS t_cache_read,
               CAST(COALESCE(SUM(t.cache_write), 0) AS BIGINT) AS t_cache_write
        FROM interceptions i
        LEFT JOIN token_usages t ON t.interception_id = i.id
        {where}
        GROUP BY {col}
        ORDER BY n_requests DESC, grp
    """


def _to_dicts(by: str, raw: list[tuple[Any, ...]]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for r in raw:
        row: dict[str, object] = {by: r[0] if r[0] is not None else "(none)"}
        for name, value in zip(COLUMNS, r[1:], strict=True):
            row[name] = int(value or 0)
        out.append(row)
    return out


def usage_report(
    database_url: str, since_seconds: float | None, by: str, *, now: float | None = None
) -> list[dict[str, object]]:
    """Aggregate interceptions started in the last ``since_seconds`` (None: all time).

    Each row: ``{by: group, requests, errors, input, output, cache_read, cache_write}``;
    an error is a status >= 400 or a recorded error type. ``now`` is injectable for tests.
    """
    if by not in GROUPS:
        raise ValueError(f"invalid grouping {by!r}: use one of {', '.join(GROUPS)}")
    cutoff = None if since_seconds is None else (now or time.time()) - since_seconds
    db = parse_database_url(database_url)
    if db.sqlite_path is not None:
        return _to_dicts(by, _sqlite_rows(db.sqlite_path, by, cutoff))
    return _to_dicts(by, asyncio.run(_postgres_rows(db.url, by, cutoff)))


def _sqlite_rows(path: Path, by: str, cutoff: float | None) -> list[tuple[Any, ...]]:
    if not path.exists():
        raise ValueError(f"no usage database at {path}")
    # Read-only: a report must never create or migrate a database.
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        if cutoff is None:
            return conn.execute(_query(by, None)).fetchall()
        return conn.execute(_query(by, "?"), (cutoff,)).fetchall()
    finally:
        conn.close()


async def _postgres_rows(url: str, by: str, cutoff: float | None) -> list[tuple[Any, ...]]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        if cutoff is None:
            records = await conn.fetch(_query(by, None))
        else:
            records = await conn.fetch(_query(by, "$1"), cutoff)
        return [tuple(r) for r in records]
    finally:
        await conn.close()


def _configured_database(config: Path) -> str | None:
    """The config file's ``database:`` (``${VAR}`` expanded), without validating the rest:
    reading usage must not need every provider key in the environment."""
    from aibridge.config import _expand, read_yaml

    data = read_yaml(config)
    value = data.get("database") if isinstance(data, dict) else None
    if not isinstance(value, str):
        return None
    expanded: str = _expand(value, "database")
    return expanded


def resolve_database(database: str | None, config: Path | None = None) -> str:
    """--database, else $AIBRIDGE_DATABASE, else the config file's, else the default."""
    if database:
        return database
    env = os.environ.get("AIBRIDGE_DATABASE")
    if env:
        return env
    if config is not None:
        configured = _configured_database(config)
        if configured:
            return configured
    return DEFAULT_DATABASE_URL


def usage_command(
    since: Annotated[
        str, typer.Option(help="Time window: 90s, 30m, 24h, 7d, 2w, or 'all'.")
    ] = "24h",
    by: Annotated[str, typer.Option(help="Group by: user, model, provider or key.")] = "user",
    database: Annotated[
        str | None,
        typer.Option(help="Database URL (default: $AIBRIDGE_DATABASE or sqlite:///aibridge.db)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: Annotated[Path | None, typer.Option(help="aibridge config file.")] = None,
) -> None:
    """Show token usage and requests, grouped by user, model, provider or key."""
    try:
        since_seconds = parse_since(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from exc
    if by not in GROUPS:
        raise typer.BadParameter(f"use one of {', '.join(GROUPS)}", param_hint="--by")
    try:
        url = resolve_database(database, config)
    except (OSError, ValueError) as exc:  # unreadable file, bad YAML, a missing ${VAR}
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        rows = usage_report(url, since_seconds, by)
    except Exception as exc:
        # parse_database_url masks passwords; driver errors don't include them.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if json_output:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    _print_table(rows, by, since)


def _print_table(rows: list[dict[str, object]], by: str, since: str) -> None:
    from rich.console import Console
    from rich.table import Table

    window = "all time" if since.strip().lower() == "all" else f"last {since}"
    table = Table(title=f"aibridge usage by {by} ({window})")
    table.add_column(by)
    for name in COLUMNS:
        table.add_column(name.replace("_", " "), justify="right")
    totals = dict.fromkeys(COLUMNS, 0)
    for row in rows:
        table.add_row(str(row[by]), *(f"{row[c]:,}" for c in COLUMNS))
        for c in COLUMNS:
            value = row[c]
            assert isinstance(value, int)
            totals[c] += value
    if len(rows) > 1:
        table.add_section()
        table.add_row("total", *(f"{totals[c]:,}" for c in COLUMNS), style="bold")
    Console().print(table)
