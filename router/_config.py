"""Configuration structures: the router, its providers, its routes.

The same structures come from TOML (``load_config``) or are built in code; both are
validated by msgspec, with unknown fields forbidden so a typo is an error, not a silent
default.

Synopsis::

    config = RouterConfig(
        providers={
            "openai": ProviderConfig(kind="openai", api_key_env="OPENAI_API_KEY", rpm=500),
            "local": ProviderConfig(kind="mock"),
        },
        routes={"fast": RouteConfig(targets=["openai:gpt-4o-mini", "local:echo"])},
    )
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any, Literal, TypeAlias, TypeVar

import msgspec

from providers import ConfigError

from ._health import BreakerConfig
from ._retry import RetryConfig

__all__ = [
    "MockConfig",
    "check_references",
    "decode_config",
    "load_config",
    "ProviderConfig",
    "ProviderKind",
    "RouteConfig",
    "RouterConfig",
    "SupervisorConfig",
]

ProviderKind: TypeAlias = Literal[
    "openai",
    "anthropic",
    "gemini",
    "ollama",
    "openrouter",
    "groq",
    "together",
    "azure",
    "openai-compatible",
    "mock",
]


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config struct: immutable, keyword-only, strict."""


class MockConfig(_Config, frozen=True):
    """Behaviour of a ``kind = "mock"`` provider: an in-process MockProvider.

    ``reply`` is a fixed answer; without it the mock echoes the last user message.
    """

    reply: str | None = None
    latency: float = 0.0
    chunk_latency: float = 0.0
    models: list[str] = msgspec.field(default_factory=lambda: ["mock-model"])

    def __post_init__(self) -> None:
        if self.latency < 0 or self.chunk_latency < 0:
            raise ValueError("latencies must be >= 0")


class ProviderConfig(_Config, frozen=True):
    """One provider deployment: how to reach it and how hard it may be pushed.

    Limits: ``rpm`` requests and ``tpm`` tokens per minute (token buckets whose burst
    defaults to the full per-minute limit), ``max_concurrency`` requests in flight,
    ``max_queue`` requests waiting.  ``None`` means unlimited.
    """

    kind: ProviderKind
    api_key_env: str | None = None
    base_url: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    rpm_burst: int | None = None
    tpm_burst: int | None = None
    max_concurrency: int | None = None
    max_queue: int = 1000
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    #: p95 latency (seconds) above which the provider is reported degraded.
    degraded_latency: float | None = None
    mock: MockConfig | None = None

    def __post_init__(self) -> None:
        for field in ("rpm", "tpm", "rpm_burst", "tpm_burst", "max_concurrency"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"`{field}` must be positive, got {value}")
        if self.max_queue < 0:
            raise ValueError(f"`max_queue` must be >= 0, got {self.max_queue}")
        if self.mock is not None and self.kind != "mock":
            raise ValueError("`mock` settings belong to providers of kind 'mock'")


class RouteConfig(_Config, frozen=True):
    """A model alias: targets (``provider:model``) tried in order on failure."""

    targets: list[str]
    strategy: Literal["fallback"] = "fallback"

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("a route needs at least one target")
        for t in self.targets:
            provider, sep, model = t.partition(":")
            if not sep or not provider or not model:
                raise ValueError(f"route target {t!r} must look like 'provider:model'")


class SupervisorConfig(_Config, frozen=True):
    """How crashed actors are restarted.

    The n-th restart waits ``min(restart_backoff · 2^(n-1), max_restart_backoff)``
    seconds; more than ``max_restarts`` crashes within ``restart_window`` seconds mark
    the provider unhealthy (crashed) and stop restarting it.
    """

    max_restarts: int = 5
    restart_window: float = 60.0
    restart_backoff: float = 0.1
    max_restart_backoff: float = 5.0


class RouterConfig(_Config, frozen=True):
    """The whole router: providers by name, routes by alias, supervision."""

    providers: dict[str, ProviderConfig]
    routes: dict[str, RouteConfig] = msgspec.field(default_factory=dict)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    #: Output budget assumed for admission when a request sets no ``max_tokens``.
    default_max_tokens: int = 1024

    def __post_init__(self) -> None:
        if not self.providers:
            raise ValueError("`providers` must configure at least one provider")
        for name in self.providers:
            if not name or ":" in name:
                raise ValueError(f"provider name {name!r} must be non-empty and contain no ':'")
        check_references(self)


def check_references(config: RouterConfig) -> None:
    """Check what refers to what: routes name configured providers, not providers' names.

    Raises:
        ConfigError: with the path of the first bad reference.
    """
    for alias, route in config.routes.items():
        if alias in config.providers:
            raise ConfigError(
                f"route {alias!r} has the same name as a provider", path=f"$.routes.{alias}"
            )
        for i, t in enumerate(route.targets):
            provider = t.partition(":")[0]
            if provider not in config.providers:
                raise ConfigError(
                    f"route {alias!r} targets unknown provider {provider!r}; "
                    f"configured: {sorted(config.providers)}",
                    path=f"$.routes.{alias}.targets[{i}]",
                )


# msgspec reports "Expected `int`, got `str` - at `$.rpm`"; __post_init__ messages start
# with the field they are about ("`rpm` must be positive", "max_attempts: must be ...").
_AT_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_FIRST = re.compile(r"^`?(?P<field>[a-z_]+)`?:?\s")


def _fields(*types: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(f for t in types for f in t.__struct_fields__)


_ALL_FIELDS = _fields(
    RouterConfig,
    ProviderConfig,
    RouteConfig,
    SupervisorConfig,
    MockConfig,
    BreakerConfig,
    RetryConfig,
)


def _key(name: str) -> str:
    return f".{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name) else f"[{name!r}]"


def _config_error(exc: msgspec.ValidationError, prefix: str, source: str) -> ConfigError:
    match = _AT_PATH.match(str(exc))
    assert match is not None  # the pattern matches any text
    message = match["message"].replace("`", "")
    path = prefix + (match["path"] or "")
    unknown = re.match(r"object contains unknown field (\S+)$", message, re.IGNORECASE)
    if unknown is not None:
        return ConfigError(
            f"unknown field {unknown[1]!r} (in {source})", path=path + _key(unknown[1])
        )
    field = _FIELD_FIRST.match(message)
    if field is not None and field["field"] in _ALL_FIELDS:
        # A __post_init__ check: point at the field, and drop it from the message.
        path += _key(field["field"])
        message = message[field.end() :].lstrip(": ")
    message = message[:1].lower() + message[1:]
    return ConfigError(f"{message} (in {source})", path=path)


_T = TypeVar("_T")


def _convert(value: object, type_: type[_T], prefix: str, source: str) -> _T:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise _config_error(exc, prefix, source) from None


def _table(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"expected a table, got {type(value).__name__} (in {source})", path=f"$.{name}"
        )
    return value


def decode_config(data: bytes | str, *, source: str = "<config>") -> RouterConfig:
    """Decode TOML text into a validated :class:`RouterConfig`.

    Raises:
        ConfigError: the TOML does not parse, or a value is wrong; ``path`` names it
            (``$.providers.openai.rpm``).

    Example::

        config = decode_config('''
            [providers.local]
            kind = "mock"
        ''')
    """
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    # Providers and routes are converted one by one, so an error's path names the
    # table key ("$.providers.openai.rpm") where msgspec alone would say "$.providers[...]".
    tables = {
        name: {
            key: _convert(value, type_, f"$.{name}{_key(key)}", source)
            for key, value in _table(raw, name, source).items()
        }
        for name, type_ in (("providers", ProviderConfig), ("routes", RouteConfig))
    }
    config = _convert({**raw, **tables}, RouterConfig, "$", source)
    return config


def load_config(path: str | os.PathLike[str]) -> RouterConfig:
    """Read and validate a TOML configuration file (the shape is in docs/configuration.md).

    Unknown fields are errors, so a typo is reported rather than silently ignored.

    Raises:
        ConfigError: the file cannot be read or is invalid; the message names the file,
            and ``path`` the field (``$.providers.openai.rpm: expected int, got str``).

    Example::

        config = load_config("router.toml")
        async with open_router(config) as router:
            ...
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {name!r}: {exc.strerror}") from None
    return decode_config(data, source=name)
