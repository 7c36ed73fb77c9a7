"""aibridge's configuration: a YAML file (``${VAR}`` expanded) or environment variables.

Validated once at startup with pydantic; never consulted on the request path.
Error messages name the field and never echo a value: a key or token must not
reach a terminal through a typo.
"""

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aibridge.providers import anthropic, openai

NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RESERVED_NAMES = frozenset({"healthz", "metrics", "admin"})


class ConfigError(ValueError):
    """An invalid configuration: one line, naming the field, never a secret."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    shutdown_timeout: float = Field(30.0, ge=0)


class TokenConfig(_Model):
    user: str = Field(min_length=1)
    token: str = Field(min_length=1, repr=False)


class AuthConfig(_Model):
    tokens: list[TokenConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_tokens(self) -> "AuthConfig":
        seen: set[str] = set()
        for i, entry in enumerate(self.tokens):
            if entry.token in seen:
                raise ValueError(f"duplicate token at index {i}")
            seen.add(entry.token)
        return self


class AdminConfig(_Model):
    token: str = Field(min_length=1, repr=False)


class TimeoutConfig(_Model):
    connect: float = Field(10.0, gt=0)
    response: float = Field(600.0, gt=0)  # a blocking response, or a stream's first byte
    idle: float = Field(300.0, gt=0)  # a stream's silence between chunks


class BreakerConfigModel(_Model):
    failure_threshold: int = Field(5, ge=1)
    open_timeout: float = Field(30.0, gt=0)
    half_open_probes: int = Field(3, ge=1)
    failure_statuses: list[int] | None = None


class ProviderConfig(_Model):
    name: str
    type: Literal["openai", "anthropic"]
    base_url: str
    keys: list[str] = Field(min_length=1, repr=False)
    allow_byok: bool = True
    timeouts: TimeoutConfig = TimeoutConfig()
    on_unauthorized: Literal["cooldown", "disable"] = "cooldown"
    on_forbidden: Literal["ignore", "cooldown", "disable"] = "ignore"
    strategy: Literal["primary", "round_robin", "weighted"] = "primary"
    weights: list[float] | None = None
    circuit_breaker: BreakerConfigModel | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must match ^[a-z0-9]+(-[a-z0-9]+)*$")
        if value in _RESERVED_NAMES:
            raise ValueError(f"{value!r} is reserved")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/")

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        seen: set[str] = set()
        for i, key in enumerate(keys):
            if not key.strip():
                raise ValueError(f"empty key at index {i}")
            if key in seen:
                raise ValueError(f"duplicate key at index {i}")
            seen.add(key)
        return keys

    @model_validator(mode="after")
    def _weights(self) -> "ProviderConfig":
        if self.weights is not None:
            if len(self.weights) != len(self.keys):
                raise ValueError("weights must have one entry per key")
            if any(w <= 0 for w in self.weights):
                raise ValueError("weights must be > 0")
        elif self.strategy == "weighted":
            raise ValueError("strategy 'weighted' needs weights")
        return self


class TracingConfig(_Model):
    enabled: bool = False


class Config(_Model):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig | None = None
    admin: AdminConfig | None = None
    providers: list[ProviderConfig] = Field(min_length=1)
    database: str | None = None  # sqlite:///aibridge.db when unset
    spool: str | None = None  # where records wait while the database is down
    state: str | None = None  # redis://... to share key state across replicas
    # Prefix of every Redis key and channel: replicas share state only within one namespace.
    state_namespace: str = Field("aibridge", pattern=r"^[A-Za-z0-9_.-]+$")
    tracing: TracingConfig = TracingConfig()
    log_requests: bool = True

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        seen: set[str] = set()
        for provider in self.providers:
            if provider.name in seen:
                raise ValueError(f"duplicate provider name {provider.name!r}")
            seen.add(provider.name)
        return self


def _expand(value: Any, path: str) -> Any:
    """Replace ``${VAR}`` in every string; a missing VAR is an error naming it."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return os.environ[name]

        return _VAR_RE.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    return value


def _describe(err: ValidationError) -> str:
    """The first validation problem as ``field.path: message``, without the input value."""
    first = err.errors(include_input=False, include_url=False)[0]
    loc = ""
    for part in first["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    message = first["msg"].removeprefix("Value error, ")
    return f"{loc or 'config'}: {message}"


def from_mapping(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping")
    expanded = _expand(raw, "")
    try:
        return Config.model_validate(expanded)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def read_yaml(path: str | Path) -> Any:
    """The file's YAML, unvalidated. Errors name the line, never quote it: the line may
    hold a key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"config: cannot read {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config: invalid YAML{where}") from None


def load_file(path: str | Path) -> Config:
    return from_mapping(read_yaml(path))


def from_env(env: dict[str, str] | None = None) -> Config:
    """The quickstart: AIBRIDGE_OPENAI_KEYS / AIBRIDGE_ANTHROPIC_KEYS (comma-separated)."""
    env = dict(os.environ) if env is None else env
    providers: list[dict[str, Any]] = []
    for module in (openai, anthropic):
        prefix = f"AIBRIDGE_{module.TYPE.upper()}"
        keys = [k.strip() for k in env.get(f"{prefix}_KEYS", "").split(",") if k.strip()]
        if keys:
            base_url = env.get(f"{prefix}_BASE_URL") or module.DEFAULT_BASE_URL
            providers.append(
                {"name": module.TYPE, "type": module.TYPE, "base_url": base_url, "keys": keys}
            )
    if not providers:
        raise ConfigError(
            "config: no providers: pass --config FILE or set AIBRIDGE_OPENAI_KEYS / "
            "AIBRIDGE_ANTHROPIC_KEYS"
        )
    raw: dict[str, Any] = {"providers": providers}
    if env.get("AIBRIDGE_DATABASE"):
        raw["database"] = env["AIBRIDGE_DATABASE"]
    if env.get("AIBRIDGE_STATE"):
        raw["state"] = env["AIBRIDGE_STATE"]
    if env.get("AIBRIDGE_ADMIN_TOKEN"):
        raw["admin"] = {"token": env["AIBRIDGE_ADMIN_TOKEN"]}
    return from_mapping(raw)


def load(path: str | Path | None) -> Config:
    return load_file(path) if path is not None else from_env()
