"""The Anthropic Messages API: routes, credentials, error shapes.

Clients use ``http://gateway/<name>`` as their base URL; the upstream path is
the whole suffix after ``/<name>`` (``/v1/messages``).
"""

import orjson

from aibridge.keypool import ErrorKind, KeyPoolError
from aibridge.providers._shape import (
    JSON_HEADERS,
    ErrorResponse,
    Route,
    RouteKind,
    RouteMiss,
    retry_headers,
)

TYPE = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
KEY_HEADER = "x-api-key"

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    426: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}


def match_route(method: str, path: str) -> Route | RouteMiss:
    """Classify ``path`` (what follows ``/<name>``) for ``method``."""
    if path == "/v1/messages":
        if method != "POST":
            return RouteMiss.METHOD_NOT_ALLOWED
        return Route(RouteKind.BRIDGED, "messages", path)
    if path == "/v1/messages/count_tokens":
        return Route(RouteKind.PASSTHROUGH, path, path)
    if path == "/v1/models":
        return Route(RouteKind.PASSTHROUGH, path, path)
    if path.startswith("/v1/models/"):
        return Route(RouteKind.PASSTHROUGH, "/v1/models/*", path)
    return RouteMiss.NOT_FOUND


def key_header(key: str) -> tuple[str, str]:
    return (KEY_HEADER, key)


def error_body(message: str, type: str, request_id: str | None = None) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": type, "message": message}, "request_id": request_id}
    )


def error_response(
    status: int,
    type: str | None = None,
    message: str = "",
    *,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> ErrorResponse:
    all_headers = dict(JSON_HEADERS)
    if headers:
        all_headers.update(headers)
    if request_id:
        all_headers["request-id"] = request_id
    error_type = type or _TYPE_BY_STATUS.get(status, "api_error")
    return ErrorResponse(status, all_headers, error_body(message, error_type, request_id))


def pool_error_response(err: KeyPoolError, request_id: str | None = None) -> ErrorResponse:
    if err.kind is ErrorKind.RATE_LIMITED:
        return error_response(
            429,
            "rate_limit_error",
            str(err),
            headers=retry_headers(err.retry_after),
            request_id=request_id,
        )
    return error_response(502, "api_error", str(err), request_id=request_id)


def stream_error_event(message: str, type: str = "api_error") -> bytes:
    """The SSE frame that ends a messages stream that broke after commit."""
    data = orjson.dumps({"type": "error", "error": {"type": type, "message": message}})
    return b"event: error\ndata: " + data + b"\n\n"
