"""What the fake upstream does for a key: ``Behaviour`` and its text form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

__all__ = [
    "ERROR_KINDS",
    "STREAM_FAULT_KINDS",
    "Behaviour",
    "BehaviourKind",
    "parse_behaviour_spec",
]

BehaviourKind = Literal[
    "ok",
    "rate_limit",
    "unauthorized",
    "forbidden",
    "server_error",
    "overloaded",
    "bad_request",
    "slow",
    "cut",
    "stall",
    "stream_error",
]
KINDS: frozenset[str] = frozenset(get_args(BehaviourKind))

# Kinds answered with an error status before any body.
ERROR_KINDS: frozenset[str] = frozenset(
    {"rate_limit", "unauthorized", "forbidden", "server_error", "overloaded", "bad_request"}
)
# Kinds that only change streams (a blocking request is answered normally).
STREAM_FAULT_KINDS: frozenset[str] = frozenset({"cut", "stall", "stream_error"})

# The parameter a bare ``key=kind:VALUE`` sets, per kind.
_PRIMARY_PARAM: dict[str, str] = {
    "slow": "delay",
    "cut": "cut_after",
    "stall": "cut_after",
    "stream_error": "cut_after",
    **{kind: "retry_after" for kind in ERROR_KINDS},
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the fake upstream answers requests made with one key.

    - ``delay``: seconds to wait before answering (any kind; ``slow`` is ``ok`` + delay).
    - ``retry_after`` / ``retry_after_ms``: sent as ``Retry-After`` / ``retry-after-ms``
      on error answers.
    - ``cut_after``: SSE frames sent before a ``cut``, ``stall`` or ``stream_error``.
    - ``status``: overrides the HTTP status of an error kind.
    - ``message``: overrides the error message.
    - ``times``: after this many requests the key reverts to ``ok`` (None: forever).
    """

    kind: BehaviourKind = "ok"
    delay: float = 0.0
    retry_after: float | None = None
    retry_after_ms: int | None = None
    cut_after: int = 3
    status: int | None = None
    message: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"unknown behaviour kind {self.kind!r}; expected one of {sorted(KINDS)}"
            )
        if self.delay < 0 or self.cut_after < 0 or (self.times is not None and self.times < 1):
            raise ValueError(f"invalid behaviour parameters: {self!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Behaviour:
        """Build from JSON such as ``{"kind": "rate_limit", "retry_after": 5}``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown behaviour fields: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(name: str, raw: str) -> Any:
    if name in ("kind", "message"):
        return raw
    if name in ("cut_after", "status", "times", "retry_after_ms"):
        return int(raw)
    return float(raw)


def parse_behaviour_spec(text: str) -> tuple[str, Behaviour]:
    """Parse ``KEY=KIND[:PARAM]`` as given on the command line.

    PARAM is either a bare value for the kind's main parameter (``rate_limit:5``
    -> retry_after 5 s, ``slow:0.5`` -> delay, ``cut:3`` / ``stall:3`` -> cut_after)
    or comma-separated ``name=value`` pairs (``rate_limit:retry_after_ms=1500,times=2``).
    """
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key or not rest:
        raise ValueError(f"behaviour spec {text!r} is not KEY=KIND[:PARAM]")
    kind, _, param = rest.partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise ValueError(f"unknown behaviour kind {kind!r} in {text!r}")
    values: dict[str, Any] = {"kind": kind}
    param = param.strip()
    if param:
        try:
            if "=" in param:
                for pair in param.split(","):
                    name, _, raw = pair.partition("=")
                    values[name.strip()] = _coerce(name.strip(), raw.strip())
            elif kind in _PRIMARY_PARAM:
                name = _PRIMARY_PARAM[kind]
                values[name] = _coerce(name, param)
            else:
                raise ValueError(f"kind {kind!r} takes no bare parameter")
        except ValueError as exc:
            raise ValueError(f"bad parameter in behaviour spec {text!r}: {exc}") from exc
    return key, Behaviour.from_dict(values)
