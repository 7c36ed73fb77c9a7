"""Append-only JSON-lines spool: where records wait while the database can't take them.

Layout, for a spool at ``aibridge-spool.jsonl``:

- ``aibridge-spool.jsonl`` — the active file; anyone may append (the event loop
  when the queue is full, the writer when the database is down). Each append is
  one ``os.write`` on an ``O_APPEND`` fd, so a process crash loses nothing
  already appended; fsync is batched (the writer calls ``sync()``).
- ``aibridge-spool.jsonl.<ns>.replay`` — rotated files awaiting replay, oldest
  first. The writer rotates before replaying, so new spills go to a fresh active
  file, and deletes a rotated file only after all of it is in the database. A
  crash mid-replay replays the file again; idempotent inserts make that harmless.
- ``aibridge-spool.jsonl.rejected`` — records the database refused as data
  (dead letters), kept for a human rather than dropped.
"""

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from .codec import dumps_line, loads_line
from .records import Interception

log = logging.getLogger("aibridge.recorder")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    # Make a rename durable; not all platforms allow opening a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Spool:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._dirty = False
        self._last_rotation_ns = 0
        # A spool left by a previous run is pending from the start.
        self._pending = bool(self._rotated()) or self._active_size() > 0

    def _active_size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def _rotated(self) -> list[Path]:
        if not self.path.parent.is_dir():
            return []
        return sorted(self.path.parent.glob(self.path.name + ".*.replay"))

    def has_pending(self) -> bool:
        return self._pending

    def mark_pending(self) -> None:
        self._pending = True

    def append(self, records: Sequence[Interception], *, sync: bool = False) -> None:
        """Append records; raises OSError if the disk refuses (the caller counts a drop)."""
        data = b"".join(dumps_line(r) for r in records)
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # 0600: prompts are private.
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            _write_all(self._fd, data)
            self._pending = True
            self._dirty = True
        if sync:
            # Outside the lock: the event loop appends here when the queue is full, and
            # must not wait for the writer thread's fsync.
            self.sync()

    def sync(self) -> None:
        """fsync what was appended since the last sync (batched durability)."""
        with self._lock:
            if self._fd is None or not self._dirty:
                return
            self._dirty = False
            fd = os.dup(self._fd)  # fsync outside the lock: appends must not wait on the disk
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rotate(self) -> list[Path]:
        """Rename the active file for replay; return all files to replay, oldest first."""
        with self._lock:
            self._pending = False
            if self._fd is not None:
                if self._dirty:
                    os.fsync(self._fd)
                    self._dirty = False
                os.close(self._fd)
                self._fd = None
            if self._active_size() > 0:
                ns = max(time.time_ns(), self._last_rotation_ns + 1)
                self._last_rotation_ns = ns
                os.rename(self.path, self.path.with_name(f"{self.path.name}.{ns:020d}.replay"))
                _fsync_dir(self.path.parent)
        return self._rotated()

    def read(self, path: Path, batch_size: int) -> Iterator[list[Interception]]:
        """Records of one spool file in batches; unreadable (torn) lines are skipped."""
        batch: list[Interception] = []
        bad = 0
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    batch.append(loads_line(line))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    bad += 1
                    continue
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if bad:
            log.warning("spool %s: skipped %d unreadable line(s)", path, bad)
        if batch:
            yield batch

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def reject(self, records: Sequence[Interception]) -> None:
        """Keep records the database refused as data, for a human to look at."""
        data = b"".join(dumps_line(r) for r in records)
        fd = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    if self._dirty:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            self._dirty = False
            # Don't leave an empty active file behind.
            try:
                if self.path.exists() and self._active_size() == 0:
                    self.path.unlink()
            except OSError:
                pass
