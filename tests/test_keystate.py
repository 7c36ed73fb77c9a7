"""Shared key state through a real Redis: two or three "replicas" in one process.

Needs a Redis at ``AIBRIDGE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``);
skips without one, fails without one when ``CI=true``. Each test works in its own
namespace and deletes it afterwards.
"""

import asyncio
import logging
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from aibridge.keypool import Key, KeyState, ManualClock, Pool
from aibridge.keystate import RedisKeyState

REDIS_URL = os.environ.get("AIBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
KEYS = [f"sk-test-{c * 24}-{i}" for i, c in enumerate("abcd")]
FAST_BACKOFF = (0.02, 0.1)


@pytest.fixture(scope="module")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError as exc:
        reason = f"no Redis answers at {REDIS_URL} ({exc}); set AIBRIDGE_TEST_REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture()
def ns(redis_url: str) -> Iterator[str]:
    namespace = f"aibridge-test-{uuid.uuid4().hex[:12]}"
    yield namespace
    with redis.Redis.from_url(redis_url) as r:
        names = list(r.scan_iter(match=f"{namespace}:*"))
        if names:
            r.delete(*names)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """asyncio.run, and insist that the scenario left no task behind."""

    async def main() -> None:
        await scenario()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftovers, leftovers

    asyncio.run(main())


async def wait_until(condition: Callable[[], bool], within: float = 2.0) -> float:
    """Seconds until ``condition()`` held; fails the test after ``within`` seconds."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.0002)
    return time.perf_counter() - start


def replica(
    url: str, ns: str, clock_start: float = 0.0, **kwargs: Any
) -> tuple[RedisKeyState, Pool, ManualClock]:
    clock = ManualClock(clock_start)
    pool = Pool(KEYS, clock)
    state = RedisKeyState(url, namespace=ns, reconnect_backoff=FAST_BACKOFF, **kwargs)
    state.attach("openai", pool)
    return state, pool, clock


class TcpProxy:
    """A loopback TCP relay in front of Redis that a test can cut and restore.

    While cut it accepts and closes at once, so a client sees a dead Redis
    without the port being handed to anyone else. Counts client->Redis bytes.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.cut = False
        self.frozen = False
        self.bytes_up = 0
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, count=True)),
            asyncio.create_task(self._pump(up_reader, writer, count=False)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.frozen:
                    continue  # a hung Redis: bytes vanish, nothing is closed
                if count:
                    self.bytes_up += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(asyncio.current_task())

    def cut_now(self) -> None:
        self.cut = True
        for w in list(self._writers):
            w.close()

    def restore(self) -> None:
        self.cut = False
        if self.frozen:
            self.frozen = False
            for w in list(self._writers):  # those streams lost bytes: drop them
                w.close()

    async def close(self) -> None:
        self.cut_now()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let the handlers observe their cancelled pumps

    def url(self, redis_url: str) -> str:
        parts = urlsplit(redis_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )


def redis_target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- propagation ---------------------------------------------------------------


def test_temporary_mark_propagates_with_the_same_cooldown(redis_url: str, ns: str) -> None:
    async def scenario() -> None:
        a, pool_a, _ = replica(redis_url, ns, clock_start=1000.0)
        b, pool_b, _ = replica(redis_url, ns, clock_start=5.0)  # another process's clock
        await a.start()
        await b.start()
        assert a.connected and b.connected
        try:
            times: list[float] = []
            for i in range(25):
                before = pool_b.keys[0].deadline
                pool_a.keys[0].mark_temporary(30.0 + i, "rate_limited")
                times.append(await wait_until(lambda d=before: pool_b.keys[0].deadline > d))  # type: ignore[misc]
            key_b = pool_b.keys[0]
            assert key_b.state() is KeyState.TEMPORARY
            assert key_b.reason == "rate_limited"
            assert abs(key_b.cooldown_remaining() - pool_a.keys[0].cooldown_remaining()) < 0.1
            assert pool_b.keys[1].state() is KeyState.VALID
            ms = sorted(t * 1000 for t in times)
            print(
                f"\npropagation A->B over {len(ms)} marks: median {statistics.median(ms):.2f} ms, "
                f"max {ms[-1]:.2f} ms"
            )
            assert statistics.median(ms) < 50
            assert a.stats["published"] == 25 and b.stats["received"] == 25
        finally:
            await a.close()
            await b.close()

    run(scenario)


def test_permanent_mark_propagates(redis_url: str, ns: str) -> None:
    async def scenario() -> None:
        a, pool_a, _ = replica(redis_url, ns)
        b, pool_b, _ = replica(redis_url, ns)
        await a.start()
        await b.start()
        try:
            pool_a.keys[1].mark_permanent("unauthorized")
            await wait_until(lambda: pool_b.keys[1].state() is KeyState.PERMANENT)
            assert pool_b.keys[1].reason == "unauthorized"
            # A later cooldown elsewhere cannot lift it.
            pool_b.keys[1].mark_temporary(5.0)
            assert pool_b.keys[1].state() is KeyState.PERMANENT
            with redis.Redis.from_url(redis_url) as r:
                assert r.ttl(f"{ns}:key:openai:{KEYS_FP[1]}") == -1  # permanent: no expiry
        finally:
            await a.close()
            await b.close()

    run(scenario)


KEYS_FP = [Key(v, ManualClock()).fingerprint for v in KEYS]


def test_an_earlier_deadline_never_shortens_a_later_one(redis_url: str, ns: str) -> None:
    async def scenario() -> None:
        b, pool_b, _ = replica(redis_url, ns)
        await b.start()
        a, pool_a, _ = replica(redis_url, ns, clock_start=77.0)
        try:
            pool_b.keys[0].mark_temporary(120.0)
            entry = f"{ns}:key:openai:{KEYS_FP[0]}"
            with redis.Redis.from_url(redis_url) as r:
                await wait_until(lambda: r.exists(entry) == 1)
                # A marks the same key for 10 s before it has heard of B's 120 s.
                pool_a.keys[0].mark_temporary(10.0)
                await a.start()
                await wait_until(lambda: not a._pending)
                # The script refused A's shorter write and handed back B's later deadline:
                # A adopting it is the write's completion, observable.
                await wait_until(lambda: pool_a.keys[0].cooldown_remaining() > 110.0)
                assert r.pttl(entry) > 110_000  # Redis kept the later deadline
            assert abs(pool_a.keys[0].cooldown_remaining() - 120.0) < 0.5  # and A took it
            assert abs(pool_b.keys[0].cooldown_remaining() - 120.0) < 0.5
            assert a.stats["published"] == 0
            # A message carrying an earlier deadline is merged keep-later, too.
            pool_a.keys[2].mark_temporary(60.0)
            await wait_until(lambda: pool_b.keys[2].state() is KeyState.TEMPORARY)
            pool_b.keys[2].mark_temporary(200.0)
            await wait_until(lambda: pool_a.keys[2].cooldown_remaining() > 150)
        finally:
            await a.close()
            await b.close()

    run(scenario)


def test_enable_on_one_replica_clears_the_others(redis_url: str, ns: str) -> None:
    async def scenario() -> None:
        a, pool_a, _ = replica(redis_url, ns)
        b, pool_b, _ = replica(redis_url, ns)
        await a.start()
        await b.start()
        try:
            pool_a.keys[0].mark_temporary(300.0)
            pool_a.keys[1].mark_permanent()
            await wait_until(lambda: pool_b.keys[1].state() is KeyState.PERMANENT)
            await wait_until(lambda: pool_b.keys[0].state() is KeyState.TEMPORARY)
            pool_a.keys[0].enable()
            pool_a.keys[1].enable()
            await wait_until(lambda: pool_b.states()[:2] == [KeyState.VALID, KeyState.VALID])
            with redis.Redis.from_url(redis_url) as r:
                entries = [r.hgetall(name) for name in r.scan_iter(match=f"{ns}:key:*")]
            assert len(entries) == 2 and all(list(e) == [b"e"] for e in entries)  # tombstones
            # Enable then re-mark before the writer runs: both reach Redis, in order.
            pool_b.keys[1].mark_permanent()
            await wait_until(lambda: pool_a.keys[1].state() is KeyState.PERMANENT)
            pool_b.keys[1].enable()
            pool_b.keys[1].mark_temporary(42.0)
            await wait_until(lambda: pool_a.keys[1].state() is KeyState.TEMPORARY)
            assert abs(pool_a.keys[1].cooldown_remaining() - 42.0) < 0.5
        finally:
            await a.close()
            await b.close()

    run(scenario)


def test_a_replica_started_later_loads_the_shared_state(redis_url: str, ns: str) -> None:
    async def scenario() -> None:
        a, pool_a, _ = replica(redis_url, ns)
        await a.start()
        pool_a.keys[0].mark_temporary(90.0, "unauthorized")
        pool_a.keys[2].mark_permanent("forbidden")
        await wait_until(lambda: a.stats["published"] == 2)
        await a.close()

        c, pool_c, _ = replica(redis_url, ns, clock_start=12345.0)
        await c.start()
        try:
            assert c.connected and c.stats["resyncs"] == 1
            assert pool_c.states() == [
                KeyState.TEMPORARY,
                KeyState.VALID,
                KeyState.PERMANENT,
                KeyState.VALID,
            ]
            assert abs(pool_c.keys[0].cooldown_remaining() - 90.0) < 0.5
            assert pool_c.keys[0].reason == "unauthorized"
            assert pool_c.keys[2].reason == "forbidden"
            # A config reload attaches a new pool: it is loaded too.
            observed: list[Key] = []  # e.g. metrics: attach() must not displace it
            reloaded = Pool(KEYS[2:], ManualClock(), listener=observed.append)
            c.attach("openai", reloaded)
            c.attach("openai", reloaded)  # idempotent
            await wait_until(lambda: reloaded.keys[0].state() is KeyState.PERMANENT)
            reloaded.keys[1].mark_temporary(20.0)
            assert observed == [reloaded.keys[1]]
            await wait_until(lambda: c.stats["published"] == 1)
        finally:
            await c.close()

    run(scenario)


def test_a_mark_from_another_thread_is_shared(redis_url: str, ns: str) -> None:
    async def scenario() -> None:
        a, pool_a, _ = replica(redis_url, ns)
        b, pool_b, _ = replica(redis_url, ns)
        await a.start()
        await b.start()
        try:
            worker = threading.Thread(target=pool_a.keys[3].mark_temporary, args=(15.0,))
            worker.start()
            worker.join()
            await wait_until(lambda: pool_b.keys[3].state() is KeyState.TEMPORARY)
        finally:
            await a.close()
            await b.close()

    run(scenario)


# -- Redis trouble -------------------------------------------------------------


def test_redis_unreachable_at_start_fails_open(ns: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="aibridge.keystate")

    async def scenario() -> None:
        a, pool_a, _ = replica(f"redis://127.0.0.1:{closed_port()}/0", ns)
        started = time.perf_counter()
        await a.start()
        assert time.perf_counter() - started < 2.5
        assert not a.connected
        assert pool_a.keys[0].mark_temporary(10.0)  # the pool works as before
        assert pool_a.walker().next() is pool_a.keys[1]
        await wait_until(lambda: a.stats["errors"] >= 3)  # it keeps retrying
        assert a._pending  # and keeps the change for when Redis is back
        await a.close()

    run(scenario)
    warnings = [r for r in caplog.records if r.name == "aibridge.keystate"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unavailable" in warnings[0].getMessage()


def test_a_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisKeyState("127.0.0.1:6379")


def test_outage_mid_run_then_resync(
    redis_url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aibridge.keystate")

    async def scenario() -> None:
        proxy = TcpProxy(*redis_target(redis_url))
        await proxy.start()
        a, pool_a, _ = replica(proxy.url(redis_url), ns)  # A reaches Redis through the proxy
        b, pool_b, _ = replica(redis_url, ns)
        await a.start()
        await b.start()
        try:
            pool_b.keys[0].mark_temporary(60.0)
            pool_b.keys[3].mark_permanent()
            await wait_until(lambda: pool_a.keys[0].state() is KeyState.TEMPORARY)
            await wait_until(lambda: pool_a.keys[3].state() is KeyState.PERMANENT)

            proxy.cut_now()
            await wait_until(lambda: not a.connected)
            pool_b.keys[1].mark_temporary(45.0)  # A misses this message
            pool_a.keys[2].mark_permanent()  # B cannot hear of this yet
            pool_a.keys[0].enable()  # an operator on A, during the outage
            pool_b.keys[3].enable()  # an operator on B: A misses the message
            await wait_until(lambda: a.stats["errors"] >= 3)  # several failed reconnects
            assert pool_a.keys[1].state() is KeyState.VALID
            assert pool_b.keys[2].state() is KeyState.VALID
            assert pool_a.keys[0].state() is KeyState.VALID  # stays enabled locally

            proxy.restore()
            await wait_until(lambda: a.connected)
            await wait_until(lambda: pool_b.keys[2].state() is KeyState.PERMANENT)
            await wait_until(lambda: pool_b.keys[0].state() is KeyState.VALID)
            assert pool_a.keys[1].state() is KeyState.TEMPORARY  # loaded on resync
            assert abs(pool_a.keys[1].cooldown_remaining() - 45.0) < 1.0
            assert pool_a.keys[0].state() is KeyState.VALID  # Redis did not undo the enable
            assert pool_a.keys[3].state() is KeyState.VALID  # the tombstone told A of B's
            await wait_until(lambda: a.stats["published"] >= 2)  # key 2's mark, key 0's enable
            await asyncio.sleep(0.05)  # room for a wrong write-back of key 3 to show
            assert a.stats["published"] == 2
            assert pool_b.keys[3].state() is KeyState.VALID  # A did not write it back
            assert a.stats["resyncs"] == 2
        finally:
            await a.close()
            await b.close()
            await proxy.close()

    run(scenario)
    messages = [r.getMessage() for r in caplog.records if r.name == "aibridge.keystate"]
    assert len(messages) == 2, messages  # one "unavailable", one "back"
    assert "unavailable" in messages[0] and "back after" in messages[1]


# -- what Redis sees -------------------------------------------------------------


def test_redis_never_sees_a_key_value_or_hint(redis_url: str, ns: str) -> None:
    seen: list[bytes] = []

    async def scenario() -> None:
        a, pool_a, _ = replica(redis_url, ns)
        b, _, _ = replica(redis_url, ns)
        await a.start()
        await b.start()
        r = redis.asyncio.Redis.from_url(redis_url)
        spy = r.pubsub(ignore_subscribe_messages=True)
        await spy.subscribe(f"{ns}:keys")
        try:
            pool_a.keys[0].mark_temporary(30.0)
            pool_a.keys[1].mark_permanent()
            pool_a.keys[2].mark_temporary(30.0)
            await wait_until(lambda: b.stats["received"] == 3)
            pool_a.keys[2].enable()
            await wait_until(lambda: b.stats["received"] == 4)
            while (msg := await spy.get_message(timeout=0.2)) is not None:
                seen.append(msg["data"])
            async for name in r.scan_iter(match=f"{ns}:*"):
                seen.append(name)
                fields = await r.hgetall(name)
                seen.extend(v for kv in fields.items() for v in kv if isinstance(v, bytes))
            assert all(isinstance(v, bytes) for v in fields.values())
        finally:
            await spy.aclose()  # type: ignore[no-untyped-call]
            await r.aclose()
            await a.close()
            await b.close()

    run(scenario)
    assert len(seen) > 4
    blob = b"\n".join(seen)
    for value in KEYS:
        key = Key(value, ManualClock())
        assert value.encode() not in blob
        assert key.hint.encode() not in blob
    assert KEYS_FP[0].encode() in blob  # keys are named by fingerprint


def test_healthy_traffic_sends_nothing_to_redis(redis_url: str, ns: str) -> None:
    async def scenario() -> None:
        proxy = TcpProxy(*redis_target(redis_url))
        await proxy.start()
        a, pool_a, _ = replica(proxy.url(redis_url), ns, health_interval=60.0)
        await a.start()
        try:
            await asyncio.sleep(0.01)  # let the session settle into its idle wait
            before = proxy.bytes_up
            for i in range(20_000):
                key = pool_a.walker().next()
                key.record_success()
                if i % 100 == 0:
                    await asyncio.sleep(0)  # give the background tasks every chance to run
            await asyncio.sleep(0.05)
            assert proxy.bytes_up == before, "a healthy request reached Redis"
            assert a.stats["published"] == 0
            # The first state change does reach it.
            pool_a.keys[0].mark_temporary(5.0)
            await wait_until(lambda: a.stats["published"] == 1)
            assert proxy.bytes_up > before
        finally:
            await a.close()
            await proxy.close()

    run(scenario)


PING = b"*1\r\n$4\r\nPING\r\n"


def test_a_silent_redis_is_noticed_and_never_blocks(redis_url: str, ns: str) -> None:
    async def scenario() -> None:
        proxy = TcpProxy(*redis_target(redis_url))
        await proxy.start()
        a, pool_a, _ = replica(proxy.url(redis_url), ns, health_interval=0.1)
        b, pool_b, _ = replica(redis_url, ns)
        await a.start()
        await b.start()
        try:
            # Two idle health PINGs go through and are answered: still connected.
            before = proxy.bytes_up
            await wait_until(lambda: proxy.bytes_up >= before + 2 * len(PING), 3.0)
            assert a.connected
            proxy.frozen = True  # Redis stops answering; no FIN, no RST
            pool_a.keys[0].mark_temporary(30.0)
            started = time.perf_counter()
            for _ in range(1000):
                pool_a.walker().next()
            assert time.perf_counter() - started < 0.1  # the request path never waits on Redis
            await wait_until(lambda: not a.connected, 3.0)
            proxy.restore()
            await wait_until(lambda: pool_b.keys[0].state() is KeyState.TEMPORARY, 5.0)
            assert a.connected
        finally:
            await a.close()
            await b.close()
            await proxy.close()

    run(scenario)
