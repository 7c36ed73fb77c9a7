"""The OpenAI API (and OpenAI-compatible servers): routes, credentials, error shapes.

Clients use ``http://gateway/<name>/v1`` as their base URL, and the provider's
``base_url`` already ends in ``/v1``; so the upstream path is what follows ``/v1``.
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

TYPE = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEY_HEADER = "authorization"

_BRIDGED = {"/v1/chat/completions": "chat", "/v1/responses": "responses"}
_PASSTHROUGH_EXACT = ("/v1/models", "/v1/embeddings")
_PASSTHROUGH_PREFIX = ("/v1/models/", "/v1/responses/", "/v1/conversations")

_TYPE_BY_STATUS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "unknown_url"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    426: ("invalid_request_error", "upgrade_required"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    502: ("api_error", "server_error"),
    503: ("api_error", "service_unavailable"),
    504: ("api_error", "timeout"),
}


def match_route(method: str, path: str) -> Route | RouteMiss:
    """Classify ``path`` (what follows ``/<name>``) for ``method``."""
    api = _BRIDGED.get(path)
    if api is not None:
        if method != "POST":
            return RouteMiss.METHOD_NOT_ALLOWED
        return Route(RouteKind.BRIDGED, api, path[3:])
    if path in _PASSTHROUGH_EXACT:
        return Route(RouteKind.PASSTHROUGH, path, path[3:])
    for prefix in _PASSTHROUGH_PREFIX:
        if path.startswith(prefix):
            label = prefix.rstrip("/") + ("/*" if prefix.endswith("/") else "")
            return Route(RouteKind.PASSTHROUGH, label, path[3:])
    return RouteMiss.NOT_FOUND


def key_header(key: str) -> tuple[str, str]:
    return (KEY_HEADER, "Bearer " + key)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_response(
    status: int,
    type: str | None = None,
    message: str = "",
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> ErrorResponse:
    default_type, default_code = _TYPE_BY_STATUS.get(status, ("api_error", None))
    all_headers = dict(JSON_HEADERS)
    if headers:
        all_headers.update(headers)
    if request_id:
        all_headers["x-request-id"] = request_id
    body = error_body(message, type or default_type, code or default_code, param)
    return ErrorResponse(status, all_headers, body)


def pool_error_response(err: KeyPoolError, request_id: str | None = None) -> ErrorResponse:
    if err.kind is ErrorKind.RATE_LIMITED:
        return error_response(
            429,
            "rate_limit_error",
            str(err),
            code="rate_limit_exceeded",
            headers=retry_headers(err.retry_after),
            request_id=request_id,
        )
    return error_response(502, "api_error", str(err), code="server_error", request_id=request_id)


def stream_error_event(message: str, type: str = "api_error") -> bytes:
    """The SSE frame that ends a chat/responses stream that broke after commit."""
    return b"data: " + error_body(message, type, "stream_error") + b"\n\n"
