"""A fake OpenAI + Anthropic upstream for tests, ``aibridge demo`` and benchmarks.

One raw-ASGI app serves both APIs in their real wire formats, blocking and SSE:

- OpenAI (base URL ``http://HOST:PORT/v1``): ``POST /v1/chat/completions``,
  ``POST /v1/responses``, ``GET /v1/responses/{id}``, ``GET /v1/models[/{id}]``,
  ``POST /v1/embeddings``.
- Anthropic (base URL ``http://HOST:PORT``): ``POST /v1/messages``,
  ``POST /v1/messages/count_tokens``, ``GET /v1/models[/{id}]`` (answered in
  Anthropic's shape when the request has ``x-api-key`` or ``anthropic-version``).
- Control: ``POST /_mock/behaviours``, ``GET /_mock/behaviours``,
  ``GET /_mock/stats``, ``POST /_mock/reset``.

Token counts are the constants in ``MOCK_USAGE`` so tests can assert exact numbers.
"""

from ._app import MockUpstream, RecordedRequest
from ._behaviour import Behaviour, BehaviourKind, parse_behaviour_spec
from ._command import mock_upstream_command, serve_mock
from ._payloads import (
    EMBEDDING,
    MOCK_COUNT_TOKENS,
    MOCK_USAGE,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_USE_ID,
    mock_text,
)

__all__ = [
    "EMBEDDING",
    "MOCK_COUNT_TOKENS",
    "MOCK_USAGE",
    "TOOL_ARGUMENTS",
    "TOOL_CALL_ID",
    "TOOL_USE_ID",
    "Behaviour",
    "BehaviourKind",
    "MockUpstream",
    "RecordedRequest",
    "mock_text",
    "mock_upstream_command",
    "parse_behaviour_spec",
    "serve_mock",
]
