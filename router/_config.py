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
import types
import typing
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

import msgspec

import providers
from providers import ConfigError, LLMError

from ._health import BreakerConfig
from ._retry import RetryConfig

__all__ = [
    "DEFAULT_FAIL_OVER",
    "AuditConfig",
    "BudgetConfig",
    "HedgeConfig",
    "MockConfig",
    "ModelConfig",
    "check_references",
    "decode_config",
    "load_config",
    "model_info",
    "ProviderConfig",
    "ProviderKind",
    "RouteConfig",
    "RouterConfig",
    "SupervisorConfig",
    "TracingConfig",
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


_ERROR_NAMES = frozenset(
    {"retryable"}
    | {
        name
        for name in dir(providers)
        if isinstance(getattr(providers, name), type)
        and issubclass(getattr(providers, name), LLMError)
    }
)


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
        for field in ("latency", "chunk_latency"):
            value = getattr(self, field)
            if not value >= 0:  # NaN too
                raise ValueError(f"`{field}` must be >= 0 seconds, got {value}")


class BudgetConfig(_Config, frozen=True):
    """A spend cap: at most ``limit`` US dollars per ``period``.

    ``period`` is ``"hour"``, ``"day"``, ``"week"``, ``"month"`` (30 days) or seconds.
    See docs/configuration.md for how requests are checked against it.

    Example::

        BudgetConfig(limit=25.0, period="day")     # TOML: budget = { limit = 25.0, period = "day" }
    """

    limit: float
    period: Literal["hour", "day", "week", "month"] | float = "day"

    def __post_init__(self) -> None:
        if not 0.0 < self.limit < float("inf"):
            raise ValueError(f"`limit` must be a positive number of dollars, got {self.limit}")
        if not isinstance(self.period, str) and not 0.0 < self.period < float("inf"):
            raise ValueError(f"`period` must be positive seconds, got {self.period}")


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
    #: Per-attempt time limits, seconds (``None``: none).  ``first_token_timeout`` runs
    #: from sending the request to the whole answer (complete, embed) or to a stream's
    #: first content event; ``idle_timeout`` between a stream's events.  Past either,
    #: the attempt fails with a retryable ``Timeout`` naming the limit (docs/actors.md).
    first_token_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    idle_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: Seconds of waiting for admission after which a request is reported: a QueueWait
    #: event and a log line naming the limit that held it (``None``: never).
    queue_wait_threshold: Annotated[float, msgspec.Meta(ge=0)] | None = 1.0
    #: Fill unset rpm/tpm with the kind's published entry-tier limits (PRESETS).
    presets: bool = True
    #: Azure OpenAI: the API version ("2024-10-21", or "v1") and model → deployment names.
    api_version: str | None = None
    deployments: dict[str, str] = msgspec.field(default_factory=dict)
    #: OpenRouter attribution: sent as X-Title and HTTP-Referer.
    app_name: str | None = None
    app_url: str | None = None
    #: A spend cap for this provider.
    budget: BudgetConfig | None = None
    mock: MockConfig | None = None
    #: Caps on what an HTTP adapter reads (decoded bytes): a whole answer, and one
    #: stream event or NDJSON line; None = the defaults, 32 MiB and 8 MiB.
    max_response_bytes: int | None = None
    max_event_bytes: int | None = None

    def __post_init__(self) -> None:
        for field in (
            "rpm",
            "tpm",
            "rpm_burst",
            "tpm_burst",
            "max_concurrency",
            "max_response_bytes",
            "max_event_bytes",
        ):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"`{field}` must be positive, got {value}")
        if self.max_queue < 0:
            raise ValueError(f"`max_queue` must be >= 0, got {self.max_queue}")
        if self.degraded_latency is not None and not 0.0 < self.degraded_latency < float("inf"):
            raise ValueError(
                f"`degraded_latency` must be positive seconds, got {self.degraded_latency}"
            )
        if self.mock is not None and self.kind != "mock":
            raise ValueError("`mock` settings belong to providers of kind 'mock'")
        for field, kind in _KIND_FIELDS:
            if getattr(self, field) not in (None, {}) and self.kind != kind:
                raise ValueError(f"`{field}` belongs to providers of kind {kind!r}")


#: Fields that only one kind of provider takes.
_KIND_FIELDS = (
    ("api_version", "azure"),
    ("deployments", "azure"),
    ("app_name", "openrouter"),
    ("app_url", "openrouter"),
)


Strategy: TypeAlias = Literal["fallback", "weighted", "least-latency", "least-cost", "least-busy"]

#: The errors a route fails over on by default: the retryable ones (``"retryable"``),
#: a busy target (``Overloaded``, also when our own admission refused it for good), and
#: those specific to one target, which another target may well not have.
DEFAULT_FAIL_OVER: tuple[str, ...] = (
    "retryable",
    "Overloaded",
    "BudgetExceeded",
    "AuthenticationError",
    "PermissionDenied",
    "NotFound",
    "QuotaExceeded",
    "ContextLengthExceeded",
    "UnsupportedFeature",
)

_PERCENTILE = re.compile(r"^p(?P<q>\d{1,2}(?:\.\d+)?)$")
#: gRPC's cap on hedged attempts.
MAX_HEDGED_ATTEMPTS = 5


def parse_percentile(text: str) -> float:
    """``"p95"`` → 0.95, ``"p99.9"`` → 0.999.

    Raises:
        ValueError: not of the form ``pNN`` with ``0 < NN < 100``.
    """
    match = _PERCENTILE.match(text)
    q = float(match["q"]) if match else 0.0
    if not 0.0 < q < 100.0:
        raise ValueError(
            f"`delay` must be seconds or a percentile such as 'p95' or 'p99.9', got {text!r}"
        )
    return q / 100.0


class HedgeConfig(_Config, frozen=True):
    """Hedged requests (gRPC's ``hedgingPolicy``, Tail at Scale's backup requests).

    ==================  ========  ====================================================
    ``max_attempts``    2         attempts in all, the primary included (1..5)
    ``delay``           None      seconds between starts, or a percentile of the
                                  primary's observed latency (``"p95"``); ``0`` starts
                                  every attempt at once; ``None``: no hedging, the next
                                  target starts only when the previous one fails
    ``min_delay``       0.0 s     clamps for a percentile delay
    ``max_delay``       30.0 s
    ``default_delay``   1.0 s     a percentile delay before ``min_samples`` samples
    ``min_samples``     20        latency samples needed to trust a percentile
    ``budget_ratio``    0.1       hedges earned per primary request (extra load cap)
    ``budget_burst``    10.0      hedges that may be spent at once
    ==================  ========  ====================================================

    The hedge budget is a token bucket counted in requests, not time: every request on
    the route adds ``budget_ratio`` tokens (up to ``budget_burst``), every hedge takes
    one, and a hedge with no token left is not sent.  So over any run of ``n`` requests::

        hedges ≤ budget_ratio · n + budget_burst

    A fallback started because an attempt *failed* needs no token: it replaces load,
    it does not add to it.

    Example::

        HedgeConfig(max_attempts=2, delay="p95")
        # TOML: hedge = { max_attempts = 2, delay = "p95" }
    """

    max_attempts: int = 2
    delay: float | str | None = None
    min_delay: float = 0.0
    max_delay: float = 30.0
    default_delay: float = 1.0
    min_samples: int = 20
    budget_ratio: float = 0.1
    budget_burst: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_HEDGED_ATTEMPTS:
            raise ValueError(
                f"`max_attempts` must be from 1 to {MAX_HEDGED_ATTEMPTS}, got {self.max_attempts}"
            )
        if isinstance(self.delay, str):
            parse_percentile(self.delay)
        elif self.delay is not None and not 0.0 <= self.delay < float("inf"):
            raise ValueError(f"`delay` must be >= 0 seconds, got {self.delay}")
        for name in ("min_delay", "max_delay", "default_delay", "budget_ratio", "budget_burst"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value}")
        if self.max_delay < self.min_delay:
            raise ValueError(f"`max_delay` must be >= min_delay, got {self.max_delay}")
        if self.min_samples < 1:
            raise ValueError(f"`min_samples` must be >= 1, got {self.min_samples}")

    @property
    def percentile(self) -> float | None:
        """The quantile of a percentile delay (0.95 for ``"p95"``), else ``None``."""
        return parse_percentile(self.delay) if isinstance(self.delay, str) else None


class RouteConfig(_Config, frozen=True):
    """A model alias: its targets (``provider:model``), how to choose, whether to hedge.

    ``weights`` (one per target) are for ``strategy = "weighted"``.  ``fail_over_on``
    lists the error classes (by name, subclasses included) that send a request on to
    the next target; ``"retryable"`` stands for every retryable error.  Any other error
    is returned to the caller at once.

    Example::

        RouteConfig(targets=["anthropic:claude-3-5-haiku-latest", "openai:gpt-4o-mini"],
                    hedge=HedgeConfig(max_attempts=2, delay="p95"))
    """

    targets: list[str]
    strategy: Strategy = "fallback"
    weights: list[float] | None = None
    hedge: HedgeConfig | None = None
    fail_over_on: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_FAIL_OVER))
    #: A spend cap for the requests of this route.
    budget: BudgetConfig | None = None
    #: Panic routing (docs/routing.md): when fewer than this share of the route's
    #: capable targets are healthy or degraded, send to the unhealthy ones too, last,
    #: through their open breakers.  0 turns it off; ``None``: the router's setting.
    panic_threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("`targets`: a route needs at least one target")
        if self.panic_threshold is not None and not 0.0 <= self.panic_threshold <= 1.0:
            raise ValueError(f"`panic_threshold` must be in [0, 1], got {self.panic_threshold}")
        for i, t in enumerate(self.targets):
            provider, sep, model = t.partition(":")
            if not sep or not provider or not model:
                raise ValueError(f"`targets[{i}]`: {t!r} must look like 'provider:model'")
        if self.weights is not None:
            if len(self.weights) != len(self.targets):
                raise ValueError(
                    f"`weights` needs one weight per target ({len(self.targets)}), "
                    f"got {len(self.weights)}"
                )
            for i, w in enumerate(self.weights):
                if not 0 < w < float("inf"):
                    raise ValueError(f"`weights[{i}]` must be a positive number, got {w}")
        for i, name in enumerate(self.fail_over_on):
            if name not in _ERROR_NAMES:
                raise ValueError(
                    f"`fail_over_on[{i}]`: unknown error name {name!r}; use 'retryable' or any "
                    f"of {sorted(_ERROR_NAMES - {'retryable'})}"
                )


class ModelConfig(_Config, frozen=True):
    """What the router knows about one model: its window, prices and abilities.

    The key in ``[models]`` is ``"provider:model"`` (one deployment) or a bare model id
    (every provider serving it).  Prices are US dollars per million tokens.  A
    capability set to ``false`` keeps requests that need it away from the model.
    """

    context_window: int | None = None
    max_output_tokens: int | None = None
    input_price: float | None = None
    output_price: float | None = None
    cached_input_price: float | None = None
    tools: bool | None = None
    vision: bool | None = None
    structured_output: bool | None = None

    def __post_init__(self) -> None:
        for name in ("context_window", "max_output_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be positive, got {value}")
        for name in ("input_price", "output_price", "cached_input_price"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < float("inf"):
                raise ValueError(f"`{name}` must be a price >= 0, got {value}")


def model_info(models: dict[str, ModelConfig], target: str) -> ModelConfig:
    """What is known of ``target`` (``provider:model``): config over the built-in table.

    Field by field, the first that is set wins: ``[models."provider:model"]``, then
    ``[models."model"]``, then the built-in card of the model (:mod:`router._models`),
    whose capabilities only ever narrow (a card says ``tools = false``, never "true"
    over a provider that cannot).
    """
    from ._models import model_card  # the table is read on first use, not at import

    model = target.partition(":")[2]
    configured = [m for m in (models.get(target), models.get(model)) if m is not None]
    card = model_card(model)
    values: dict[str, Any] = {}
    for name in ModelConfig.__struct_fields__:
        value = next((v for m in configured if (v := getattr(m, name)) is not None), None)
        if value is None and card is not None:
            value = getattr(card, name)
            if name in _CAPABILITIES:
                value = None if value else False
        values[name] = value
    return ModelConfig(**values)


_CAPABILITIES = ("tools", "vision", "structured_output")


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

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"`max_restarts` must be >= 0, got {self.max_restarts}")
        if not 0.0 < self.restart_window < float("inf"):
            raise ValueError(
                f"`restart_window` must be positive seconds, got {self.restart_window}"
            )
        for name in ("restart_backoff", "max_restart_backoff"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value}")


class AuditConfig(_Config, frozen=True):
    r"""The audit log: one JSON line per request, written off the event loop.

    ================  ==========  ======================================================
    ``path``          (required)  the JSONL file; rotated files are ``path.1`` (newest)
                                  to ``path.<keep>``
    ``content``       "hashed"    what of the prompt and answer is written: ``"full"``,
                                  ``"truncated"`` (``max_chars`` per text),
                                  ``"hashed"`` (the SHA-256 hex of each text) or
                                  ``"none"``
    ``max_chars``     1000        characters kept per text in ``"truncated"`` mode
    ``redact``        []          regular expressions whose matches are replaced by
                                  ``[REDACTED]`` in every text written, before
                                  truncating or hashing
    ``rotate_bytes``  None        rotate when the file would grow past this many bytes
    ``keep``          5           rotated files kept
    ``max_pending``   10000       records waiting to be written at most; beyond, a
                                  record is dropped and counted
    ================  ==========  ======================================================

    API keys of the router's providers are never written, in any mode.

    Example::

        AuditConfig(path="audit.jsonl", content="truncated", redact=[r"\d{16}"])
        # TOML: [audit]  path = "audit.jsonl"  content = "truncated"  redact = ['\d{16}']
    """

    path: str
    content: Literal["full", "truncated", "hashed", "none"] = "hashed"
    max_chars: int = 1000
    redact: list[str] = msgspec.field(default_factory=list)
    rotate_bytes: int | None = None
    keep: int = 5
    max_pending: int = 10_000

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("`path` must name a file")
        if self.max_chars < 1:
            raise ValueError(f"`max_chars` must be >= 1, got {self.max_chars}")
        if self.rotate_bytes is not None and self.rotate_bytes < 1:
            raise ValueError(f"`rotate_bytes` must be >= 1, got {self.rotate_bytes}")
        if self.keep < 0:
            raise ValueError(f"`keep` must be >= 0, got {self.keep}")
        if self.max_pending < 1:
            raise ValueError(f"`max_pending` must be >= 1, got {self.max_pending}")
        for pattern in self.redact:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"`redact`: {pattern!r} is not a regular expression: {exc}"
                ) from None


class TracingConfig(_Config, frozen=True):
    """OpenTelemetry tracing (needs the ``otel`` extra).

    With ``enabled``, the router traces through the global tracer provider
    (``opentelemetry.trace.get_tracer_provider()``); ``open_router(config,
    tracer_provider=...)`` names one explicitly and needs no switch.

    Example::

        TracingConfig(enabled=True)          # TOML: [tracing]  enabled = true
    """

    enabled: bool = False


class RouterConfig(_Config, frozen=True):
    """The whole router: providers by name, routes by alias, supervision.

    ``audit`` writes an audit log (:class:`AuditConfig`); ``tracing`` turns on
    OpenTelemetry spans (:class:`TracingConfig`).
    """

    providers: dict[str, ProviderConfig]
    routes: dict[str, RouteConfig] = msgspec.field(default_factory=dict)
    models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    #: Output budget assumed for admission when a request sets no ``max_tokens``.
    default_max_tokens: int = 1024
    #: A spend cap for everything the router sends.
    budget: BudgetConfig | None = None
    #: The audit log: one JSON line per request.
    audit: AuditConfig | None = None
    #: OpenTelemetry spans per request and attempt.
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    #: Panic routing for routes that do not set theirs, and for direct ``provider:model``
    #: calls: 0.5 as in Envoy; 0 turns it off (docs/routing.md).
    panic_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.providers:
            raise ValueError("`providers` must configure at least one provider")
        if not 0.0 <= self.panic_threshold <= 1.0:
            raise ValueError(f"`panic_threshold` must be in [0, 1], got {self.panic_threshold}")
        if self.default_max_tokens < 1:
            raise ValueError(f"`default_max_tokens` must be >= 1, got {self.default_max_tokens}")
        for name in self.providers:
            if not name or ":" in name:
                raise ConfigError(
                    f"provider name {name!r} must be non-empty and contain no ':'",
                    path=f"$.providers{_key(name)}",
                )
        check_references(self)


def check_references(config: RouterConfig) -> None:
    """Check what refers to what: routes name configured providers, not providers' names.

    Raises:
        ConfigError: with the path of the first bad reference.
    """
    for alias, route in config.routes.items():
        if alias in config.providers:
            raise ConfigError(
                f"route {alias!r} has the same name as a provider", path=f"$.routes{_key(alias)}"
            )
        for i, t in enumerate(route.targets):
            provider = t.partition(":")[0]
            if provider not in config.providers:
                raise ConfigError(
                    f"route {alias!r} targets unknown provider {provider!r}; "
                    f"configured: {sorted(config.providers)}",
                    path=f"$.routes{_key(alias)}.targets[{i}]",
                )


# msgspec reports "Expected `int`, got `str` - at `$.rpm`"; __post_init__ messages start
# with the field they are about ("`rpm` must be positive", "max_attempts: must be ...").
_AT_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_FIRST = re.compile(r"^`?(?P<field>[a-z_]+)(?P<index>\[\d+\])?`?:?\s")


def _fields(*types: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(f for t in types for f in t.__struct_fields__)


_ALL_FIELDS = _fields(
    RouterConfig,
    AuditConfig,
    TracingConfig,
    BudgetConfig,
    HedgeConfig,
    ModelConfig,
    ProviderConfig,
    RouteConfig,
    SupervisorConfig,
    MockConfig,
    BreakerConfig,
    RetryConfig,
)


def _key(name: str) -> str:
    return f".{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name) else f"[{name!r}]"


def _config_error(
    exc: msgspec.ValidationError, prefix: str, source: str, fields: frozenset[str]
) -> ConfigError:
    match = _AT_PATH.match(str(exc))
    assert match is not None  # the pattern matches any text
    message = match["message"].replace("`", "")
    path = prefix + (match["path"] or "")
    unknown = re.match(r"object contains unknown field (.+)$", message, re.IGNORECASE)
    if unknown is not None:
        return ConfigError(
            f"unknown field {unknown[1]!r} (in {source})", path=path + _key(unknown[1])
        )
    field = _FIELD_FIRST.match(message)
    if field is not None and field["field"] in fields:
        # A __post_init__ check: point at the field (and item), and drop it from the message.
        path += _key(field["field"]) + (field["index"] or "")
        message = message[field.end() :].lstrip(": ")
    message = message[:1].lower() + message[1:]
    return ConfigError(f"{message} (in {source})", path=path)


_T = TypeVar("_T")


def _convert(
    value: object,
    type_: type[_T],
    prefix: str,
    source: str,
    fields: frozenset[str] = _ALL_FIELDS,
) -> _T:
    """``msgspec.convert`` with errors as ConfigError; ``fields`` are the struct fields
    a ``__post_init__`` message may start with (to point the path at the field)."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        error = _config_error(exc, prefix, source, fields)
        if error.path is not None and "[...]" in error.path:
            error = ConfigError(
                str(error).removeprefix(f"{error.path}: "),
                path=prefix + _dict_keys(value, type_, error.path.removeprefix(prefix)),
            )
        raise error from None
    except ConfigError as exc:  # raised by a __post_init__ (check_references): add the source
        message = str(exc).removeprefix(f"{exc.path}: ")
        raise ConfigError(f"{message} (in {source})", path=exc.path) from None


def _dict_keys(value: object, type_: object, path: str) -> str:
    """msgspec names a dict's entry ``[...]``: put the key of the first bad entry there.

    ``path`` is msgspec's, relative to ``value`` (``.headers[...]``); the raw ``value``
    and its ``type_`` are walked along it.  Where the walk fails, ``path`` is returned.
    """
    node, out = value, ""
    for step in re.findall(r"\.[^.\[]+|\[\d+\]|\[\.\.\.\]", path):
        type_ = _member(type_, node)
        if step == "[...]" and isinstance(node, dict) and typing.get_origin(type_) is dict:
            item_type = typing.get_args(type_)[1]
            bad = next((k for k, v in node.items() if not _converts(v, item_type)), None)
            if bad is None:
                return path
            node, type_, out = node[bad], item_type, out + _key(str(bad))
        elif step.startswith("[") and step != "[...]" and isinstance(node, list):
            node, out = node[int(step[1:-1])], out + step
            type_ = typing.get_args(type_)[0]
        elif step.startswith(".") and isinstance(node, dict) and isinstance(type_, type):
            node, out = node.get(step[1:]), out + step
            type_ = typing.get_type_hints(type_)[step[1:]]
        else:
            return path
    return out


def _member(type_: object, node: object) -> object:
    """The member of a union ``type_`` that a raw ``node`` (a table, an array) is meant for."""
    if not isinstance(type_, types.UnionType) and typing.get_origin(type_) is not typing.Union:
        return type_
    for member in typing.get_args(type_):
        origin = typing.get_origin(member) or member
        if isinstance(node, dict) and (
            origin is dict or (isinstance(origin, type) and issubclass(origin, msgspec.Struct))
        ):
            return member
        if isinstance(node, list) and origin is list:
            return member
    return type_


def _converts(value: object, type_: object) -> bool:
    try:
        msgspec.convert(value, type_)
    except msgspec.ValidationError:
        return False
    return True


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
        for name, type_ in (
            ("providers", ProviderConfig),
            ("routes", RouteConfig),
            ("models", ModelConfig),
        )
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
