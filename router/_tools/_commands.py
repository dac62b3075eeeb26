"""What ``llm-router chat``, ``health`` and ``models`` do; :mod:`._cli` parses.

Each command writes its result to ``out`` (stdout: pipeable) and its commentary to
``err`` (stderr), and returns the exit status.  Failures are raised as they are —
:class:`~providers.LLMError` subclasses, most often — and the CLI turns them into one
``llm-router: error: ...`` line.

==========  =======================================================================
command     does
==========  =======================================================================
``chat``    one request; streams the text, then says on ``err`` who answered, the
            tokens, the cost and (when there was more than one) the attempts
``health``  opens the router and probes every provider at once (a model listing
            each, no tokens spent); a table, or JSON; exit 3 if any is unhealthy
``models``  the configured targets with context window and prices, from the config
            and the built-in model table; no network, no key needed
==========  =======================================================================
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Literal, NoReturn, TextIO, TypeAlias

import msgspec
import trio

from providers import (
    AllProvidersFailed,
    Capabilities,
    ChatRequest,
    ChatResponse,
    ConfigError,
    Done,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    LLMError,
    Message,
    ModelInfo,
    Provider,
    RateLimited,
    TextDelta,
)
from providers._errors import scrub
from router import load_config, open_router
from router.config import MockConfig, ModelConfig, RouterConfig, config_from_env
from router.models import model_card

# The internals, and why: each provider is built here (build_provider), not by
# open_router, so that one whose key is missing becomes a stand-in that says so and the
# health probe can be recorded; ``models`` shows the router's own merge of [models] over
# the built-in cards (model_info) and, without a config, the whole table (model_cards);
# error lines pass the one scrubber (scrub); HealthStatus is a type.
from .._config import model_info
from .._health import HealthStatus
from .._models import model_cards
from .._providers import build_provider
from ._format import table_lines

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_UNHEALTHY",
    "HealthRow",
    "ModelRow",
    "build_providers",
    "error_line",
    "health_rows",
    "model_rows",
    "run_chat",
    "run_health",
    "run_models",
    "summary_line",
]

EXIT_OK = 0
#: A provider or configuration error (one ``llm-router: error:`` line).
EXIT_ERROR = 1
#: ``health``: at least one provider is unhealthy.
EXIT_UNHEALTHY = 3


def read_config(path: Path | None) -> RouterConfig:
    """The config file at ``path``, or (``None``) one provider per API key in the environment."""
    return load_config(path) if path is not None else config_from_env()


# --------------------------------------------------------------------------- chat


class _Unavailable:
    """Stands in for a provider that cannot be built (its key is missing).

    The router then opens, resolves model strings as it always does (a bare id to the
    first provider of its kind, an unknown name to an error listing what is
    configured), and only a request that reaches this provider fails, with the
    :class:`~providers.ConfigError` naming the variable.  So one missing key does not
    stop a chat with another provider.
    """

    def __init__(self, name: str, kind: str, error: ConfigError) -> None:
        self._name = name
        self._kind = kind
        self._error = error

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def capabilities(self) -> Capabilities:
        # Everything, so the policy sends the request here and the user hears why not.
        return Capabilities()

    def _raise(self) -> NoReturn:
        raise copy.copy(self._error)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self._raise()

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[EventStream]:
        self._raise()
        yield  # pragma: no cover - a generator, for asynccontextmanager

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        self._raise()

    async def list_models(self) -> list[ModelInfo]:
        self._raise()

    async def aclose(self) -> None:
        pass


def build_providers(config: RouterConfig) -> dict[str, Provider]:
    """Every configured provider; one whose key is missing is a stand-in that says so."""
    built: dict[str, Provider] = {}
    for name, pc in config.providers.items():
        try:
            built[name] = build_provider(name, pc)
        except ConfigError as exc:
            built[name] = _Unavailable(name, pc.kind, exc)
    return built


async def run_chat(
    model: str,
    prompt: str,
    *,
    config_path: Path | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    as_json: bool = False,
    out: TextIO,
    err: TextIO,
) -> int:
    """Send one chat request; stream the text to ``out`` (or the whole answer as JSON).

    Raises:
        LLMError: the configuration is wrong, a key is missing, no route fits the
            model, or every provider failed.
    """
    messages = [Message.system(system)] if system else []
    messages.append(Message.user(prompt))
    request = ChatRequest(
        model=model, messages=messages, max_tokens=max_tokens, temperature=temperature
    )
    config = read_config(config_path)
    providers = build_providers(config)
    last = ""  # the last text written, to end the output with a newline
    try:
        async with open_router(config, providers=providers) as router:
            if as_json:
                response = await router.complete(request)
                out.write(to_json(response))
                out.flush()
                return EXIT_OK
            final: ChatResponse | None = None
            async with router.stream(request) as events:
                async for event in events:
                    if isinstance(event, TextDelta) and event.text:
                        last = event.text  # first: Ctrl-C may land in the write
                        out.write(event.text)
                        out.flush()
                    elif isinstance(event, Done):
                        final = event.response
                provider = events.provider
    finally:
        if last and not last.endswith("\n"):
            # Also when interrupted: leave the shell prompt on a line of its own.
            with contextlib.suppress(OSError):
                out.write("\n")
                out.flush()
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            for p in providers.values():
                await p.aclose()
    err.write((summary_line(final) if final else f"answered by {provider}") + "\n")
    err.flush()
    return EXIT_OK


def summary_line(response: ChatResponse) -> str:
    """Who answered, the tokens, the cost and, if more than one target was touched, how.

    Example::

        answered by good (gpt-4o-mini) · tokens: 9 in, 4 out · cost: $0.0000038 ·
        attempts: bad failed (ServerError), good won (fallback)
    """
    usage = response.usage
    cached = f" ({usage.cached_input_tokens} cached)" if usage.cached_input_tokens else ""
    parts = [
        f"answered by {response.provider} ({response.model})",
        f"tokens: {usage.input_tokens} in{cached}, {usage.output_tokens} out",
        "cost: unknown (no price for this model)"
        if response.cost is None
        else f"cost: {format_dollars(response.cost)}",
    ]
    attempts = response.attempts
    if len(attempts) > 1 or any(a.kind != "primary" for a in attempts):
        shown = []
        for a in attempts:
            text = f"{a.provider} {a.outcome}"
            if a.outcome == "won" and a.kind != "primary":
                text += f" ({a.kind})"
            elif a.outcome == "failed" and a.error_type:
                text += f" ({a.error_type})"
            elif a.outcome == "skipped" and a.reason:
                text += f" ({a.reason})"
            if a.retries:
                text += f" after {a.retries} retr{'y' if a.retries == 1 else 'ies'}"
            shown.append(text)
        parts.append("attempts: " + ", ".join(shown))
    return " · ".join(parts)


def format_dollars(amount: float) -> str:
    """Dollars with three significant digits however small: ``$0.0000038``, ``$1.50``."""
    if amount <= 0 or not math.isfinite(amount):
        return f"${amount:g}"
    decimals = max(2, 2 - math.floor(math.log10(amount)))
    text = f"{amount:.{decimals}f}"
    if decimals > 2:
        text = text.rstrip("0").rstrip(".")
    return f"${text}"


# --------------------------------------------------------------------------- health

ProbeOutcome: TypeAlias = Literal["ok", "failed", "timed out", "not started"]
_RANK: dict[str, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


class HealthRow(msgspec.Struct, frozen=True, kw_only=True):
    """One provider's line in ``llm-router health``.

    ``status`` is the router's verdict, made worse by the probe: a probe that failed
    (or did not answer before the deadline) is ``unhealthy``, one that was rate
    limited ``degraded``.  A provider that could not be started (a missing key) is
    ``unhealthy`` with ``probe = "not started"``.
    """

    provider: str
    kind: str
    status: HealthStatus
    reason: str | None
    probe: ProbeOutcome
    latency_p50: float | None = None
    latency_p95: float | None = None


class _Probed:
    """A provider that remembers how its model listing (the health probe) went.

    The router's probe keeps only a verdict; the command also wants the error itself.
    """

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.probe: ProbeOutcome = "timed out"
        self.error: LLMError | None = None

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self.inner.complete(request)

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[EventStream]:
        return self.inner.stream(request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        return await self.inner.embed(request)

    async def list_models(self) -> list[ModelInfo]:
        try:
            models = await self.inner.list_models()
        except LLMError as exc:
            self.probe, self.error = "failed", exc
            raise
        self.probe = "ok"
        return models

    async def aclose(self) -> None:
        await self.inner.aclose()


async def health_rows(config: RouterConfig, *, deadline: float) -> list[HealthRow]:
    """Probe every provider of ``config`` at once; one row each, in config order.

    Providers that cannot be built (a missing key) get a row saying why; the others are
    started in a router and probed with :meth:`Router.check_health` for at most
    ``deadline`` seconds.
    """
    rows: dict[str, HealthRow] = {}
    probed: dict[str, _Probed] = {}
    try:
        for name, pc in config.providers.items():
            try:
                probed[name] = _Probed(build_provider(name, pc))
            except ConfigError as exc:
                rows[name] = HealthRow(
                    provider=name,
                    kind=pc.kind,
                    status="unhealthy",
                    reason=str(exc),
                    probe="not started",
                )
        if probed:
            started = msgspec.structs.replace(
                config,
                providers={n: p for n, p in config.providers.items() if n in probed},
                routes={},
            )
            async with open_router(started, providers=probed) as router:
                with trio.move_on_after(deadline):
                    await router.check_health()
                snapshots = router.health()
            for name, provider in probed.items():
                snap = snapshots[name]
                status: HealthStatus = snap.status
                reason = snap.reason
                error = provider.error
                if provider.probe == "timed out":
                    status, reason = "unhealthy", f"no answer to the probe within {deadline:g}s"
                elif error is not None:
                    worst: HealthStatus = (
                        "degraded" if isinstance(error, RateLimited) else "unhealthy"
                    )
                    status = max(status, worst, key=_RANK.__getitem__)
                    reason = f"probe failed: {type(error).__name__}: {one_line(str(error))}"
                rows[name] = HealthRow(
                    provider=name,
                    kind=config.providers[name].kind,
                    status=status,
                    reason=reason,
                    probe=provider.probe,
                    latency_p50=snap.latency_p50,
                    latency_p95=snap.latency_p95,
                )
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            for provider in probed.values():
                await provider.aclose()
    return [rows[name] for name in config.providers]


async def run_health(
    config_path: Path | None, *, deadline: float = 10.0, as_json: bool = False, out: TextIO
) -> int:
    """Print every provider's health; :data:`EXIT_UNHEALTHY` if any is unhealthy."""
    rows = await health_rows(read_config(config_path), deadline=deadline)
    if as_json:
        out.write(to_json(rows))
    else:
        table = [["PROVIDER", "KIND", "STATUS", "P50", "P95", "REASON"]]
        table += [
            [
                r.provider,
                r.kind,
                r.status,
                _seconds(r.latency_p50),
                _seconds(r.latency_p95),
                r.reason or "",
            ]
            for r in rows
        ]
        out.write("\n".join(table_lines(table, right={3, 4})) + "\n")
    out.flush()
    return EXIT_UNHEALTHY if any(r.status == "unhealthy" for r in rows) else EXIT_OK


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1.0 else f"{value:.2f}s"


# --------------------------------------------------------------------------- models

_PRICES = ("input_price", "output_price", "cached_input_price")


class ModelRow(msgspec.Struct, frozen=True, kw_only=True):
    """One configured target in ``llm-router models``.

    Prices are US dollars per million tokens; ``as_of`` is the date the built-in price
    was read (``None`` when no built-in card is known); ``from_config`` names the fields
    the config's ``[models]`` set, over the built-in values.
    """

    target: str
    provider: str
    kind: str
    routes: list[str]
    context_window: int | None
    max_output_tokens: int | None
    input_price: float | None
    output_price: float | None
    cached_input_price: float | None
    as_of: str | None
    from_config: list[str]


def model_rows(config: RouterConfig | None) -> list[ModelRow]:
    """The targets ``config`` can reach, with what is known of each; no I/O.

    In order: every route's targets, then for each provider the built-in models of its
    kind (a mock's ``models``, an Azure provider's ``deployments``), then
    ``[models."provider:model"]`` entries.  With no config: every built-in model, under
    a provider named after its kind.
    """
    if config is None:
        return [
            _model_row(f"{card.kind}:{card.id}", card.kind, [], {})
            for card in model_cards().values()
        ]
    targets: dict[str, list[str]] = {}
    for alias, route in config.routes.items():
        for target in route.targets:
            targets.setdefault(target, []).append(alias)
    for name, pc in config.providers.items():
        for model in _built_in_models(pc.kind, pc.mock, pc.deployments):
            targets.setdefault(f"{name}:{model}", [])
    for key in config.models:
        if key.partition(":")[0] in config.providers:
            targets.setdefault(key, [])
    return [
        _model_row(target, config.providers[target.partition(":")[0]].kind, routes, config.models)
        for target, routes in targets.items()
    ]


def _built_in_models(
    kind: str, mock: MockConfig | None, deployments: dict[str, str]
) -> Iterable[str]:
    if kind == "mock":
        return (mock or MockConfig()).models
    if kind == "azure":
        return deployments
    return [card.id for card in model_cards().values() if card.kind == kind]


def _model_row(
    target: str, kind: str, routes: Sequence[str], models: dict[str, ModelConfig]
) -> ModelRow:
    provider, _, model = target.partition(":")
    info = model_info(models, target)
    card = model_card(model)
    configured = [m for m in (models.get(target), models.get(model)) if m is not None]
    from_config = [
        field
        for field in ("context_window", "max_output_tokens", *_PRICES)
        if any(getattr(m, field) is not None for m in configured)
    ]
    return ModelRow(
        target=target,
        provider=provider,
        kind=kind,
        routes=list(routes),
        context_window=info.context_window,
        max_output_tokens=info.max_output_tokens,
        input_price=info.input_price,
        output_price=info.output_price,
        cached_input_price=info.cached_input_price,
        as_of=card.as_of if card is not None else None,
        from_config=from_config,
    )


def run_models(config_path: Path | None, *, as_json: bool = False, out: TextIO) -> int:
    """Print the configured targets (every built-in model without a config or a key).

    Without ``config_path`` the providers are those whose key is in the environment
    (as ``open_router()`` would start them); with no key either, the whole built-in
    table is listed.
    """
    config: RouterConfig | None
    if config_path is not None:
        config = load_config(config_path)
    else:
        try:
            config = config_from_env()
        except ConfigError:
            config = None
    rows = model_rows(config)
    if as_json:
        out.write(to_json(rows))
        out.flush()
        return EXIT_OK
    # The numeric headers end in a space: the cells below end in a marker column.
    table = [["TARGET", "CONTEXT ", "INPUT $/M ", "OUTPUT $/M ", "CACHED $/M ", "AS OF", "ROUTES"]]
    table += [_model_cells(r) for r in rows]
    out.write("\n".join(table_lines(table, right={1, 2, 3, 4})) + "\n")
    if any(r.from_config for r in rows):
        out.write("* set in the config's [models]; the rest is the built-in table\n")
    if config is None:
        out.write("(no config and no API key in the environment: every built-in model)\n")
    out.flush()
    return EXIT_OK


def _model_cells(row: ModelRow) -> list[str]:
    """A table row: numbers set by the config starred; the card's date if a price is its."""
    overridden = set(row.from_config)

    def cell(field: str) -> str:
        value: float | None = getattr(row, field)
        if value is None:
            text = "-"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:  # a price: at least cents, more digits only when it has them
            whole, _, cents = f"{value:.4f}".rstrip("0").partition(".")
            text = f"{whole}.{cents.ljust(2, '0')}"
        # The marker column is always there, so the digits stay aligned.
        return text + ("*" if field in overridden else " ")

    card_price = any(f not in overridden and getattr(row, f) is not None for f in _PRICES)
    if row.as_of is not None and card_price:
        as_of = row.as_of
    else:
        as_of = "config" if overridden & set(_PRICES) else "-"
    return [row.target, cell("context_window"), *map(cell, _PRICES), as_of, ", ".join(row.routes)]


# --------------------------------------------------------------------------- helpers


def to_json(value: object) -> str:
    """Indented JSON with every field, defaults included, ending in a newline.

    The library's structs omit default values on the wire (``omit_defaults``); a
    command's output keeps them, so a script can read ``.attempts[].outcome`` without
    knowing that ``"won"`` is the default.
    """
    return msgspec.json.format(msgspec.json.encode(_with_defaults(value))).decode() + "\n"


def _with_defaults(value: object) -> object:
    if isinstance(value, msgspec.Struct):
        return {k: _with_defaults(v) for k, v in msgspec.structs.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [_with_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: _with_defaults(v) for k, v in value.items()}
    return value


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def error_line(error: BaseException, *, with_type: bool = True) -> str:
    """The message of ``llm-router: error: ...``: one line, no secret.

    With ``with_type``, a library error is prefixed with its type (``ServerError:
    [openai] HTTP 500: ...``);
    an :class:`~providers.AllProvidersFailed` spells out each target's error; the value
    of any secret-looking environment variable (``*_KEY``, ``*_TOKEN``, ``*_SECRET``) is
    masked, should a vendor have echoed it.
    """
    text = one_line(str(error))
    if with_type and isinstance(error, LLMError):
        text = f"{type(error).__name__}: {text}"
    if isinstance(error, AllProvidersFailed) and error.errors:
        text += " — " + "; ".join(f"{type(e).__name__}: {one_line(str(e))}" for e in error.errors)
    secrets = [
        value
        for name, value in os.environ.items()
        if name.upper().endswith(("KEY", "TOKEN", "SECRET")) and len(value) >= 8
    ]
    return scrub(text, secrets)
