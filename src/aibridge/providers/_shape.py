"""What every provider type shares: the error response value and route kinds."""

from dataclasses import dataclass, field
from enum import StrEnum

import orjson


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A complete HTTP error answer in one provider's own format."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> object:
        return orjson.loads(self.body)


class RouteKind(StrEnum):
    BRIDGED = "bridged"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class Route:
    """A request path the provider type serves.

    ``api`` names the bridged API (``chat``, ``responses``, ``messages``) or, for a
    passthrough, the route template used as a metric label (``/v1/models``).
    ``upstream_path`` is appended to the provider's base URL.
    """

    kind: RouteKind
    api: str
    upstream_path: str


class RouteMiss(StrEnum):
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"


JSON_HEADERS = {"content-type": "application/json"}


def retry_headers(retry_after: float) -> dict[str, str]:
    """``retry-after`` (whole seconds, rounded up) and ``retry-after-ms``."""
    ms = max(0, int(-(-retry_after * 1000 // 1)))
    seconds = -(-ms // 1000)
    return {"retry-after": str(seconds), "retry-after-ms": str(ms)}
