"""The batching recorder: a bounded in-memory queue drained by one writer thread.

Theory of operation
-------------------
``record()`` runs on the gateway's event loop. It appends to a deque (atomic
under the GIL, no lock) and, when a batch is ready, sets an Event: O(1), no I/O.
If the deque is at its bound (the database is slow), the record goes to the
spool file instead — one ``os.write``, never a wait on the database.

The writer thread owns the database connection (the Sink). Each turn it:

1. if the database is down and the backoff has elapsed, reconnects;
2. if it is up and the spool holds records, rotates the spool and replays it,
   oldest first, writing live batches in between so the queue keeps moving;
3. writes one batch from the queue (one transaction), or spools it if the
   database is down or the write fails;
4. fsyncs the spool if anything was appended (batched durability), then waits
   for a full batch or ``flush_interval``.

Rules: a record is always in exactly one place — the queue, a batch in flight,
the spool, or the database (or the dead-letter file, if the database refuses
the data itself). Inserts are idempotent, so a record replayed twice is stored
once. The database is only ever touched from the writer thread.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from .records import Interception
from .sink import BadRecordError, Sink
from .spool import Spool

log = logging.getLogger("aibridge.recorder")


def _describe(exc: BaseException) -> str:
    # Error texts from drivers name hosts and users, not passwords; keep them short.
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class BatchRecorder:
    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        *,
        batch_size: int = 256,
        flush_interval: float = 0.2,
        queue_size: int = 10_000,
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
    ) -> None:
        if batch_size < 1 or queue_size < 1:
            raise ValueError("batch_size and queue_size must be >= 1")
        if flush_interval <= 0 or retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError(
                "flush_interval, retry_initial must be > 0 and retry_max >= retry_initial"
            )
        self._sink = sink
        self._spool = spool
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_queue = queue_size
        self._retry_initial = retry_initial
        self._retry_max = retry_max

        self._queue: deque[Interception] = deque()
        # The batch the writer is sending: spooled by close() if the write outlasts it
        # (writes are idempotent, so a batch both written and replayed is stored once).
        self._in_flight: list[Interception] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._deadline = float("inf")  # for replay during close()

        # Writer-thread state.
        self._up = False
        self._down_since: float | None = None
        self._retry_delay = retry_initial
        self._retry_at = 0.0

        # Counters: written/replayed/rejected are writer-only; spooled/dropped are
        # bumped from any thread, so under a lock (only on the slow paths).
        self._count_lock = threading.Lock()
        self._written = 0
        self._replayed = 0
        self._rejected = 0
        self._spooled = 0
        self._dropped = 0
        self._spool_failing = False

        self._thread = threading.Thread(target=self._run, name="aibridge-recorder", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------

    def record(self, interception: Interception) -> None:
        """Hand over one record. O(1), never blocks on the database, never raises."""
        try:
            q = self._queue
            if len(q) < self._max_queue and not self._closed:
                q.append(interception)
                if len(q) >= self._batch_size and not self._wake.is_set():
                    self._wake.set()
                if self._closed:  # raced with close(): don't strand it in memory
                    self._spill_queue()
                return
            self._spill([interception], sync=self._closed)
        except Exception:  # never let the recorder break a request
            with self._count_lock:
                self._dropped += 1
            log.exception("recorder: could not accept a record")

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._queue),
            "written": self._written,
            "spooled": self._spooled,
            "replayed": self._replayed,
            "rejected": self._rejected,
            "dropped": self._dropped,
            "database_up": int(self._up),
        }

    def close(self, timeout: float = 10.0) -> None:
        """Flush the queue (to the database, or to the spool if it is down); stop the writer."""
        if self._closed:
            return
        # Leave part of the budget for the final spill if a replay runs long.
        self._deadline = time.monotonic() + timeout * 0.75
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("recorder: writer did not finish in %.1fs; spooling the rest", timeout)
            in_flight = self._in_flight
            if in_flight:
                self._spill(in_flight, sync=True)
        self._spill_queue()

    def _spill(self, records: Sequence[Interception], *, sync: bool) -> None:
        try:
            self._spool.append(records, sync=sync)
        except Exception as exc:
            with self._count_lock:
                self._dropped += len(records)
            if not self._spool_failing:
                self._spool_failing = True
                log.error(
                    "recorder: cannot write spool %s (%s): records are being LOST",
                    self._spool.path,
                    _describe(exc),
                )
            return
        with self._count_lock:
            self._spooled += len(records)
        if self._spool_failing:
            self._spool_failing = False
            log.warning("recorder: spool %s writable again", self._spool.path)

    def _spill_queue(self) -> None:
        batch: list[Interception] = []
        try:
            while True:
                batch.append(self._queue.popleft())
        except IndexError:
            pass
        if batch:
            self._spill(batch, sync=True)

    # -- writer thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._connect()
            while True:
                stopping = self._stop.is_set()
                try:
                    if self._turn(stopping):
                        continue
                except Exception:  # e.g. the spool's disk: keep the thread alive, retry later
                    log.exception("recorder: writer error")
                    if stopping:
                        break
                    self._stop.wait(self._flush_interval)
                    continue
                if stopping:
                    break
                self._wake.wait(self._wait_time())
                self._wake.clear()
        except BaseException:
            log.exception("recorder: writer thread failed; spooling what remains")
        finally:
            self._spill_queue()
            try:
                self._spool.close()
            except OSError as exc:
                log.error("recorder: closing spool %s: %s", self._spool.path, _describe(exc))
            try:
                self._sink.close()
            except Exception as exc:
                log.warning("recorder: closing %s: %s", self._sink.description, _describe(exc))

    def _turn(self, stopping: bool) -> bool:
        """One turn of the loop; True if a batch was taken from the queue (go again at once)."""
        if not self._up and time.monotonic() >= self._retry_at:
            self._connect()
        if self._up and self._spool.has_pending() and time.monotonic() < self._deadline:
            self._replay()
        if stopping and time.monotonic() >= self._deadline:
            # Out of close()'s budget: a slow database gets no more batches; the rest goes
            # to the spool before close() gives up on this thread.
            self._spill_queue()
            return False
        if self._drain_batch():
            return True
        self._spool.sync()
        return False

    def _wait_time(self) -> float:
        if self._up:
            return self._flush_interval
        return max(0.0, min(self._flush_interval, self._retry_at - time.monotonic()))

    def _connect(self) -> None:
        try:
            self._sink.open()
        except Exception as exc:
            self._mark_down(exc)
            return
        self._up = True
        self._retry_delay = self._retry_initial
        if self._down_since is not None:
            log.warning(
                "recorder: database %s is back after %.1fs; replaying the spool",
                self._sink.description,
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    def _mark_down(self, exc: BaseException) -> None:
        """Note an outage (logged once per outage) and schedule the next connect."""
        self._up = False
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "recorder: database %s unavailable (%s); spooling records to %s",
                self._sink.description,
                _describe(exc),
                self._spool.path,
            )
        else:
            log.debug("recorder: reconnect failed: %s", _describe(exc))
        self._retry_at = now + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self._retry_max)

    def _drain_batch(self) -> int:
        batch: list[Interception] = []
        q = self._queue
        try:
            while len(batch) < self._batch_size:
                batch.append(q.popleft())
        except IndexError:
            pass
        if not batch:
            return 0
        if self._up:
            self._in_flight = batch
            try:
                self._write(batch, from_spool=False)
            finally:
                self._in_flight = []
        else:
            self._spill(batch, sync=False)
        return len(batch)

    def _write(self, batch: list[Interception], *, from_spool: bool) -> bool:
        """Write one batch; on an outage spool it (unless from the spool). True if stored."""
        try:
            self._sink.write(batch)
        except BadRecordError:
            return self._write_singly(batch, from_spool=from_spool)
        except Exception as exc:
            self._mark_down(exc)
            if not from_spool:
                self._spill(batch, sync=True)
            return False
        self._count(len(batch), from_spool=from_spool)
        return True

    def _write_singly(self, batch: list[Interception], *, from_spool: bool) -> bool:
        # One bad record must not hold back its batch, nor loop forever through the spool.
        for n, rec in enumerate(batch):
            try:
                self._sink.write([rec])
            except BadRecordError as exc:
                self._rejected += 1
                log.warning(
                    "recorder: database refused record %s (%s); kept in %s",
                    rec.id,
                    _describe(exc),
                    self._spool.rejected_path,
                )
                try:
                    self._spool.reject([rec])
                except Exception as exc2:
                    with self._count_lock:
                        self._dropped += 1
                    log.error("recorder: record %s LOST: %s", rec.id, _describe(exc2))
            except Exception as exc:
                self._mark_down(exc)
                if not from_spool:
                    self._spill(batch[n:], sync=True)
                return False
            else:
                self._count(1, from_spool=from_spool)
        return True

    def _count(self, n: int, *, from_spool: bool) -> None:
        if from_spool:
            self._replayed += n
        else:
            self._written += n

    def _replay(self) -> None:
        files = self._spool.rotate()
        total = 0
        for path in files:
            try:
                for batch in self._spool.read(path, self._batch_size):
                    if time.monotonic() >= self._deadline or not self._write(
                        batch, from_spool=True
                    ):
                        self._spool.mark_pending()  # the file stays; replayed again later
                        return
                    total += len(batch)
                    # Keep live records moving during a long replay.
                    if len(self._queue) >= self._batch_size:
                        self._drain_batch()
                        if not self._up:
                            self._spool.mark_pending()
                            return
            except OSError as exc:
                self._spool.mark_pending()
                log.error("recorder: reading spool %s: %s", path, _describe(exc))
                return
            self._spool.remove(path)
        if total:
            log.info("recorder: replayed %d spooled record(s)", total)
