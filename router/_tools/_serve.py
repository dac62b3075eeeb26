"""``llm-router serve``: the gateway on hypercorn's trio worker, with a graceful shutdown.

:func:`serve_gateway` serves a :class:`~router._tools._gateway.GatewayApp` on one
address until its ``shutdown_trigger`` returns: then hypercorn stops accepting, lets the
requests and streams in flight finish for ``grace`` seconds, and cancels what is left.
:func:`run_serve` is the command: the router from a config file (or, with none, over
the built-in fake upstream, keyless, as ``llm-router demo`` runs), SIGTERM and SIGINT as
the shutdown trigger (a second signal cancels at once), and the address printed on
stdout once it listens (``--port 0`` picks a free port; tests read it from there).

hypercorn is the ``gateway`` extra, imported only here, and only when serving.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import httpx
import trio

from providers import AnthropicProvider, ConfigError, OpenAIProvider, Provider, Secret
from providers.testing import Scenario, open_fake_upstream
from router import load_config, open_router
from router.config import HedgeConfig, ProviderConfig, RouteConfig, RouterConfig

from ._gateway import GatewayApp, is_loopback

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["check_bind", "demo_config", "run_serve", "serve_gateway"]


def check_bind(host: str, config: RouterConfig) -> None:
    """Refuse to serve a non-loopback address without gateway keys.

    With keys (``[gateway.keys.*]``) any address may be served: every request but
    ``/healthz`` and ``/readyz`` then needs a key.

    Raises:
        ConfigError: ``host`` is not a loopback address and no gateway keys are
            configured: anyone who can reach it could spend the providers' credits.
    """
    if is_loopback(host) or config.gateway.keys:
        return
    raise ConfigError(
        f"refusing to listen on {host!r}: the gateway has no keys configured, so anyone who "
        "can reach that address could spend your providers' credits. Configure gateway "
        "keys ([gateway.keys.NAME], docs/gateway.md), bind a loopback address "
        "(127.0.0.1, ::1, localhost), or put an authenticating proxy in front",
        path="$.gateway.host",
    )


def _bind(host: str, port: int) -> str:
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_gateway(
    app: GatewayApp,
    *,
    host: str = "127.0.0.1",
    port: int = 4000,
    grace: float | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on hypercorn's trio worker until ``shutdown_trigger`` returns.

    Started with ``nursery.start``, it hands back the URL it listens on (the real port,
    for ``port=0``).  When ``shutdown_trigger`` returns, new connections are refused and
    requests in flight (streams too) get ``grace`` seconds (default: the config's
    ``gateway.grace``) to finish; then they are cancelled.  Cancelling the task stops at
    once.  A non-loopback ``host`` is refused (:func:`check_bind`).

    Example::

        async with open_router(config) as router, trio.open_nursery() as nursery:
            url = await nursery.start(serve_gateway, GatewayApp(router, config))
    """
    check_bind(host, app.gateway.config)
    try:
        from hypercorn.config import Config
        from hypercorn.trio import serve
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ConfigError(
            "the gateway needs hypercorn: pip install 'trio-llm-router[gateway]' "
            f"({type(exc).__name__}: {exc})"
        ) from None
    config = Config()
    config.bind = [_bind(host, port)]
    config.graceful_timeout = app.gateway.settings.grace if grace is None else grace
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            functools.partial(serve, app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
        )
        task_status.started(binds[0])


#: The demo gateway's providers: one per wire format, on the built-in fake upstream.
_DEMO_KEY = Secret("sk-demo-not-a-real-key")


def demo_config() -> RouterConfig:
    """The keyless gateway's router: ``openai`` and ``anthropic`` fakes, a ``fast`` route."""
    return RouterConfig(
        providers={
            "openai": ProviderConfig(kind="openai"),
            "anthropic": ProviderConfig(kind="anthropic"),
        },
        routes={
            "fast": RouteConfig(
                targets=["openai:gpt-4o-mini", "anthropic:claude-3-5-haiku-latest"],
                hedge=HedgeConfig(max_attempts=2, delay="p95", default_delay=0.5),
            )
        },
    )


def _registry() -> CollectorRegistry | None:
    if importlib.util.find_spec("prometheus_client") is None:
        return None
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def _log_warnings_to(err: TextIO) -> logging.Handler:
    """The router's warnings and errors (an unexpected error answering a request among
    them) on ``err`` while the command serves: the library itself only has a
    ``NullHandler``, which would drop them."""
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("llm-router gateway: %(levelname)s: %(message)s"))
    logging.getLogger("trio_llm_router").addHandler(handler)
    return handler


async def run_serve(
    config_path: Path | None,
    *,
    host: str | None,
    port: int | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """``llm-router serve``: serve until SIGTERM or SIGINT, then drain; exit status 0."""
    registry = _registry()
    async with AsyncExitStack() as stack:
        stack.callback(logging.getLogger("trio_llm_router").removeHandler, _log_warnings_to(err))
        providers: dict[str, Provider] | None = None
        if config_path is None:
            config = demo_config()
            host = host or config.gateway.host
            check_bind(host, config)
            upstream = await stack.enter_async_context(
                open_fake_upstream(
                    {name: Scenario(chunk_interval=0.01) for name in ("openai", "anthropic")},
                    record=False,
                )
            )
            client = await stack.enter_async_context(httpx.AsyncClient())
            providers = {
                "openai": OpenAIProvider(
                    name="openai",
                    api_key=_DEMO_KEY,
                    base_url=upstream.base_url("openai", "openai"),
                    client=client,
                ),
                "anthropic": AnthropicProvider(
                    name="anthropic",
                    api_key=_DEMO_KEY,
                    base_url=upstream.base_url("anthropic", "anthropic"),
                    client=client,
                ),
            }
            secrets: tuple[str, ...] = (_DEMO_KEY.reveal(),)
        else:
            config = load_config(config_path)
            host = host or config.gateway.host
            check_bind(host, config)
            secrets = tuple(
                os.environ[pc.api_key_env]
                for pc in config.providers.values()
                if pc.api_key_env and os.environ.get(pc.api_key_env)
            )
        router = await stack.enter_async_context(
            open_router(config, providers=providers, metrics_registry=registry)
        )
        app = GatewayApp(router, config, metrics_registry=registry, secrets=secrets)
        await _serve_until_signalled(
            app, host, config.gateway.port if port is None else port, config_path, out, err
        )
    return 0


async def _serve_until_signalled(
    app: GatewayApp, host: str, port: int, config_path: Path | None, out: TextIO, err: TextIO
) -> None:
    stop = trio.Event()
    grace = app.gateway.settings.grace
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stop.is_set():
                        print(
                            f"llm-router gateway: {name}: shutting down; {app.gateway.in_flight} "
                            f"request(s) in flight get {grace:g}s to finish (again to stop now)",
                            file=err,
                            flush=True,
                        )
                        stop.set()
                    else:
                        print(
                            f"llm-router gateway: {name} again: stopping now", file=err, flush=True
                        )
                        nursery.cancel_scope.cancel()

            async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
                await serve_gateway(
                    app, host=host, port=port, shutdown_trigger=stop.wait, task_status=task_status
                )
                nursery.cancel_scope.cancel()  # drained: stop listening for signals

            nursery.start_soon(on_signals)
            url = await nursery.start(serve)
            print(f"llm-router gateway listening on {url}", file=out, flush=True)
            if config_path is None:
                print(
                    "  serving the built-in fake providers (no keys, no network): "
                    "models 'fast' (a route), 'openai:gpt-4o-mini', "
                    "'anthropic:claude-3-5-haiku-latest', 'openai:text-embedding-3-small'",
                    file=out,
                    flush=True,
                )
            print(
                f"  endpoints: {url}/v1/chat/completions, {url}/v1/messages, "
                f"{url}/v1/embeddings, {url}/v1/models, /healthz, /readyz, /metrics",
                file=out,
                flush=True,
            )
            print("  Ctrl-C (or SIGTERM) to stop", file=out, flush=True)
    print("llm-router gateway: stopped", file=err, flush=True)
