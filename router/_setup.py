"""What :func:`~router.open_router` sets up around a router, apart from its actors:
the exact tokenizer warmed up, the request-id prefix, the secrets the audit log must
never show, and the tracing and metrics listeners (optional extras, imported only
when configured)."""

from __future__ import annotations

import importlib.util
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from providers import ConfigError, Provider

from ._config import RouterConfig
from ._events import Listener

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ._actor import ProviderActor
    from ._metrics import PrometheusMetrics
    from ._routes import Routes
    from ._shared._client import SharedClient
    from ._shared._keys import SharedKeyLimits
    from ._statistics import RouterStatistics

#: A task to start with ``nursery.start``.
Runner = Callable[..., Awaitable[None]]

__all__ = [
    "id_prefix",
    "known_secrets",
    "metrics",
    "shared_limits",
    "tracer",
    "warm_tokenizers",
]

#: Kinds whose models an offline tokenizer may count exactly (OpenAI's encodings).
_OPENAI_FAMILY = frozenset({"openai", "azure", "openrouter", "openai-compatible"})
_warmed = False


async def warm_tokenizers(providers: Iterable[Provider]) -> None:
    """Load the exact tokenizer in a thread once, if one is installed and may be used.

    Loading it takes about half a second; done lazily, the first request to an OpenAI
    model would block the event loop that long.
    """
    global _warmed
    if _warmed or not any(p.kind in _OPENAI_FAMILY for p in providers):
        return
    _warmed = True
    if importlib.util.find_spec("bpe_openai") is None:
        return
    from providers._tokens import exact_backend

    for model in ("gpt-4o", "gpt-4"):
        await trio.to_thread.run_sync(exact_backend, model)


def id_prefix(seed: int | None) -> str:
    """The router's request-id prefix: random, or derived from ``seed`` (reproducible)."""
    return f"{random.Random(seed).getrandbits(32):08x}"


_SECRET_HEADER = re.compile(r"auth|key|token|secret", re.IGNORECASE)


def known_secrets(config: RouterConfig, providers: Mapping[str, Provider]) -> list[str]:
    """Every secret the router knows of: its adapters' keys, and keys in its config.

    The HTTP adapters keep the values they must never show in ``_secrets`` (their API
    key, an Azure AD token); configured keys come from ``api_key_env`` and from headers
    whose names say they carry one.
    """
    found: list[str] = []
    for provider in providers.values():
        try:
            found.extend(getattr(provider, "_secrets", ()))
        except Exception:  # a user's provider with an odd ``_secrets``: nothing known
            pass
    for pc in config.providers.values():
        if pc.api_key_env:
            value = os.environ.get(pc.api_key_env)
            if value:
                found.append(value)
        for name, value in pc.headers.items():
            if _SECRET_HEADER.search(name):
                found.append(value)
                found.append(value.rpartition(" ")[2])  # "Bearer <token>"
    return sorted({s for s in found if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True)


def tracer(
    config: RouterConfig,
    tracer_provider: TracerProvider | None,
    providers: Mapping[str, Provider],
) -> Listener | None:
    """The tracing listener, when a tracer provider is given or tracing is enabled."""
    if tracer_provider is None and not config.tracing.enabled:
        return None
    try:
        from ._tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            "tracing needs OpenTelemetry: pip install 'trio-llm-router[otel]' "
            f"({type(exc).__name__}: {exc})"
        ) from None
    kinds = {name: provider.kind for name, provider in providers.items()}
    return Tracing(tracer_provider, kinds)


def metrics(
    registry: CollectorRegistry | None, statistics: Callable[[], RouterStatistics]
) -> PrometheusMetrics | None:
    """The Prometheus collector over ``statistics``, when a registry is given."""
    if registry is None:
        return None
    try:
        from ._metrics import PrometheusMetrics
    except ImportError as exc:
        raise ConfigError(
            "metrics need prometheus-client: pip install 'trio-llm-router[prometheus]' "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return PrometheusMetrics(registry, statistics, trio.lowlevel.current_trio_token())


@asynccontextmanager
async def shared_limits(
    config: RouterConfig,
    actors: Mapping[str, ProviderActor],
    on_event: Listener,
    rng: random.Random,
    routes: Routes | None = None,
) -> AsyncIterator[tuple[SharedClient, list[Runner], dict[str, SharedKeyLimits]] | None]:
    """The shared limits' client and the tasks to start, when ``[shared]`` is set
    (``None`` otherwise: coredis is not imported).  Each provider gets a gate attached
    to its mailbox and a shared breaker in place of its own, and the spend caps of
    ``routes`` (the router's, the routes', the providers') move to Redis; the caller
    starts ``client.run`` and then each task (gates, breakers, budgets).  The gateway
    keys of ``config`` with limits get theirs on Redis too (router._shared._keys), by
    key name."""
    shared = config.shared
    if shared is None:
        yield None
        return
    url = shared.url()
    try:
        from ._shared._breaker import SharedBreaker
        from ._shared._budgets import share_budgets
        from ._shared._client import SharedClient
        from ._shared._keys import share_key_limits
        from ._shared._limits import ProviderGate
    except ImportError as exc:
        raise ConfigError(
            "[shared] needs coredis: pip install 'trio-llm-router[shared]' "
            f"({type(exc).__name__}: {exc})"
        ) from None
    client = SharedClient(shared, url, on_event=on_event, rng=random.Random(rng.random()))
    async with client:
        gates: list[ProviderGate] = []
        for name, actor in actors.items():
            rpm, tpm, rpm_burst, tpm_burst, max_concurrency = actor.mailbox.limits
            gate = ProviderGate(
                client,
                name,
                rpm=rpm,
                tpm=tpm,
                rpm_burst=rpm_burst,
                tpm_burst=tpm_burst,
                max_concurrency=max_concurrency,
            )
            actor.mailbox.attach(gate)
            gates.append(gate)
        runners: list[Runner] = [gate.run for gate in gates]
        for actor in actors.values():
            runners.append(SharedBreaker.install(client, actor, on_event).run)
        budgets = None if routes is None else share_budgets(client, routes)
        if budgets is not None:
            runners.append(budgets.run)
        keys, key_gates, owner = share_key_limits(
            client, config.gateway.keys, budgets, trio.current_time()
        )
        runners += [gate.run for gate in key_gates]
        if owner is not None and owner is not budgets:  # the keys' caps alone
            runners.append(owner.run)
        yield client, runners, keys
