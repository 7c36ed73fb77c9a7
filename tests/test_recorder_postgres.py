"""The recorder against a real PostgreSQL: round trip, idempotence, migrations, and
an outage — the database "killed" by cutting a TCP proxy in front of it."""

import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from aibridge.recorder import Interception, TokenUsage, ToolCall, open_recorder
from aibridge.recorder.postgres import migrate_postgres
from aibridge.recorder.report import usage_report
from pg_support import (
    PG_URL,
    TcpProxy,
    fetch,
    make_interception,
    pg_schema,
    run,
    spooled_ids,
    target_of,
    via_port,
    wait_until,
    with_search_path,
)

FAST = {"flush_interval": 0.02, "retry_initial": 0.02, "retry_max": 0.2}


@pytest.fixture
def schema() -> Iterator[str]:
    with pg_schema() as name:
        yield name


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    yield
    assert not [t for t in threading.enumerate() if t.name == "aibridge-recorder"]


def read_back(url: str) -> dict[str, Interception]:
    out: dict[str, Interception] = {}
    for r in run(fetch(url, "SELECT * FROM interceptions")):
        out[r[0]] = Interception(*r)
    for iid, inp, outp, cr, cw, extra in run(fetch(url, "SELECT * FROM token_usages")):
        out[iid].usage = TokenUsage(inp, outp, cr, cw, orjson.loads(extra))
    for iid, prompt in run(fetch(url, "SELECT * FROM user_prompts")):
        out[iid].prompt = prompt
    for iid, _seq, name, call_id, args in run(
        fetch(url, "SELECT * FROM tool_usages ORDER BY interception_id, seq")
    ):
        out[iid].tool_calls.append(ToolCall(name, call_id, args))
    return out


def ids_in_db(url: str) -> list[str]:
    try:
        return [r[0] for r in run(fetch(url, "SELECT id FROM interceptions"))]
    except Exception:  # schema not created yet, or the proxy is cut
        return []


def test_postgres_round_trip_idempotent_and_migrations(schema: str, tmp_path: Path) -> None:
    url = with_search_path(PG_URL, schema)
    spool = tmp_path / "spool.jsonl"
    records = [make_interception(n) for n in range(80)]
    rec = open_recorder(url, spool_path=spool, batch_size=32, **FAST)
    for r in records:
        rec.record(r)
    rec.close()
    assert read_back(url) == {r.id: r for r in records}

    # Replaying the same records (a crash mid-replay) stores nothing twice;
    # a second start on the existing schema migrates nothing.
    rec = open_recorder(url, spool_path=spool, **FAST)
    for r in records[:40]:
        rec.record(r)
    rec.close()
    assert sorted(ids_in_db(url)) == sorted(r.id for r in records)
    assert run(fetch(url, "SELECT version FROM aibridge_schema")) == [(1,)]

    async def migrate_again() -> int:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return int(await migrate_postgres(conn))
        finally:
            await conn.close()

    assert run(migrate_again()) == 0

    rows = usage_report(url, None, "model")
    assert sum(int(str(r["requests"])) for r in rows) == 80
    assert {r["model"] for r in rows} == {f"model-{k}" for k in range(4)}


def test_postgres_nul_in_prompt_is_stored(schema: str, tmp_path: Path) -> None:
    url = with_search_path(PG_URL, schema)
    rec = open_recorder(url, spool_path=tmp_path / "s.jsonl", **FAST)
    r = make_interception(1, prompt="a\x00b")
    rec.record(r)
    rec.close()
    assert read_back(url)[r.id].prompt == "a\ufffdb"
    assert rec.stats()["rejected"] == 0


def test_postgres_outage_via_proxy(schema: str, tmp_path: Path) -> None:
    proxy = TcpProxy(*target_of(PG_URL)).start()
    try:
        url = with_search_path(via_port(PG_URL, proxy.port), schema)
        direct = with_search_path(PG_URL, schema)  # the test's own view of the database
        spool = tmp_path / "spool.jsonl"
        rec = open_recorder(url, spool_path=spool, batch_size=25, **FAST)

        before = [make_interception(n) for n in range(100)]
        for r in before:
            rec.record(r)
        wait_until(lambda: len(ids_in_db(direct)) == 100, what="records before the outage")

        proxy.cut()  # the database "dies"
        during = [make_interception(n) for n in range(100, 220)]
        for r in during:
            rec.record(r)
        wait_until(lambda: len(spooled_ids(spool)) == len(during), what="outage records spooled")
        assert sorted(spooled_ids(spool)) == sorted(r.id for r in during)
        assert rec.stats()["database_up"] == 0

        proxy.restore()  # and comes back
        after = [make_interception(n) for n in range(220, 300)]
        for r in after:
            rec.record(r)
        everything = before + during + after
        wait_until(
            lambda: len(ids_in_db(direct)) == len(everything),
            timeout=15,
            what="every record in PostgreSQL after the outage",
        )
        rec.close()
        stored = ids_in_db(direct)
        assert len(stored) == len(set(stored))
        assert set(stored) == {r.id for r in everything}
        assert read_back(direct) == {r.id: r for r in everything}
        assert spooled_ids(spool) == []
        stats = rec.stats()
        assert stats["dropped"] == 0
        assert stats["replayed"] >= len(during)
    finally:
        proxy.close()


def test_postgres_down_at_startup_then_up(schema: str, tmp_path: Path) -> None:
    proxy = TcpProxy(*target_of(PG_URL)).start()
    try:
        proxy.cut()
        url = with_search_path(via_port(PG_URL, proxy.port), schema)
        spool = tmp_path / "spool.jsonl"
        rec = open_recorder(url, spool_path=spool, **FAST)
        records = [make_interception(n) for n in range(30)]
        for r in records:
            rec.record(r)
        wait_until(lambda: len(spooled_ids(spool)) == 30, what="records spooled")
        proxy.restore()
        direct = with_search_path(PG_URL, schema)
        wait_until(lambda: len(ids_in_db(direct)) == 30, what="records replayed")
        rec.close()
        assert spooled_ids(spool) == []
    finally:
        proxy.close()
