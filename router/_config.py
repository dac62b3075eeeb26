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

from typing import Literal, TypeAlias

import msgspec

from ._health import BreakerConfig
from ._retry import RetryConfig

__all__ = [
    "MockConfig",
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
            raise ValueError("mock latencies must be >= 0")


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
            raise ValueError("configure at least one provider")
        for name in self.providers:
            if not name or ":" in name:
                raise ValueError(f"provider name {name!r} must be non-empty and contain no ':'")
        for alias, route in self.routes.items():
            if alias in self.providers:
                raise ValueError(f"route {alias!r} has the same name as a provider")
            for t in route.targets:
                provider = t.partition(":")[0]
                if provider not in self.providers:
                    raise ValueError(
                        f"route {alias!r} targets unknown provider {provider!r}; "
                        f"configured: {sorted(self.providers)}"
                    )
