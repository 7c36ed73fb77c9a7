"""The incremental SSE splitter every streaming observer is built on.

Theory of operation
-------------------
Upstream bytes arrive in arbitrary pieces. ``feed`` appends a piece to the
held-back tail, finds the LAST event boundary (a blank line: ``\\n\\n``,
``\\r\\n\\r\\n`` or ``\\r\\r``) and forwards everything before it at once,
holding back only the incomplete trailing event. Forwarded bytes are the bytes
that came in, never rebuilt.

Parsing is opt-in and cheap to refuse: ``wants(run)`` answers, with byte
checks only, whether a forwarded run may hold an event worth parsing (by
default: whether it holds one of the subclass's ``MARKERS``). A run refused
there (the text deltas that make up most of a stream) costs a scan or two and
nothing else; only a wanted run is cut into single events and handed to
``on_event``, which may drop an event by returning False. On this machine a
full scan costs about 1 ns per byte, so each check counts.

Rules:

* ``feed``/``close`` never raise: a broken upstream must not crash the relay.
  A failing ``on_event`` keeps its event and is otherwise ignored.
* Memory is bounded: an incomplete event past ``MAX_HELD_EVENT`` is flushed
  through unparsed; its head and tail are kept so a subclass can still learn
  what it was (``on_oversized``).
"""

import contextlib
import re
from typing import Any

import orjson

from aibridge.intercept._limits import MAX_ERROR, MAX_HELD_EVENT, SALVAGE_TAIL, truncate_utf8
from aibridge.recorder.records import TokenUsage, ToolCall

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_HEAD = 512  # bytes kept of an oversized event's start, enough for its event: line


def last_boundary_end(data: bytes) -> int:
    """Offset just past the last event boundary in ``data``, 0 when there is none."""
    end = 0
    at = data.rfind(b"\n\n")
    if at >= 0:
        end = at + 2
    at = data.rfind(b"\r\n\r\n")
    if at >= 0 and at + 4 > end:
        end = at + 4
    at = data.rfind(b"\r\r")
    if at >= 0 and at + 2 > end:
        end = at + 2
    return end


def split_events(run: bytes) -> list[bytes]:
    """``run`` cut after each event boundary (a trailing piece without one is kept too)."""
    events = []
    start = 0
    n = len(run)
    if b"\r" not in run:  # the common case: plain find() beats the regex several times over
        while start < n:
            at = run.find(b"\n\n", start)
            stop = at + 2 if at >= 0 else n
            events.append(run[start:stop])
            start = stop
        return events
    while start < n:
        found = _BOUNDARY.search(run, start)
        stop = found.end() if found is not None else n
        events.append(run[start:stop])
        start = stop
    return events


def single_event_name(run: bytes) -> bytes | None:
    """The ``event:`` name when ``run`` is exactly one event that starts with it, else None."""
    if not run.startswith(b"event:") or run.find(b"\n\n") != len(run) - 2:
        return None
    line_end = run.find(b"\n", 6)
    return run[6:line_end].strip()


def event_name(event: bytes) -> bytes:
    """The name of an event that starts with its ``event:`` line (any line ending)."""
    end = event.find(b"\n", 6)
    cr = event.find(b"\r", 6)
    if end < 0 or 0 <= cr < end:
        end = cr
    return event[6 : end if end >= 0 else len(event)].strip()


def event_fields(event: bytes) -> tuple[bytes, bytes]:
    """The ``event:`` name (b"" when absent) and the joined ``data:`` lines of one event."""
    name = b""
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value[:1] == b" " else value)
        elif line.startswith(b"event:"):
            value = line[6:]
            name = value[1:] if value[:1] == b" " else value
    return name, data[0] if len(data) == 1 else b"\n".join(data)


def load_object(data: bytes) -> dict[str, Any] | None:
    """``data`` parsed as a JSON object, or None for anything else."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def error_text(error: object) -> str:
    """A short message out of a provider's error object (``type: message``)."""
    if isinstance(error, dict):
        message = error.get("message")
        kind = error.get("type")
        if not kind or kind == "error":  # a Responses error event: its code says more
            kind = error.get("code")
        text = str(message) if message is not None else orjson.dumps(error).decode()
        if isinstance(kind, str) and kind:
            text = f"{kind}: {text}"
    else:
        text = str(error)
    return truncate_utf8(text, MAX_ERROR)


class StreamObserver:
    """Base of the per-API streaming observers; see the module docstring."""

    MARKERS: tuple[bytes, ...] = ()

    __slots__ = ("_big_head", "_big_tail", "_held", "_last_run", "complete", "error", "usage")

    def __init__(self) -> None:
        self._held = b""
        self._last_run = b""  # a reference, not a copy: see on_end
        self._big_head: bytes | None = None  # set while passing an oversized event through
        self._big_tail = b""
        self.usage: TokenUsage | None = None
        self.complete = False
        self.error: str | None = None

    # -- what subclasses provide -------------------------------------------------

    @property
    def tool_calls(self) -> list[ToolCall]:
        return []

    def wants(self, run: bytes) -> bool:
        """Whether a run of complete events may hold one worth parsing (byte checks only)."""
        return any(marker in run for marker in self.MARKERS)

    def worth(self, event: bytes) -> bool:
        """Whether one event of a wanted run may be worth ``on_event`` (byte checks only).

        A run that holds a whole stream (an upstream that writes faster than we read)
        is mostly text deltas: refusing them here keeps its cost near a plain split.
        """
        return True

    def on_end(self, last_run: bytes) -> None:
        """The stream ended; ``last_run`` is the last run of events forwarded."""

    def on_event(self, event: bytes) -> bool:
        """Observe one complete event (boundary included); False drops it from the stream."""
        return True

    def on_oversized(self, head: bytes, tail: bytes) -> None:
        """An event too large to hold went through unparsed: its first and last bytes."""

    # -- the splitter ------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        try:
            return self._feed(chunk)
        except Exception:  # a bug here must not cut the client's stream: pass bytes on
            data, self._held, self._big_head = self._held + chunk, b"", None
            return data

    def close(self) -> bytes:
        data, self._held = self._held, b""
        if self._big_head is not None:
            self._end_oversized(b"")
        elif data:
            # A last event without its blank line (some servers end that way): forwarded
            # as-is, never dropped, but still observed so its usage or [DONE] counts.
            with contextlib.suppress(Exception):  # malformed upstream data is never our crash
                self.on_event(data)
        with contextlib.suppress(Exception):
            self.on_end(self._last_run)
        self._last_run = b""
        return data

    def _feed(self, chunk: bytes) -> bytes:
        passed = b""
        if self._big_head is not None:
            passed, chunk = self._pass_oversized(chunk)
            if not chunk:
                return passed
        data = self._held + chunk if self._held else chunk
        # Upstreams write whole events: the common case needs no search at all.
        end = len(data) if data.endswith(b"\n\n") else last_boundary_end(data)
        if end == 0:
            self._held = data
            if len(data) > MAX_HELD_EVENT:
                return passed + self._start_oversized()
            return passed
        if end == len(data):
            self._held = b""
            ready = data
        else:
            self._held = data[end:]
            ready = data[:end]
        self._last_run = ready
        if self.wants(ready):
            ready = self._observe(ready)
        if len(self._held) > MAX_HELD_EVENT:
            ready += self._start_oversized()
        return passed + ready if passed else ready

    def _observe(self, ready: bytes) -> bytes:
        """Hand each event in ``ready`` to on_event; ``ready`` minus the dropped ones."""
        kept: list[bytes] | None = None
        events = split_events(ready)
        worth = self.worth
        for i, event in enumerate(events):
            try:
                keep = self.on_event(event) if worth(event) else True
            except Exception:  # malformed upstream data is never our crash
                keep = True
            if not keep and kept is None:
                kept = events[:i]
            elif keep and kept is not None:
                kept.append(event)
        return ready if kept is None else b"".join(kept)

    def _start_oversized(self) -> bytes:
        data, self._held = self._held, b""
        self._big_head = data[:_HEAD]
        self._big_tail = data[-SALVAGE_TAIL:]
        return data

    def _pass_oversized(self, chunk: bytes) -> tuple[bytes, bytes]:
        """Split ``chunk`` into the rest of the oversized event and what follows it."""
        context = self._big_tail[-3:]  # a boundary may straddle the previous chunk
        found = _BOUNDARY.search(context + chunk)
        if found is None:
            self._big_tail = (self._big_tail + chunk)[-SALVAGE_TAIL:]
            return chunk, b""
        cut = found.end() - len(context)
        self._end_oversized(chunk[:cut])
        return chunk[:cut], chunk[cut:]

    def _end_oversized(self, last: bytes) -> None:
        head, tail = self._big_head or b"", (self._big_tail + last)[-SALVAGE_TAIL:]
        self._big_head, self._big_tail = None, b""
        with contextlib.suppress(Exception):  # malformed upstream data is never our crash
            self.on_oversized(head, tail)


class TypedEventObserver(StreamObserver):
    """A stream of ``event: <type>`` + ``data: {...}`` pairs (Anthropic Messages, Responses).

    Subclasses say which event types are worth parsing (``wanted``, byte checks only)
    and handle a parsed payload (``on_payload``). Events without an ``event:`` line
    (some compatible servers) are typed by their data's ``"type"``.
    """

    __slots__ = ()

    @staticmethod
    def wanted(name: bytes, event: bytes) -> bool:
        """Whether an event of type ``name`` (its bytes: ``event``) needs parsing."""
        raise NotImplementedError

    def on_payload(self, name: bytes, payload: dict[str, Any]) -> None:
        """One parsed event of a wanted type."""
        raise NotImplementedError

    def wants(self, run: bytes) -> bool:
        # A run is usually one event: its name decides without scanning for markers.
        name = single_event_name(run)
        if name is None:
            return any(marker in run for marker in self.MARKERS)
        return self.wanted(name, run)

    def worth(self, event: bytes) -> bool:
        if not event.startswith(b"event:"):
            return True  # no event: line (a compatible server): on_event looks at the data
        return self.wanted(event_name(event), event)

    def on_event(self, event: bytes) -> bool:
        name, data = event_fields(event)
        if name:
            if not self.wanted(name, data):
                return True
            payload = load_object(data)
        else:
            if not any(marker in data for marker in self.MARKERS):
                return True
            payload = load_object(data)
            kind = payload.get("type") if payload is not None else None
            name = kind.encode() if isinstance(kind, str) else b""
        if payload is not None:
            self.on_payload(name, payload)
        return True
