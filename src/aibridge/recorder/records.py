"""What aibridge records about each interception (one bridged request).

Plain slotted dataclasses: built once per request at its end, handed to a
Recorder, written in batches by a background writer. No secret is ever stored:
keys appear only as their masked hint.
"""

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenUsage:
    """Tokens of one upstream response, normalised across providers.

    ``input`` excludes cached input; ``cache_read``/``cache_write`` are the cached
    parts; ``extra`` keeps provider-specific counters (reasoning tokens, the
    Anthropic ephemeral 5m/1h split, web search requests, ...).
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ToolCall:
    """A client-defined tool the model chose to call."""

    name: str
    call_id: str
    arguments: str


@dataclass(slots=True)
class Interception:
    id: str  # uuid4 hex form with dashes; equals the x-aibridge-request-id header
    user: str
    provider: str  # the provider's configured name (route prefix)
    provider_type: str  # openai | anthropic
    model: str
    route: str  # chat | responses | messages
    streaming: bool
    client: str  # claude-code | codex | cursor | zed | ... | unknown
    user_agent: str
    session_id: str | None
    credential: str  # pool | byok
    key_hint: str | None  # masked hint of the key that answered, never the key
    attempts: int
    started_at: float  # epoch seconds
    ended_at: float
    status: int
    error_type: str | None = None  # rate_limited | unauthorized | bad_request | overloaded |
    #                                server_error | timeout | client_closed
    error_message: str | None = None  # <= 1 KiB
    usage: TokenUsage | None = None
    prompt: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
