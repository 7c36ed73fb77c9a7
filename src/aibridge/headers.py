"""Which headers cross the gateway, in each direction."""

# Never forwarded upstream: the client's credentials, our own control headers,
# cookies, hop-by-hop headers, and what the HTTP client recomputes.
_DROP_REQUEST = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"cookie",
        b"host",
        b"content-length",
        b"accept-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)

# Relayed back to the client: what clients read to pace and trace themselves.
_KEEP_RESPONSE_EXACT = frozenset(
    {
        "content-type",
        "retry-after",
        "retry-after-ms",
        "request-id",
        "x-request-id",
        "openai-processing-ms",
        "openai-version",
        "openai-organization",
        "anthropic-organization-id",
        "cache-control",
        "location",
    }
)
_KEEP_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def forwardable_request_header(name: bytes) -> bool:
    return name not in _DROP_REQUEST and not name.startswith(b"x-aibridge-")


def relayable_response_header(lowered_name: str) -> bool:
    return lowered_name in _KEEP_RESPONSE_EXACT or lowered_name.startswith(_KEEP_RESPONSE_PREFIXES)


# Header names repeat from request to request: remember each one's verdict (bounded,
# since a client or an upstream may send names of its own making).
_MAX_CACHED_NAMES = 1024
_forward_names: dict[bytes, str | None] = {}
_relayed: dict[bytes, bool] = {}


def forward_name(name: bytes) -> str | None:
    """A request header's name as str when it may go upstream, else None."""
    try:
        return _forward_names[name]
    except KeyError:
        result = name.decode("latin-1") if forwardable_request_header(name) else None
        if len(_forward_names) < _MAX_CACHED_NAMES:
            _forward_names[name] = result
        return result


def relayed(lowered_name: bytes) -> bool:
    """Whether the client gets a response header (its name already lowercased)."""
    try:
        return _relayed[lowered_name]
    except KeyError:
        result = relayable_response_header(lowered_name.decode("latin-1"))
        if len(_relayed) < _MAX_CACHED_NAMES:
            _relayed[lowered_name] = result
        return result
