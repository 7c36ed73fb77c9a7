"""The recorder against a real SQLite file: exact round trips, idempotent replay,
outages (a locked database), a full queue, threads, and the cost of record()."""

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from aibridge.recorder import (
    BatchRecorder,
    Interception,
    NullRecorder,
    Spool,
    SqliteSink,
    TokenUsage,
    ToolCall,
    mask_url,
    open_recorder,
    parse_database_url,
)
from aibridge.recorder.codec import interception_from_dict, interception_to_dict
from aibridge.recorder.sqlite import connect_sqlite, migrate_sqlite
from pg_support import make_interception, spooled_ids, wait_until

FAST = {"flush_interval": 0.02, "retry_initial": 0.02, "retry_max": 0.1}


def read_back(db: Path) -> dict[str, Interception]:
    """Rebuild Interceptions from the four tables (the test's independent reader)."""
    conn = sqlite3.connect(db)
    try:
        out: dict[str, Interception] = {}
        for r in conn.execute("SELECT * FROM interceptions"):
            (id_, user, provider, ptype, model, route, streaming, client, ua, sess) = r[:10]
            (cred, hint, attempts, started, ended, status, etype, emsg) = r[10:]
            out[id_] = Interception(
                id=id_,
                user=user,
                provider=provider,
                provider_type=ptype,
                model=model,
                route=route,
                streaming=bool(streaming),
                client=client,
                user_agent=ua,
                session_id=sess,
                credential=cred,
                key_hint=hint,
                attempts=attempts,
                started_at=started,
                ended_at=ended,
                status=status,
                error_type=etype,
                error_message=emsg,
            )
        for iid, inp, outp, cr, cw, extra in conn.execute("SELECT * FROM token_usages"):
            out[iid].usage = TokenUsage(inp, outp, cr, cw, orjson.loads(extra))
        for iid, prompt in conn.execute("SELECT * FROM user_prompts"):
            out[iid].prompt = prompt
        for iid, _seq, name, call_id, args in conn.execute(
            "SELECT * FROM tool_usages ORDER BY interception_id, seq"
        ):
            out[iid].tool_calls.append(ToolCall(name, call_id, args))
        return out
    finally:
        conn.close()


def count(db: Path, table: str = "interceptions") -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=5)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        conn.close()


def assert_no_writer_threads() -> None:
    assert not [t for t in threading.enumerate() if t.name == "aibridge-recorder"]


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> object:
    yield
    assert_no_writer_threads()


# -- codec, URLs --------------------------------------------------------------


def test_codec_round_trip() -> None:
    for n in range(40):
        rec = make_interception(n)
        d = orjson.loads(orjson.dumps(interception_to_dict(rec)))
        assert interception_from_dict(d) == rec


def test_urls_and_password_masking() -> None:
    assert parse_database_url(None).sqlite_path == Path("aibridge.db")
    assert parse_database_url("sqlite:///data/x.db").sqlite_path == Path("data/x.db")
    assert parse_database_url("sqlite:////abs/x.db").sqlite_path == Path("/abs/x.db")
    assert parse_database_url("postgres://u:pw@h/db").backend == "postgresql"
    assert mask_url("postgresql://u:s3cret@h:5433/db") == "postgresql://u:***@h:5433/db"
    with pytest.raises(ValueError, match="unsupported database URL") as err:
        parse_database_url("mysql://root:hunter2@db/x")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError):
        open_recorder("sqlite:///:memory:")


def test_password_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aibridge.recorder")
    spool = tmp_path / "spool.jsonl"
    # Nothing listens on port 1: the database is "down" from the start.
    rec = open_recorder("postgresql://u:hunter2@127.0.0.1:1/db", spool_path=spool, **FAST)
    rec.record(make_interception(1))
    wait_until(lambda: len(spooled_ids(spool)) == 1, what="record spooled")
    rec.close()
    assert any("unavailable" in r.getMessage() for r in caplog.records)
    assert "u:***@127.0.0.1:1" in caplog.text
    assert "hunter2" not in caplog.text


def test_null_recorder() -> None:
    """`database: none` records nothing and starts no writer."""
    r = open_recorder("none")
    assert isinstance(r, NullRecorder)
    r.record(make_interception(1))
    assert r.stats() == {}
    assert not [t for t in threading.enumerate() if t.name == "aibridge-recorder"]
    r.close()


# -- SQLite -------------------------------------------------------------------


def test_sqlite_round_trip_all_tables_and_wal(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    rec = open_recorder(f"sqlite:///{db}", **FAST)
    records = [make_interception(n) for n in range(60)]
    for r in records:
        rec.record(r)
    rec.close()
    assert read_back(db) == {r.id: r for r in records}
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert rec.stats()["written"] == 60
    assert not (tmp_path / "usage-spool.jsonl").exists()  # default spool sits next to the db


def test_sqlite_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rec = open_recorder("sqlite:///sub/rel.db", **FAST)
    rec.record(make_interception(1))
    rec.close()
    assert count(tmp_path / "sub" / "rel.db") == 1


def test_schema_second_start_is_noop(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    open_recorder(f"sqlite:///{db}", **FAST).close()
    conn = sqlite3.connect(db)
    before = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    rec = open_recorder(f"sqlite:///{db}", **FAST)
    rec.record(make_interception(3))
    rec.close()
    conn = connect_sqlite(db)
    assert migrate_sqlite(conn) == 0
    after = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    versions = conn.execute("SELECT version FROM aibridge_schema").fetchall()
    conn.close()
    assert before == after
    assert versions == [(1,)]
    assert {"interceptions_started_at", "interceptions_user_started"} <= {n for _, n, _ in after}


def test_replay_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    spool = tmp_path / "spool.jsonl"
    records = [make_interception(n) for n in range(30)]
    rec = open_recorder(f"sqlite:///{db}", spool_path=spool, **FAST)
    for r in records:
        rec.record(r)
    rec.close()
    # A "previous run" left a spool holding the same records (say, it crashed
    # mid-replay) plus new ones: at startup everything arrives, nothing twice.
    extra = [make_interception(n) for n in range(30, 40)]
    s = Spool(spool)
    s.append(records + extra)
    s.close()
    with spool.open("ab") as f:
        f.write(b'{"id": "torn')  # a torn last line from a crash is skipped
    rec = open_recorder(f"sqlite:///{db}", spool_path=spool, **FAST)
    rec.close()
    assert read_back(db) == {r.id: r for r in records + extra}
    assert count(db, "tool_usages") == sum(len(r.tool_calls) for r in records + extra)
    assert spooled_ids(spool) == []
    assert rec.stats()["replayed"] == 40


def test_concurrent_record_from_threads(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    rec = open_recorder(f"sqlite:///{db}", batch_size=128, **FAST)
    per_thread, n_threads = 1500, 6
    ids: list[list[str]] = [[] for _ in range(n_threads)]

    def worker(k: int) -> None:
        for n in range(per_thread):
            r = make_interception(n)
            ids[k].append(r.id)
            rec.record(r)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.close()
    stats = rec.stats()
    assert stats["dropped"] == 0
    all_ids = {i for chunk in ids for i in chunk}
    assert len(all_ids) == per_thread * n_threads
    conn = sqlite3.connect(db)
    stored = [r[0] for r in conn.execute("SELECT id FROM interceptions")]
    conn.close()
    assert len(stored) == len(set(stored)) == len(all_ids)
    assert set(stored) == all_ids


class GatedSink:
    """A real SqliteSink whose writes wait for a gate: a database that is slow."""

    def __init__(self, inner: SqliteSink) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.description = inner.description

    def open(self) -> None:
        self.inner.open()

    def write(self, batch: Sequence[Interception]) -> None:
        self.gate.wait(10)
        self.inner.write(batch)

    def close(self) -> None:
        self.inner.close()


def test_full_queue_spills_to_spool_nothing_lost(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    spool = tmp_path / "spool.jsonl"
    sink = GatedSink(SqliteSink(db))
    rec = BatchRecorder(sink, Spool(spool), batch_size=10, queue_size=20, **FAST)
    records = [make_interception(n) for n in range(500)]
    for r in records:
        rec.record(r)
    # The writer holds at most one batch; the queue holds 20; the rest spilled.
    spilled = spooled_ids(spool)
    assert len(spilled) >= 500 - 20 - 10
    assert rec.stats()["spooled"] == len(spilled)
    sink.gate.set()
    wait_until(lambda: count(db) == 500, what="all 500 records in SQLite")
    rec.close()
    assert set(read_back(db)) == {r.id for r in records}
    assert spooled_ids(spool) == []
    assert rec.stats()["dropped"] == 0


def test_sqlite_outage_locked_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "usage.db"
    spool = tmp_path / "spool.jsonl"
    rec = BatchRecorder(SqliteSink(db, busy_timeout=0.02), Spool(spool), batch_size=20, **FAST)
    first = [make_interception(n) for n in range(50)]
    for r in first:
        rec.record(r)
    wait_until(lambda: count(db) == 50, what="first records written")

    # "Kill" the database: another process-like connection holds the write lock.
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    caplog.set_level(logging.WARNING, logger="aibridge.recorder")
    during = [make_interception(n) for n in range(50, 120)]
    for r in during:
        rec.record(r)
    wait_until(lambda: len(spooled_ids(spool)) == len(during), what="outage records spooled")
    assert set(spooled_ids(spool)) == {r.id for r in during}
    outage_logs = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage_logs) == 1  # once per outage, not per record or per retry

    locker.execute("ROLLBACK")
    locker.close()
    after = [make_interception(n) for n in range(120, 150)]
    for r in after:
        rec.record(r)
    wait_until(lambda: count(db) == 150, what="every record in SQLite after the outage")
    rec.close()
    assert read_back(db) == {r.id: r for r in first + during + after}
    assert spooled_ids(spool) == []
    stats = rec.stats()
    # Records made just after the lock went may be spooled too (the writer was
    # still backing off): together, each record was stored exactly once.
    assert stats["replayed"] >= len(during)
    assert stats["written"] + stats["replayed"] == 150


def test_close_spools_when_database_down(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    spool = tmp_path / "spool.jsonl"
    open_recorder(f"sqlite:///{db}").close()  # create the schema
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        rec = BatchRecorder(SqliteSink(db, busy_timeout=0.02), Spool(spool), **FAST)
        records = [make_interception(n) for n in range(25)]
        for r in records:
            rec.record(r)
        rec.close(timeout=5)
        assert sorted(spooled_ids(spool)) == sorted(r.id for r in records)
        rec.record(make_interception(99))  # after close: straight to the spool, not lost
        assert len(spooled_ids(spool)) == 26
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # The next start replays them.
    rec = open_recorder(f"sqlite:///{db}", spool_path=spool, **FAST)
    rec.close()
    assert count(db) == 26
    assert spooled_ids(spool) == []


def test_bad_record_is_kept_aside_not_retried_forever(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    spool = tmp_path / "spool.jsonl"
    rec = open_recorder(f"sqlite:///{db}", spool_path=spool, **FAST)
    good = [make_interception(n) for n in range(5)]
    bad = make_interception(5, user=None)  # violates NOT NULL
    for r in [*good[:2], bad, *good[2:]]:
        rec.record(r)
    rec.close()
    assert set(read_back(db)) == {r.id for r in good}
    assert rec.stats()["rejected"] == 1
    rejected = (tmp_path / "spool.jsonl.rejected").read_bytes().splitlines()
    assert [orjson.loads(line)["id"] for line in rejected] == [bad.id]


def test_record_cost_on_event_loop(tmp_path: Path) -> None:
    """Measure (print, not assert) the loop-thread cost of record(), writer running."""
    db = tmp_path / "usage.db"
    rec = open_recorder(f"sqlite:///{db}", queue_size=200_000)
    records = [make_interception(n % 1000) for n in range(100_000)]
    for k, r in enumerate(records):  # unique ids, cheaply
        r.id = f"{k:08d}-{r.id[9:]}"

    async def hot_loop() -> float:
        record = rec.record
        t0 = time.perf_counter()
        for r in records:
            record(r)
        return time.perf_counter() - t0

    elapsed = asyncio.run(hot_loop())
    t0 = time.perf_counter()
    rec.close(timeout=60)
    drain = time.perf_counter() - t0
    print(
        f"\nrecord(): {elapsed / len(records) * 1e6:.3f} µs/call over {len(records)} calls "
        f"(writer thread running); close() drained the rest in {drain:.2f}s"
    )
    assert count(db) == len(records)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:s3cret@h:5433/db", "postgresql://u:***@h:5433/db"),
        # A password with an unescaped '#' or '/' hides from urlsplit: still masked.
        ("postgresql://u:ab#s3cret@h/db", "postgresql://u:***@h/db"),
        ("redis://:ab/s3cret@host:6379", "redis://***@host:6379"),
        # libpq and asyncpg also take the password as a query parameter.
        ("postgresql://u@h/db?password=s3cret&x=1", "postgresql://u:***@h/db?password=***&x=1"),
        ("postgresql://u@h/db?sslpassword=s3cret", "postgresql://u:***@h/db?sslpassword=***"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_mask_url_hides_every_spelling_of_a_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url)


def test_close_spools_the_batch_a_stuck_database_is_holding(tmp_path: Path) -> None:
    """close() gives the writer its budget, then spools what is still queued AND the
    batch stuck in the database write: at exit nothing is only in memory. (The write may
    still land later; records are idempotent, so the replay stores each once.)"""
    spool = tmp_path / "spool.jsonl"
    sink = GatedSink(SqliteSink(tmp_path / "usage.db"))
    rec = BatchRecorder(sink, Spool(spool), batch_size=10, **FAST)
    records = [make_interception(n) for n in range(35)]
    for r in records:
        rec.record(r)
    wait_until(lambda: rec.stats()["queued"] <= 25, what="the writer took a batch")
    rec.close(timeout=0.3)
    assert set(spooled_ids(spool)) == {r.id for r in records}
    sink.gate.set()  # let the stuck thread finish before tmp_path goes
    rec._thread.join(5)
