"""Provider types: data and small pure functions, one module per type."""

from types import ModuleType

from aibridge.providers import anthropic, openai
from aibridge.providers._shape import ErrorResponse, Route, RouteKind, RouteMiss, retry_headers

PROVIDER_TYPES: dict[str, ModuleType] = {openai.TYPE: openai, anthropic.TYPE: anthropic}

__all__ = [
    "PROVIDER_TYPES",
    "ErrorResponse",
    "Route",
    "RouteKind",
    "RouteMiss",
    "anthropic",
    "openai",
    "retry_headers",
]
