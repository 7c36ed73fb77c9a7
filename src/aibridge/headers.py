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
