"""Configuration: the structs a router is built from, in code or from TOML.

Every struct is a frozen ``msgspec.Struct`` that forbids unknown fields; a bad value
raises :class:`~router.errors.ConfigError` naming its path (``routes.fast.hedge.delay``).
:func:`router.load_config` reads a TOML file; :func:`decode_config` takes the same
structure from a mapping or bytes; :func:`config_from_env` builds one provider per vendor
whose key is in the environment.  docs/configuration.md describes every field.

==========================  ============================================================
:class:`RouterConfig`       the whole configuration: providers, routes, models, defaults
:class:`ProviderConfig`     one provider: kind, key variable, base URL, limits
:class:`RouteConfig`        a route (a model alias): targets, strategy, hedge, retry
:class:`ModelConfig`        per-model overrides: prices, context window, capabilities
:class:`MockConfig`         the in-process mock provider's scripted answers
:class:`HedgeConfig`        when and how many hedges a route launches
:class:`RetryConfig`        per-target retries and the retry budget
:class:`BreakerConfig`      a provider's circuit breaker
:class:`BudgetConfig`       a spend cap per period
:class:`SupervisorConfig`   actor restarts after a crash
:class:`AuditConfig`        the audit log
:class:`TracingConfig`      OpenTelemetry spans
:class:`GatewayConfig`      ``llm-router serve``: address, body limit, deadlines, shutdown
:class:`GatewayKeyConfig`   one gateway key: its routes, rate limits and spend cap
:class:`SharedConfig`       limits shared by several processes, on Redis
==========================  ============================================================

Example::

    from router.config import ProviderConfig, RouteConfig, RouterConfig

    config = RouterConfig(
        providers={"local": ProviderConfig(kind="mock")},
        routes={"fast": RouteConfig(targets=["local:echo"])},
    )
"""

from ._config import AuditConfig as AuditConfig
from ._config import BudgetConfig as BudgetConfig
from ._config import GatewayConfig as GatewayConfig
from ._config import GatewayKeyConfig as GatewayKeyConfig
from ._config import HedgeConfig as HedgeConfig
from ._config import MockConfig as MockConfig
from ._config import ModelConfig as ModelConfig
from ._config import ProviderConfig as ProviderConfig
from ._config import RouteConfig as RouteConfig
from ._config import RouterConfig as RouterConfig
from ._config import SharedConfig as SharedConfig
from ._config import SupervisorConfig as SupervisorConfig
from ._config import TracingConfig as TracingConfig
from ._config import decode_config as decode_config
from ._health import BreakerConfig as BreakerConfig
from ._providers import config_from_env as config_from_env
from ._retry import RetryConfig as RetryConfig

__all__ = [
    "AuditConfig",
    "BreakerConfig",
    "BudgetConfig",
    "config_from_env",
    "decode_config",
    "GatewayConfig",
    "GatewayKeyConfig",
    "HedgeConfig",
    "MockConfig",
    "ModelConfig",
    "ProviderConfig",
    "RetryConfig",
    "RouteConfig",
    "RouterConfig",
    "SharedConfig",
    "SupervisorConfig",
    "TracingConfig",
]
