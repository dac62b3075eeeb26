"""Configuration structures: the router, its providers, its routes.

The same structures come from TOML (``load_config``) or are built in code; both are
validated the same way (:mod:`router._validation`): ``load_config`` when it reads the
file, ``open_router`` (or :func:`validate_config`) for a config built in code.  Unknown
fields are errors, so a typo is reported rather than silently ignored, and every mistake
is a ``ConfigError`` whose ``path`` names it.

Building a struct never raises: range and cross-field checks live in each struct's
``_problems()`` method (data, not exceptions), which validation asks once every field
has the right type.  A new field is checked for type for free; a range check for it
goes into ``_problems`` (not ``__post_init__``, which would raise at construction,
without the path).  Strings in TOML may reference the environment: ``${NAME}``,
``${NAME:-default}``, ``$$`` for a ``$`` (see docs/configuration.md).

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

import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, TypeAlias

import msgspec

import providers
from providers import ConfigError, LLMError, Scrubber

from ._health import BreakerConfig
from ._policy import Strategy
from ._retry import RetryConfig
from ._strategies import problem
from ._validation import Problem, Where, expand_env, key_path, suggest, validate, where_path

#: One step of a config path (``.name`` or ``['a:b']``); router._providers uses it too.
_key = key_path

__all__ = [
    "DEFAULT_FAIL_OVER",
    "AuditConfig",
    "GatewayConfig",
    "GatewayKeyConfig",
    "BudgetConfig",
    "HedgeConfig",
    "MockConfig",
    "ModelConfig",
    "check_references",
    "decode_config",
    "load_config",
    "validate_config",
    "model_info",
    "ProviderConfig",
    "ProviderKind",
    "RouteConfig",
    "RouterConfig",
    "SharedConfig",
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

    def _problems(self) -> Iterator[Problem]:
        """Range and cross-field mistakes of this struct (its fields have the right
        types): ``(where, message)``, ``where`` relative to the struct."""
        return iter(())


def _finite(value: float, low: float = 0.0, *, strict: bool = False) -> bool:
    """``low < value < inf`` (``strict``) or ``low <= value < inf``; False for NaN."""
    return (value > low if strict else value >= low) and value < math.inf


class MockConfig(_Config, frozen=True):
    """Behaviour of a ``kind = "mock"`` provider: an in-process MockProvider.

    ``reply`` is a fixed answer; without it the mock echoes the last user message.
    """

    reply: str | None = None
    latency: float = 0.0
    chunk_latency: float = 0.0
    models: list[str] = msgspec.field(default_factory=lambda: ["mock-model"])

    def _problems(self) -> Iterator[Problem]:
        for field in ("latency", "chunk_latency"):
            value = getattr(self, field)
            if not value >= 0:  # NaN too
                yield (field,), f"must be >= 0 seconds, got {value}"


class BudgetConfig(_Config, frozen=True):
    """A spend cap: at most ``limit`` US dollars per ``period``.

    ``period`` is ``"hour"``, ``"day"``, ``"week"``, ``"month"`` (30 days) or seconds.
    See docs/configuration.md for how requests are checked against it.

    Example::

        BudgetConfig(limit=25.0, period="day")     # TOML: budget = { limit = 25.0, period = "day" }
    """

    limit: float
    period: Literal["hour", "day", "week", "month"] | float = "day"

    def _problems(self) -> Iterator[Problem]:
        if not _finite(self.limit, strict=True):
            yield ("limit",), f"must be a positive number of dollars, got {self.limit}"
        if not isinstance(self.period, str) and not _finite(self.period, strict=True):
            yield (
                ("period",),
                f"must be hour, day, week, month or positive seconds, got {self.period}",
            )


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

    def __repr__(self) -> str:
        # A key given as a header (``authorization``, ``x-api-key``) is never shown: the
        # adapter treats it as a secret, and so does the repr of the config holding it.
        text = super().__repr__()
        secrets = [v for k, v in self.headers.items() if _SECRET_HEADER.search(k)]
        return Scrubber(secrets)(text) if secrets else text

    def _problems(self) -> Iterator[Problem]:
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # Not echoed: a key pasted here instead of a variable's name is a secret.
            yield (
                ("api_key_env",),
                "must name the environment variable that holds the key "
                "(letters, digits, '_'; e.g. OPENAI_API_KEY), not the key itself",
            )
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
                yield (field,), f"must be a positive int (or unset: no limit), got {value}"
        if self.max_queue < 0:
            yield ("max_queue",), f"must be >= 0, got {self.max_queue}"
        if self.base_url is not None and not self.base_url.strip():
            # Never read as unset: that would send the key to the vendor's own endpoint.
            yield (
                ("base_url",),
                f"must be the server's URL (e.g. 'http://127.0.0.1:8000/v1'), got "
                f"{self.base_url!r}; leave it unset for the vendor's own endpoint",
            )
        if self.degraded_latency is not None and not _finite(self.degraded_latency, strict=True):
            yield ("degraded_latency",), f"must be positive seconds, got {self.degraded_latency}"
        if self.mock is not None and self.kind != "mock":
            yield ("mock",), f"belongs to providers of kind 'mock', not {self.kind!r}"
        for field, kind in _KIND_FIELDS:
            if getattr(self, field) not in (None, {}) and self.kind != kind:
                yield (field,), f"belongs to providers of kind {kind!r}, not {self.kind!r}"


def _unit(value: float) -> bool:
    """Whether ``value`` is a share: a number in [0, 1] (not a bool)."""
    return not isinstance(value, bool) and 0.0 <= value <= 1.0


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


#: Fields that only one kind of provider takes.
_KIND_FIELDS = (
    ("api_version", "azure"),
    ("deployments", "azure"),
    ("app_name", "openrouter"),
    ("app_url", "openrouter"),
)


#: The errors a route fails over on by default: the retryable ones (``"retryable"``),
#: a busy target (``Overloaded``, also when our own admission refused it for good), and
#: those specific to one target, which another target may well not have.
DEFAULT_FAIL_OVER: tuple[str, ...] = (
    "retryable",
    "RateLimited",
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
    q = _quantile(text)
    if q is None:
        raise ValueError(f"delay: {_DELAY_CHOICES}, got {text!r}")
    return q


def _quantile(text: str) -> float | None:
    match = _PERCENTILE.match(text)
    q = float(match["q"]) if match else 0.0
    return q / 100.0 if 0.0 < q < 100.0 else None


_DELAY_CHOICES = "must be seconds >= 0 or a percentile from 'p0.1' to 'p99.9' (as 'p95')"


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

    def _problems(self) -> Iterator[Problem]:
        if not 1 <= self.max_attempts <= MAX_HEDGED_ATTEMPTS:
            yield (
                ("max_attempts",),
                f"must be from 1 to {MAX_HEDGED_ATTEMPTS}, got {self.max_attempts}",
            )
        if isinstance(self.delay, str):
            if _quantile(self.delay) is None:
                yield ("delay",), f"{_DELAY_CHOICES}, or unset (no hedging), got {self.delay!r}"
        elif self.delay is not None and not _finite(self.delay):
            yield ("delay",), f"{_DELAY_CHOICES}, or unset (no hedging), got {self.delay}"
        for name in ("min_delay", "max_delay", "default_delay", "budget_ratio", "budget_burst"):
            value = getattr(self, name)
            if not _finite(value):
                yield (name,), f"must be a finite number >= 0, got {value}"
        if self.max_delay < self.min_delay:
            yield ("max_delay",), f"must be >= min_delay ({self.min_delay}), got {self.max_delay}"
        if self.min_samples < 1:
            yield ("min_samples",), f"must be >= 1, got {self.min_samples}"

    @property
    def percentile(self) -> float | None:
        """The quantile of a percentile delay (0.95 for ``"p95"``), else ``None``."""
        return parse_percentile(self.delay) if isinstance(self.delay, str) else None


class RouteConfig(_Config, frozen=True):
    """A model alias: its targets (``provider:model``), how to choose, whether to hedge.

    ``strategy`` is a built-in strategy's name (``"fallback"``, ``"weighted"``,
    ``"least-latency"``, ``"least-cost"``, ``"least-busy"``), the import path of one of
    yours (``"mypkg.policies:cheapest_healthy"``), or, in code, the
    :class:`~router.policy.Strategy` itself; it is resolved when the config is
    validated (docs/routing.md).  ``weights`` (one per target) are for ``strategy =
    "weighted"``.  ``fail_over_on``
    lists the error classes (by name, subclasses included) that send a request on to
    the next target; ``"retryable"`` stands for every retryable error.  Any other error
    is returned to the caller at once.

    Example::

        RouteConfig(targets=["anthropic:claude-3-5-haiku-latest", "openai:gpt-4o-mini"],
                    hedge=HedgeConfig(max_attempts=2, delay="p95"))
    """

    targets: list[str]
    strategy: str | Strategy = "fallback"
    weights: list[float] | None = None
    hedge: HedgeConfig | None = None
    fail_over_on: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_FAIL_OVER))
    #: A spend cap for the requests of this route.
    budget: BudgetConfig | None = None
    #: Panic routing (docs/routing.md): when fewer than this share of the route's
    #: capable targets are healthy or degraded, send to the unhealthy ones too, last,
    #: through their open breakers.  0 turns it off; ``None``: the router's setting.
    panic_threshold: float | None = None

    def _problems(self) -> Iterator[Problem]:
        if not self.targets:
            yield ("targets",), "a route needs at least one target ('provider:model'), got []"
        if self.panic_threshold is not None and not _unit(self.panic_threshold):
            yield ("panic_threshold",), f"must be in [0, 1], got {self.panic_threshold}"
        strategy_problem = problem(self.strategy)
        if strategy_problem is not None:
            yield ("strategy",), strategy_problem
        for i, t in enumerate(self.targets):
            provider, sep, model = t.partition(":")
            if not sep or not provider or not model:
                yield ("targets", i), f"must look like 'provider:model', got {t!r}"
        if self.weights is not None:
            if len(self.weights) != len(self.targets):
                yield (
                    ("weights",),
                    f"needs one weight per target ({len(self.targets)}), got {len(self.weights)}",
                )
            for i, w in enumerate(self.weights):
                if not _finite(w, strict=True):
                    yield ("weights", i), f"must be a positive number, got {w}"
        for i, name in enumerate(self.fail_over_on):
            if name not in _ERROR_NAMES:
                yield (
                    ("fail_over_on", i),
                    f"unknown error name {name!r}; use 'retryable' or one of: "
                    f"{', '.join(sorted(_ERROR_NAMES - {'retryable'}))}"
                    f"{suggest(name, _ERROR_NAMES)}",
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

    def _problems(self) -> Iterator[Problem]:
        for name in ("context_window", "max_output_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                yield (name,), f"must be a positive number of tokens, got {value}"
        for name in ("input_price", "output_price", "cached_input_price"):
            value = getattr(self, name)
            if value is not None and not _finite(value):
                yield (name,), f"must be a price >= 0 (dollars per million tokens), got {value}"


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

    def _problems(self) -> Iterator[Problem]:
        if self.max_restarts < 0:
            yield ("max_restarts",), f"must be >= 0, got {self.max_restarts}"
        if not _finite(self.restart_window, strict=True):
            yield ("restart_window",), f"must be positive seconds, got {self.restart_window}"
        for name in ("restart_backoff", "max_restart_backoff"):
            value = getattr(self, name)
            if not _finite(value):
                yield (name,), f"must be a finite number >= 0, got {value}"


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

    def _problems(self) -> Iterator[Problem]:
        if not self.path:
            yield ("path",), "must name a file, got ''"
        if self.max_chars < 1:
            yield ("max_chars",), f"must be >= 1, got {self.max_chars}"
        if self.rotate_bytes is not None and self.rotate_bytes < 1:
            yield ("rotate_bytes",), f"must be >= 1, got {self.rotate_bytes}"
        if self.keep < 0:
            yield ("keep",), f"must be >= 0, got {self.keep}"
        if self.max_pending < 1:
            yield ("max_pending",), f"must be >= 1, got {self.max_pending}"
        for i, pattern in enumerate(self.redact):
            try:
                re.compile(pattern)
            except re.error as exc:
                yield ("redact",), f"[{i}] {pattern!r} is not a regular expression: {exc}"


class TracingConfig(_Config, frozen=True):
    """OpenTelemetry tracing (needs the ``otel`` extra).

    With ``enabled``, the router traces through the global tracer provider
    (``opentelemetry.trace.get_tracer_provider()``); ``open_router(config,
    tracer_provider=...)`` names one explicitly and needs no switch.

    Example::

        TracingConfig(enabled=True)          # TOML: [tracing]  enabled = true
    """

    enabled: bool = False


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class GatewayKeyConfig(_Config, frozen=True):
    """One gateway key (``[gateway.keys.NAME]``): who may call, what, how much (docs/gateway.md).

    ===============  =======  =========================================================
    ``key_env``      None     the environment variable holding the key's value (read
                              when the gateway starts; only its sha256 is kept)
    ``key_sha256``   None     or the key given only as its sha256 (64 lower-case hex
                              digits: ``llm-router key hash``); exactly one of the two
    ``routes``       None     route names and ``provider:model`` patterns (``*``, ``?``,
                              ``[..]`` as in fnmatch) the key may use; ``None``: all
    ``rpm``          None     requests per minute (a token bucket; ``None``: no limit)
    ``tpm``          None     tokens per minute (estimated input + ``max_tokens``,
                              corrected by the usage reported)
    ``rpm_burst``    = rpm    the buckets' capacity
    ``tpm_burst``    = tpm
    ``spend_cap``    None     US dollars the key may spend per ``spend_period``, in this
                              gateway process (several workers: each has its own)
    ``spend_period`` None     ``"hour"``, ``"day"``, ``"week"``, ``"month"`` or seconds;
                              ``None``: the cap holds for the process's lifetime
    ===============  =======  =========================================================

    Example::

        GatewayKeyConfig(key_env="TEAM_A_KEY", routes=["fast", "openai:*"], rpm=60)
        # TOML: [gateway.keys.team-a]  key_env = "TEAM_A_KEY"  routes = ["fast"]  rpm = 60
    """

    key_env: str | None = None
    key_sha256: str | None = None
    routes: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    rpm_burst: int | None = None
    tpm_burst: int | None = None
    spend_cap: float | None = None
    spend_period: Literal["hour", "day", "week", "month"] | float | None = None

    def _problems(self) -> Iterator[Problem]:
        if (self.key_env is None) == (self.key_sha256 is None):
            yield (
                ("key_env",),
                "give the key's value through key_env (an environment variable's name) "
                "or its hash as key_sha256, exactly one of the two",
            )
        if self.key_env is not None and not _ENV_NAME.fullmatch(self.key_env):
            # Not echoed: a key pasted here instead of a variable's name is a secret.
            yield (
                ("key_env",),
                "must name the environment variable that holds the key "
                "(letters, digits, '_'; e.g. TEAM_A_KEY), not the key itself",
            )
        if self.key_sha256 is not None and not _SHA256_HEX.fullmatch(self.key_sha256):
            yield (
                ("key_sha256",),
                "must be the key's sha256 as 64 lower-case hex digits "
                "(llm-router key hash prints it), not the key itself",
            )
        for i, pattern in enumerate(self.routes or ()):
            if not pattern:
                yield ("routes", i), "must name a route or a 'provider:model' pattern, got ''"
        for field in ("rpm", "tpm", "rpm_burst", "tpm_burst"):
            value = getattr(self, field)
            if value is not None and value < 1:
                yield (field,), f"must be >= 1 (or left out: no limit), got {value}"
        for burst, limit in (("rpm_burst", "rpm"), ("tpm_burst", "tpm")):
            if getattr(self, burst) is not None and getattr(self, limit) is None:
                yield (burst,), f"needs {limit}: a burst is the capacity of the {limit} bucket"
        if self.spend_cap is not None and not _finite(self.spend_cap, strict=True):
            yield (
                ("spend_cap",),
                f"must be a positive number of US dollars, got {self.spend_cap}",
            )
        period = self.spend_period
        if period is not None:
            if self.spend_cap is None:
                yield ("spend_period",), "needs spend_cap: it is the period of the spend cap"
            if not isinstance(period, str) and not _finite(period, strict=True):
                yield (
                    ("spend_period",),
                    f"must be hour, day, week, month or positive seconds, got {period}",
                )


class GatewayConfig(_Config, frozen=True):
    """``llm-router serve``: the gateway's address, limits and shutdown (docs/gateway.md).

    ====================  =============  ===============================================
    ``host``              "127.0.0.1"    address to bind (``--host`` overrides it); a
                                         non-loopback address needs gateway keys
    ``port``              4000           port to bind (``--port`` overrides it; 0: any)
    ``grace``             10.0           seconds in-flight requests and streams get to
                                         finish after SIGTERM/SIGINT; then cancelled
    ``max_body_bytes``    16 MiB         a larger request body is refused with a 413
    ``body_timeout``      30.0           seconds a client has to send the rest of a body
                                         that did not come in one piece; then a 408
    ``max_timeout``       None           the longest ``x-request-timeout`` accepted
                                         (seconds); ``None``: any
    ``default_timeout``   None           the deadline of a request without
                                         ``x-request-timeout``; ``None``: none
    ``keys``              {}             gateway keys by name
                                         (:class:`GatewayKeyConfig`); none: loopback only
    ====================  =============  ===============================================

    Example::

        GatewayConfig(port=8000, grace=30.0)
        # TOML: [gateway]  port = 8000  grace = 30.0
    """

    host: str = "127.0.0.1"
    port: int = 4000
    grace: float = 10.0
    max_body_bytes: int = 16 * 2**20
    body_timeout: float = 30.0
    max_timeout: float | None = None
    default_timeout: float | None = None
    #: Gateway keys by name (``[gateway.keys.NAME]``): without any, loopback only.
    keys: dict[str, GatewayKeyConfig] = msgspec.field(default_factory=dict)

    def _problems(self) -> Iterator[Problem]:
        if not self.host:
            yield ("host",), "must name an address to bind, got ''"
        if not 0 <= self.port <= 65535:
            yield ("port",), f"must be a port number 0-65535, got {self.port}"
        if not _finite(self.grace):
            yield ("grace",), f"must be a finite number of seconds >= 0, got {self.grace}"
        if self.max_body_bytes < 1:
            yield ("max_body_bytes",), f"must be >= 1, got {self.max_body_bytes}"
        if not _finite(self.body_timeout, strict=True):
            yield (
                ("body_timeout",),
                f"must be a positive finite number of seconds, got {self.body_timeout}",
            )
        for name in ("max_timeout", "default_timeout"):
            value = getattr(self, name)
            if value is not None and not _finite(value, strict=True):
                yield (name,), f"must be a positive finite number of seconds, got {value}"
        if (
            self.max_timeout is not None
            and self.default_timeout is not None
            and self.default_timeout > self.max_timeout
        ):
            yield (
                ("default_timeout",),
                f"must not exceed max_timeout ({self.max_timeout}), got {self.default_timeout}",
            )


# The userinfo up to its *last* '@' (a password may hold one), and the ``password``
# query parameter (coredis authenticates with it too).
_URL_PASSWORD = re.compile(r"(?<=://)[^/?#]*@")
_URL_QUERY_PASSWORD = re.compile(r"(?<=[?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """``url`` with its credentials (``user:password@``, ``?password=``) shown as ``***``."""
    return _URL_QUERY_PASSWORD.sub("***", _URL_PASSWORD.sub("***@", url))


class SharedConfig(_Config, frozen=True):
    """Limits shared by every process of a deployment, on Redis (docs/scaling.md).

    ==================  ============  ====================================================
    ``redis_url``       None          ``redis://[user:password@]host:port/db``; its
                                      password is a secret, never shown (repr, errors,
                                      logs, events).  ``${REDIS_URL}`` takes it from the
                                      environment
    ``redis_url_env``   None          or: the name of the environment variable holding
                                      the URL, read when the router opens
    ``prefix``          "llm-router"  namespace of every key, so deployments can share
                                      one Redis
    ``timeout``         0.05 s        the longest any request waits on one Redis
                                      operation; past it the process falls back to local
                                      limits at its fair share
    ``lease_time``      30.0 s        a concurrency slot's lease: renewed while its call
                                      runs, freed by a crashed process after this long
    ``heartbeat``       1.0 s         how often a process says it is alive (and renews
                                      its leases); one silent for 3 heartbeats is gone
    ``max_backoff``     5.0 s         the longest wait between reconnection attempts
    ``breaker_sync``    0.5 s         how often a process reads the others' circuit
                                      breaker decisions: a breaker opened in one process
                                      is open in all within ``breaker_sync + 3·timeout``
    ==================  ============  ====================================================

    Example::

        SharedConfig(redis_url_env="REDIS_URL", prefix="gateway", timeout=0.05)
        # TOML: [shared]  redis_url_env = "REDIS_URL"  prefix = "gateway"
    """

    redis_url: str | None = None
    redis_url_env: str | None = None
    prefix: str = "llm-router"
    timeout: float = 0.05
    lease_time: float = 30.0
    heartbeat: float = 1.0
    max_backoff: float = 5.0
    breaker_sync: float = 0.5

    def __repr__(self) -> str:
        text = super().__repr__()
        url = self.redis_url
        return text if url is None else text.replace(repr(url), repr(redact_url(url)))

    def _problems(self) -> Iterator[Problem]:
        if (self.redis_url is None) == (self.redis_url_env is None):
            yield (
                ("redis_url",),
                "set exactly one of redis_url (redis://host:port/db) and redis_url_env "
                "(the environment variable holding it)",
            )
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            # Not echoed: the URL may hold a password.
            yield ("redis_url",), "must start with redis://, rediss:// or unix://"
        if self.redis_url_env is not None and not _ENV_NAME.fullmatch(self.redis_url_env):
            yield (
                ("redis_url_env",),
                "must name the environment variable that holds the URL "
                "(letters, digits, '_'; e.g. REDIS_URL), not the URL itself",
            )
        if not self.prefix or any(c in self.prefix for c in "{} "):
            yield ("prefix",), f"must be non-empty, without braces or spaces, got {self.prefix!r}"
        for name in ("timeout", "lease_time", "heartbeat", "max_backoff", "breaker_sync"):
            value = getattr(self, name)
            if not _finite(value, strict=True):
                yield (name,), f"must be positive seconds, got {value}"
        if (
            _finite(self.lease_time)
            and _finite(self.heartbeat)
            and self.heartbeat * 3 > self.lease_time
        ):
            yield (
                ("heartbeat",),
                f"must be at most a third of lease_time ({self.lease_time:g}s): leases "
                f"are renewed each heartbeat, got {self.heartbeat:g}s",
            )

    def url(self, environ: Mapping[str, str] | None = None) -> str:
        """The Redis URL: ``redis_url``, or the value of ``redis_url_env``.

        Raises:
            ConfigError: the variable is unset or empty (``path`` names the field).
        """
        if self.redis_url is not None:
            return self.redis_url
        name = self.redis_url_env or ""
        value = (os.environ if environ is None else environ).get(name, "")
        if not value:
            raise ConfigError(
                f"the environment variable {name} (shared.redis_url_env) is unset or empty",
                path="$.shared.redis_url_env",
            )
        return value


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
    #: ``llm-router serve``: the gateway's address, limits and shutdown.
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    #: Panic routing for routes that do not set theirs, and for direct ``provider:model``
    #: calls: 0.5 as in Envoy; 0 turns it off (docs/routing.md).
    panic_threshold: float = 0.5
    #: Limits shared by several processes, on Redis (``None``: every limit is local).
    shared: SharedConfig | None = None

    def _problems(self) -> Iterator[Problem]:
        if not self.providers:
            yield ("providers",), "must configure at least one provider, got none"
        if not _unit(self.panic_threshold):
            yield ("panic_threshold",), f"must be in [0, 1], got {self.panic_threshold}"
        if self.default_max_tokens < 1:
            yield ("default_max_tokens",), f"must be >= 1, got {self.default_max_tokens}"
        for name in self.providers:
            if not name or ":" in name:
                yield ("providers", name), "a provider's name must be non-empty, with no ':'"
        yield from _reference_problems(self)
        yield from _gateway_key_problems(self)


def _gateway_key_problems(config: RouterConfig) -> Iterator[Problem]:
    """Gateway keys: names usable in a path, ``routes`` entries that name something."""
    hashes: dict[str, str] = {}
    for name, key in config.gateway.keys.items():
        where = ("gateway", "keys", name)
        if not name or not name.isprintable():
            yield where, "a gateway key's name must be non-empty and printable"
        if key.key_sha256 is not None:
            other = hashes.setdefault(key.key_sha256, name)
            if other != name:
                yield (*where, "key_sha256"), f"is the same key as gateway key {other!r}'s"
        for i, pattern in enumerate(key.routes or ()):
            # A plain name (no ':', no glob) can only be a route's: one that is not
            # configured is a typo, which would silently lock the key out of it.
            if (
                pattern
                and ":" not in pattern
                and not any(ch in pattern for ch in "*?[")
                and pattern not in config.routes
            ):
                yield (
                    (*where, "routes", i),
                    f"{pattern!r} names no configured route (routes: "
                    f"{', '.join(sorted(config.routes)) or 'none'}"
                    f"{suggest(pattern, config.routes)}); a target is 'provider:model'",
                )


def _reference_problems(config: RouterConfig) -> Iterator[Problem]:
    for alias, route in config.routes.items():
        if alias in config.providers:
            yield ("routes", alias), f"route {alias!r} has the same name as a provider"
        for i, t in enumerate(route.targets):
            provider = t.partition(":")[0]
            if provider not in config.providers:
                yield (
                    ("routes", alias, "targets", i),
                    f"unknown provider {provider!r} in {t!r}; configured: "
                    f"{', '.join(sorted(config.providers))}{suggest(provider, config.providers)}",
                )


def check_references(config: RouterConfig) -> None:
    """Check what refers to what: routes name configured providers, not providers' names.

    Raises:
        ConfigError: with the path of the first bad reference.
    """
    for where, message in _reference_problems(config):
        raise ConfigError(message, path="$" + where_path(where))


#: Where a value may not reference the environment, and why.
_SECRET_HEADER = re.compile(r"auth|key|token|secret", re.IGNORECASE)


def _protected(where: Where) -> str | None:
    """Why the string at ``where`` may not take ``${NAME}`` (``None``: it may).

    A key comes in through ``api_key_env``, which names its variable and is read when
    the provider is built, so it never becomes part of the config (its repr, an error).
    Expanding a key into the config itself would undo that.
    """
    if where[:2] == ("gateway", "keys") and where[3:] == ("key_env",):
        return 'key_env names the variable itself (key_env = "TEAM_A_KEY")'
    if where[:1] != ("providers",) or len(where) < 3:
        return None
    if where[2:] == ("api_key_env",):
        return 'api_key_env names the variable itself (api_key_env = "OPENAI_API_KEY")'
    if where[2:3] == ("headers",) and len(where) == 4 and _SECRET_HEADER.search(str(where[3])):
        return (
            "a header carrying a secret would keep it in the config; "
            "give the key through api_key_env"
        )
    return None


def validate_config(config: RouterConfig, *, source: str | None = None) -> RouterConfig:
    """Validate a :class:`RouterConfig` built in code exactly as ``load_config`` does TOML.

    Every field is checked for type and range, references are checked, and the config
    comes back normalized (ints where floats go become floats, tuples lists); the
    structs themselves never raise when built.  ``open_router`` calls it.

    Raises:
        ConfigError: the first mistake; ``path`` names it (``$.routes.fast.hedge.delay``)
            and the message says the bad value and what is allowed.

    Example::

        config = validate_config(RouterConfig(providers={"local": ProviderConfig(kind="mock")}))
    """
    if not isinstance(config, RouterConfig):
        raise ConfigError(
            f"expected a RouterConfig (built in code, or from load_config), "
            f"got {type(config).__name__}",
            path="$",
        )
    return validate(config, RouterConfig, source=source)


def decode_config(
    data: bytes | str,
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
) -> RouterConfig:
    """Decode TOML text into a validated :class:`RouterConfig`.

    ``${NAME}`` and ``${NAME:-default}`` in string values are replaced from ``environ``
    (``os.environ`` by default) before validation; ``$$`` is a literal ``$``.

    Raises:
        ConfigError: the TOML does not parse, a variable is unset, or a value is wrong;
            ``path`` names it (``$.providers.openai.rpm``).

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
    raw = expand_env(
        raw, os.environ if environ is None else environ, source=source, protected=_protected
    )
    return validate(raw, RouterConfig, source=source)


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> RouterConfig:
    """Read and validate a TOML configuration file (the shape is in docs/configuration.md).

    Unknown fields are errors, so a typo is reported rather than silently ignored.
    String values may reference the environment (``${NAME}``, see :func:`decode_config`).

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
    return decode_config(data, source=name, environ=environ)
