"""Key state shared across gateway replicas through Redis.

Theory of operation
-------------------
Every replica keeps deciding from its own in-memory pool; Redis is never asked
on the request path. Only a key's state *change* leaves the process:

1. The pool listener fires synchronously inside ``Key.mark_temporary`` and
   friends. It snapshots the change (deadline converted to wall-clock ms) into
   ``_pending``, a dict holding the latest change per key, and wakes the writer.
   Nothing awaits or blocks there; the dict is bounded by the number of keys.
2. The writer task runs one Lua script per change: an extend-only write of
   ``{ns}:key:{provider}:{fp}`` (a hash ``d``/``r``/``p``, PEXPIRE'd to the
   cooldown so stale entries vanish) and a PUBLISH on ``{ns}:keys``, atomically.
   An operator's enable replaces the entry with a day-long tombstone (``e``)
   and publishes; it is the only operation that shortens.
3. The reader task follows the channel and merges other replicas' changes into
   local keys with the keep-later rule (``Key.merge_remote``/``reset_remote``).
4. Each session (start and every reconnect) subscribes first, then loads every
   attached key's entry, so no change falls in between; local marks Redis lacks
   (outage, Redis restart) are written back, unless a tombstone says an
   operator lifted them meanwhile.

Redis trouble never reaches the gateway: the supervisor logs once per outage,
keeps the pending changes, reconnects with backoff and resyncs.
"""

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from aibridge.keypool import Key, KeyState, Pool
from aibridge.keystate._wire import (
    PUSH_BACK_SLACK_MS,
    Mark,
    Pending,
    WallClock,
    decode_entry,
    decode_message,
    encode_message,
    local_mark,
    merge_mark,
    snapshot,
)
from aibridge.masked_url import mask_url

logger = logging.getLogger("aibridge.keystate")

# KEYS[1] entry; ARGV: deadline_ms, reason, permanent, ttl_ms, channel, message.
# Returns {1} when written and published, else the stored {0, d, r, p} that won.
# An enable tombstone (field e, no d) counts as no entry and is replaced.
_MARK_SCRIPT = """
local cur = redis.call('HMGET', KEYS[1], 'd', 'r', 'p')
if cur[3] == '1' then
  return {0, cur[1], cur[2], cur[3]}
end
if ARGV[3] ~= '1' and cur[1] and tonumber(cur[1]) >= tonumber(ARGV[1]) then
  return {0, cur[1], cur[2], '0'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'r', ARGV[2], 'p', ARGV[3])
if ARGV[3] ~= '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {1}
"""

# KEYS[1] entry; ARGV: enabled_at_ms, tombstone_ttl_ms, channel, message.
# The tombstone tells a replica that missed the message (an outage) that its
# older local mark was lifted, instead of letting it write the mark back.
_ENABLE_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'e', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
# Long enough to outlast any cooldown a replica could hold across an outage.
_TOMBSTONE_TTL_MS = 24 * 3600 * 1000

_IO_TIMEOUT = 1.0  # seconds; a slow Redis must not hold a session hostage
_FIRST_ATTEMPT_WAIT = 2.0  # how long start() waits for the first connect + load

_PendingKey = tuple[str, str]  # (provider, fingerprint)


class RedisKeyState:
    """Replicates key state changes of attached pools through Redis (opt-in)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "aibridge",
        replica_id: str | None = None,
        wall_clock: WallClock = time.time,
        reconnect_backoff: tuple[float, float] = (0.2, 5.0),
        health_interval: float = 5.0,
    ) -> None:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            # a config mistake: say so at startup rather than retry it forever
            raise ValueError("state URL must start with redis://, rediss:// or unix://")
        self._url = url
        self._where = mask_url(url)
        self._ns = namespace
        self._channel = f"{namespace}:keys"
        self.replica_id = replica_id or uuid.uuid4().hex[:16]
        self._wall_clock = wall_clock
        self._backoff = reconnect_backoff
        # A silent network partition sends no RST: an unanswered PING is how we notice.
        self._health_interval = health_interval
        self._pools: dict[str, Pool] = {}
        self._listening: weakref.WeakKeyDictionary[Pool, str] = weakref.WeakKeyDictionary()
        self._index: dict[str, dict[str, tuple[Pool, Key]]] = {}
        self._pending: dict[_PendingKey, Pending] = {}
        self._loads: set[str] = set()
        self._wake = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._down_since: float | None = None
        self.connected = False
        self.stats: dict[str, int] = {
            "published": 0,
            "received": 0,
            "merged": 0,
            "errors": 0,
            "resyncs": 0,
        }

    # -- wiring --------------------------------------------------------------

    def attach(self, provider: str, pool: Pool) -> None:
        """Share ``pool``'s key states under ``provider``; replaces an earlier pool.

        Call it on the event loop's thread, before or after ``start()``. A replaced
        pool keeps its listener, so marks from requests still in flight on it are
        shared too (changes name keys by fingerprint, not by pool).
        """
        self._pools[provider] = pool
        self._index[provider] = {key.fingerprint: (pool, key) for key in pool.keys}
        if self._listening.get(pool) != provider:
            # add, not set: metrics and others observe the same pool
            pool.add_listener(self._listener_for(provider, pool))
            self._listening[pool] = provider
        if self._task is not None:
            self._loads.add(provider)
            self._wake_writer()

    def _listener_for(self, provider: str, pool: Pool) -> Callable[[Key], None]:
        def on_change(key: Key) -> None:
            if self._closed:
                return
            try:
                change = snapshot(pool, key, self._wall_clock)
                loop = self._loop
                if loop is None or threading.get_ident() == self._loop_thread:
                    self._enqueue((provider, key.fingerprint), change)
                else:
                    loop.call_soon_threadsafe(self._enqueue, (provider, key.fingerprint), change)
            except Exception:  # the gateway's request must never fail because of us
                self.stats["errors"] += 1
                logger.exception("shared key state: could not queue a key change")

        return on_change

    def _enqueue(self, pk: _PendingKey, change: Pending) -> None:
        older = self._pending.get(pk)
        if older is None:
            self._pending[pk] = change
        else:
            older.absorb(change)
        self._wake_writer()

    def _wake_writer(self) -> None:
        loop = self._loop
        if loop is None:
            return  # not started: the first session flushes whatever waits
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:  # attach() from a config-reload thread
            loop.call_soon_threadsafe(self._wake.set)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Connect, load and follow; returns even when Redis is down (fail open)."""
        if self._task is not None:
            return
        self._closed = False
        # Fresh events: asyncio primitives bind to the loop that first waits on them.
        self._wake = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._supervise(), name="aibridge.keystate")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), _FIRST_ATTEMPT_WAIT)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.connected = False
        self._loop = None

    # -- the session loop ----------------------------------------------------

    async def _supervise(self) -> None:
        low, high = self._backoff
        delay = low
        while not self._closed:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever it is: fail open and retry
                self._on_failure(exc)
            if self.connected:
                delay = low  # the session was up: start the backoff afresh
            self.connected = False
            self._first_attempt.set()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, high)

    def _on_failure(self, exc: BaseException) -> None:
        self.stats["errors"] += 1
        if self._down_since is not None:
            return  # logged once already for this outage
        self._down_since = time.monotonic()
        if isinstance(exc, RedisError | OSError | TimeoutError):
            logger.warning(
                "shared key state: Redis at %s unavailable (%s: %s); "
                "serving from local key state, retrying in the background",
                self._where,
                type(exc).__name__,
                exc,
            )
        else:
            logger.error("shared key state: session failed unexpectedly", exc_info=exc)

    async def _session(self) -> None:
        client: Redis = Redis.from_url(
            self._url,
            socket_timeout=_IO_TIMEOUT,
            socket_connect_timeout=_IO_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # reconnecting is our job, with our backoff
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        tasks: list[asyncio.Task[None]] = []
        try:
            await pubsub.subscribe(self._channel)  # before the load: no gap
            self._loads.clear()
            await self._load(client, list(self._pools))
            self.connected = True
            self._first_attempt.set()
            if self._down_since is not None:
                logger.info(
                    "shared key state: Redis at %s back after %.1f s; key state resynced",
                    self._where,
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
            self._wake.set()  # flush what queued up while we were away
            tasks = [
                asyncio.create_task(self._read(pubsub)),
                asyncio.create_task(self._write(client)),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise the failure that ended the session
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), _IO_TIMEOUT)  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), _IO_TIMEOUT)

    async def _load(self, client: Redis, providers: list[str]) -> None:
        """Merge Redis's entries into local keys, then write back local marks it lacks."""
        targets = [
            (provider, pool, key)
            for provider in providers
            if (pool := self._pools.get(provider)) is not None
            for key in pool.keys
        ]
        if not targets:
            self.stats["resyncs"] += 1
            return
        pipe = client.pipeline(transaction=False)
        for provider, _, key in targets:
            pipe.hmget(self._entry(provider, key.fingerprint), ["d", "r", "p", "e"])
        rows: list[list[bytes | None]] = await pipe.execute()
        for (provider, pool, key), row in zip(targets, rows, strict=True):
            pk = (provider, key.fingerprint)
            pending = self._pending.get(pk)
            if pending is not None and pending.enable:
                continue  # an operator's enable made while we were away wins
            if row[3] is not None:  # enabled elsewhere, maybe while we were away
                if pending is None and key.state() is not KeyState.VALID:
                    key.reset_remote()
                    self.stats["merged"] += 1
                continue  # a local mark made since is pending and will be written
            remote = decode_entry(row[:3])
            if remote is not None and merge_mark(pool, key, remote, self._wall_clock):
                self.stats["merged"] += 1
            local = local_mark(pool, key, self._wall_clock)
            if local is not None and local.later_than(remote, PUSH_BACK_SLACK_MS):
                self._enqueue(pk, Pending(mark=local))
        self.stats["resyncs"] += 1

    async def _read(self, pubsub: PubSub) -> None:
        awaiting_pong = False
        while True:
            msg: dict[str, Any] | None = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=self._health_interval
            )
            if msg is None:
                if awaiting_pong:
                    raise TimeoutError("Redis did not answer PING on the channel connection")
                await pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False  # any traffic shows the connection is alive
            if msg.get("type") == "message":
                self._on_message(msg["data"])

    def _on_message(self, data: bytes) -> None:
        try:
            message = decode_message(data)
        except ValueError:
            self.stats["errors"] += 1
            return
        if message.replica == self.replica_id:
            return
        self.stats["received"] += 1
        found = self._index.get(message.provider, {}).get(message.fp)
        if found is None:
            return  # a key this replica is not configured with
        pool, key = found
        if message.mark is None:
            key.reset_remote()
            self.stats["merged"] += 1
        elif merge_mark(pool, key, message.mark, self._wall_clock):
            self.stats["merged"] += 1

    async def _write(self, client: Redis) -> None:
        mark_script = client.register_script(_MARK_SCRIPT)
        enable_script = client.register_script(_ENABLE_SCRIPT)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._loads:
                providers, self._loads = list(self._loads), set()
                await self._load(client, providers)
            while self._pending:
                pk = next(iter(self._pending))
                change = self._pending.pop(pk)
                provider, fp = pk
                entry = self._entry(provider, fp)
                try:
                    if change.enable:
                        message = encode_message(
                            provider=provider,
                            fp=fp,
                            op="enable",
                            mark=None,
                            replica=self.replica_id,
                        )
                        enabled_at = round(self._wall_clock() * 1000.0)
                        await enable_script(
                            keys=[entry],
                            args=[enabled_at, _TOMBSTONE_TTL_MS, self._channel, message],
                        )
                        self.stats["published"] += 1
                        change.enable = False
                    if change.mark is not None:
                        await self._write_mark(mark_script, provider, fp, entry, change.mark)
                except BaseException:
                    self._requeue(pk, change)
                    raise

    async def _write_mark(
        self, script: AsyncScript, provider: str, fp: str, entry: str, mark: Mark
    ) -> None:
        ttl_ms = 0
        if not mark.permanent:
            ttl_ms = mark.deadline_ms - round(self._wall_clock() * 1000.0)
            if ttl_ms <= 0:
                return  # the cooldown ran out while the change waited
        message = encode_message(
            provider=provider, fp=fp, op="mark", mark=mark, replica=self.replica_id
        )
        args: list[str | int | bytes] = [
            mark.deadline_ms,
            mark.reason,
            int(mark.permanent),
            ttl_ms,
            self._channel,
            message,
        ]
        result: list[Any] = await script(keys=[entry], args=args)
        if result[0] == 1:
            self.stats["published"] += 1
            return
        # Redis holds a later state than ours: take it, as a subscriber would have.
        stored = decode_entry(list(result[1:4]))
        found = self._index.get(provider, {}).get(fp)
        if stored is not None and found is not None:
            pool, key = found
            if merge_mark(pool, key, stored, self._wall_clock):
                self.stats["merged"] += 1

    def _requeue(self, pk: _PendingKey, unfinished: Pending) -> None:
        newer = self._pending.get(pk)
        if newer is not None:
            unfinished.absorb(newer)
        if unfinished.enable or unfinished.mark is not None:
            self._pending[pk] = unfinished

    def _entry(self, provider: str, fp: str) -> str:
        return f"{self._ns}:key:{provider}:{fp}"
