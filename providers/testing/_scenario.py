"""What the fake upstream does: scenario configuration and the pure decisions behind it.

A :class:`Scenario` says how one named upstream behaves: how long it takes to answer
(a :data:`Latency` distribution), how it streams, what it replies, and which
:class:`Fault` it injects on which request.  Everything is a frozen msgspec Struct that
decodes from a TOML or JSON table with :func:`msgspec.convert` (unknown fields are
errors), and everything here is pure: randomness comes in as a ``random.Random``, so a
seed and a request order fix every decision.

The wire formats live in :mod:`._server`; this module only decides *what* to say:
:func:`plan_reply` turns a vendor-neutral :class:`ChatView` of a request into a
:class:`ReplyPlan` (text or a tool call, finish reason, token counts) that every
vendor's formatter renders (:func:`filter_plan` cuts it where the safety filter strikes).
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any, Literal, TypeAlias

import msgspec

from .._errors import ConfigError

__all__ = [
    "ChatView",
    "Fault",
    "FaultKind",
    "Fixed",
    "Latency",
    "LogNormal",
    "Mixture",
    "MixtureComponent",
    "ReplyPlan",
    "Scenario",
    "OfferedTool",
    "Uniform",
    "estimate_input_tokens",
    "estimate_text_tokens",
    "filter_plan",
    "load_scenarios",
    "plan_reply",
    "schema_example",
    "select_fault",
    "split_words",
]


# --------------------------------------------------------------------------- latency


class _Distribution(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="dist"):
    """Base of the latency distributions; the ``dist`` field names the member."""


class Fixed(_Distribution, frozen=True, tag="fixed"):
    """Always the same delay.

    Example::

        Fixed(0.05)                       # TOML: latency = { dist = "fixed", seconds = 0.05 }
    """

    seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.seconds >= 0.0:
            raise ValueError("`seconds` must be >= 0")

    def sample(self, rng: random.Random) -> float:
        """Return ``seconds``; ``rng`` is not used."""
        return self.seconds


class Uniform(_Distribution, frozen=True, tag="uniform"):
    """A delay drawn uniformly from ``[low, high]``.

    Example::

        Uniform(0.01, 0.03)               # { dist = "uniform", low = 0.01, high = 0.03 }
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high:
            raise ValueError("need 0 <= `low` <= `high`")

    def sample(self, rng: random.Random) -> float:
        """Draw one delay."""
        return rng.uniform(self.low, self.high)


class LogNormal(_Distribution, frozen=True, tag="lognormal"):
    """A right-skewed delay, ``median * exp(sigma * N(0, 1))`` — what real APIs look like.

    Example::

        LogNormal(median=0.2, sigma=0.5)  # { dist = "lognormal", median = 0.2, sigma = 0.5 }
    """

    median: float
    sigma: float

    def __post_init__(self) -> None:
        if not self.median > 0.0:
            raise ValueError("`median` must be > 0")
        if not self.sigma >= 0.0:
            raise ValueError("`sigma` must be >= 0")

    def sample(self, rng: random.Random) -> float:
        """Draw one delay."""
        return self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))


class MixtureComponent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One component of a :class:`Mixture`, chosen with probability ``weight / total``."""

    weight: float
    latency: Latency

    def __post_init__(self) -> None:
        if not self.weight > 0.0:
            raise ValueError("`weight` must be > 0")


class Mixture(_Distribution, frozen=True, tag="mixture"):
    """Pick a component by weight, then draw from it: "usually fast, rarely stalls".

    Example::

        Mixture([
            MixtureComponent(0.98, LogNormal(0.1, 0.4)),
            MixtureComponent(0.02, Fixed(3.0)),        # a rare stall
        ])
        # TOML:
        # latency = { dist = "mixture", components = [
        #   { weight = 0.98, latency = { dist = "lognormal", median = 0.1, sigma = 0.4 } },
        #   { weight = 0.02, latency = { dist = "fixed", seconds = 3.0 } } ] }
    """

    components: list[MixtureComponent]

    def __post_init__(self) -> None:
        if not self.components:
            raise ValueError("`components` must not be empty")

    def sample(self, rng: random.Random) -> float:
        """Draw one delay."""
        total = sum(c.weight for c in self.components)
        point = rng.random() * total
        for component in self.components:
            point -= component.weight
            if point < 0.0:
                return component.latency.sample(rng)
        return self.components[-1].latency.sample(rng)


Latency: TypeAlias = Fixed | Uniform | LogNormal | Mixture
"""Time to response headers: one of the distributions, tagged by ``dist``."""


# --------------------------------------------------------------------------- faults

#: The kinds of :class:`Fault` the fake upstream can inject.
FaultKind: TypeAlias = Literal[
    "status",
    "reset",
    "hang",
    "midstream_error",
    "truncate",
    "malformed",
    "slow_drip",
    "error_chunk",
    "content_filter",
]


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One scripted failure.

    It fires on the listed 1-based request numbers of its scenario (counted from when the
    scenario was installed), or else with probability ``rate`` (the scenario's seeded
    random stream: the same seed and request order give the same faults).  When several
    faults fire on one request, the first in the list wins.

    Kinds:

    ========================  ==========================================================
    ``status``                answer ``status`` with the vendor's error body; 429 adds
                              ``retry-after`` (default 1 s) and rate-limit headers
    ``reset``                 close the socket with an RST instead of answering
    ``hang``                  never answer; the exchange ends when the client goes away
    ``midstream_error``       stream ``after_chunks`` content chunks, then the vendor's
                              in-stream error (non-streaming: like ``status``)
    ``truncate``              stream ``after_chunks`` chunks, then drop the connection
                              without the terminator (non-streaming: half a body)
    ``malformed``             a 200 whose JSON is invalid (streaming: one bad ``data:``
                              line after ``after_chunks`` chunks)
    ``slow_drip``             the body written ``drip_bytes`` at a time, with the
                              scenario's ``chunk_interval`` (or 0.01 s) between writes
    ``error_chunk``           OpenAI-format streams (OpenRouter's shape): after
                              ``after_chunks`` content chunks, one chunk with a top-level
                              ``"error": {"code": status, "message": ...}`` and a choice
                              with ``finish_reason: "error"``, then ``data: [DONE]``;
                              other streams: like ``midstream_error``; non-streaming:
                              like ``status``
    ``content_filter``        the safety filter strikes: with ``after_chunks == 0`` the
                              prompt is blocked (Gemini ``promptFeedback.blockReason``;
                              OpenAI ``finish_reason: "content_filter"`` and no content,
                              on Azure paths a 400 ``content_filter``; Anthropic
                              ``stop_reason: "refusal"``), else the output stops after
                              ``after_chunks`` chunks with the vendor's filter reason
                              (Gemini ``SAFETY``); Ollama has no filter (never strikes)
    ========================  ==========================================================

    ``status``, ``reset`` and ``hang`` strike any request; the others shape a body,
    so they only strike requests that would have succeeded (a 401 stays a 401).  The
    scenario's latency comes first, except for ``hang``.

    Example::

        Fault("status", status=429, retry_after=0.5, on_requests=[1, 2])
        Fault("reset", rate=0.05)
    """

    kind: FaultKind
    rate: float = 0.0
    on_requests: list[int] | None = None
    status: int = 500
    retry_after: float | None = None
    after_chunks: int = 2
    drip_bytes: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("`rate` must be within [0, 1]")
        if self.on_requests is not None and any(n < 1 for n in self.on_requests):
            raise ValueError("`on_requests` are 1-based request numbers")
        if not 400 <= self.status <= 599:
            raise ValueError("`status` must be an HTTP error status (400-599)")
        if self.retry_after is not None and not self.retry_after >= 0.0:
            raise ValueError("`retry_after` must be >= 0")
        if self.after_chunks < 0:
            raise ValueError("`after_chunks` must be >= 0")
        if self.drip_bytes < 1:
            raise ValueError("`drip_bytes` must be >= 1")


def select_fault(faults: Sequence[Fault], request_number: int, rng: random.Random) -> Fault | None:
    """Return the fault for the ``request_number``-th request of a scenario, if any.

    Every fault with a ``rate`` draws from ``rng`` on every request, whether or not an
    earlier fault already fired: for a given fault list, the pattern depends only on
    the seed and the request number, never on which faults happened to win before.
    """
    chosen: Fault | None = None
    for fault in faults:
        hit = fault.on_requests is not None and request_number in fault.on_requests
        if fault.rate > 0.0:
            hit = (rng.random() < fault.rate) or hit
        if hit and chosen is None:
            chosen = fault
    return chosen


# --------------------------------------------------------------------------- scenario


def _default_models() -> list[str]:
    return ["fake-model"]


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one named upstream behaves. The defaults answer at once with an echo.

    Attributes:
        latency: time to response headers, for every response (errors included).
        chunk_interval: seconds between content chunks of a stream.
        chunk_words: words per text chunk (spaces kept: the chunks join to the reply).
        reply: a fixed reply; by default ``"echo: " + <last user text>`` (or
            ``"tool result: " + <content>`` after a tool result).  It is also used
            verbatim for structured-output requests, to script invalid JSON, and as the
            arguments of a forced tool call (Anthropic's form of structured output); a
            non-streaming Anthropic ``tool_use`` carries it as its ``input`` when it is
            JSON, else as a JSON string (no real server sends that: a malformed answer).
        context_window: answer the vendor's context-length 400 when the estimated input
            (:func:`estimate_input_tokens`) is larger.
        cached_tokens: reported as OpenAI ``prompt_tokens_details.cached_tokens`` (part
            of ``prompt_tokens``) / Anthropic ``cache_read_input_tokens`` (taken out of
            ``input_tokens``, so both add up to the same prompt).
        models: what ``/v1/models`` lists.
        faults: scripted failures, see :class:`Fault`.
        ratelimit_headers: send rate-limit headers on every success, counting down
            from ``ratelimit_requests`` / ``ratelimit_tokens`` per 60 s window.
        ratelimit_requests: requests per window the headers advertise.
        ratelimit_tokens: tokens per window the headers advertise.
        require_auth: answer 401 without ``Authorization: Bearer`` (OpenAI) or
            ``x-api-key`` (Anthropic) or ``api-key`` (Azure), and Gemini's 400
            ``API_KEY_INVALID`` without ``x-goog-api-key`` (or ``?key=``).  Ollama
            never asks for a key.
        openrouter_processing: that many ``: OPENROUTER PROCESSING`` SSE comment lines
            before the first chunk of an OpenAI-format stream (OpenRouter's keep-alives).
        usage_location: where OpenAI-format streams carry usage: ``"usage"`` (a
            separate ``choices: []`` chunk when ``stream_options.include_usage`` is on)
            or ``"x_groq"`` (Groq's shape: ``x_groq.usage`` on the last chunk before
            ``[DONE]``, the finish chunk, and no usage chunk).  Non-streaming responses
            keep ``usage`` at the top level either way.
        azure_filter_chunks: Azure's content-filter annotations: the first chunk of an
            OpenAI-format stream has ``"choices": []`` and ``prompt_filter_results``
            (and ``id``/``model`` empty); non-streaming responses carry
            ``prompt_filter_results`` and per-choice ``content_filter_results``.

    Example::

        Scenario(latency=LogNormal(0.2, 0.5), chunk_interval=0.01,
                 faults=[Fault("status", status=429, rate=0.1)])
    """

    latency: Latency = Fixed(0.0)
    chunk_interval: float = 0.0
    chunk_words: int = 1
    reply: str | None = None
    context_window: int | None = None
    cached_tokens: int = 0
    models: list[str] = msgspec.field(default_factory=_default_models)
    faults: list[Fault] = []
    ratelimit_headers: bool = False
    ratelimit_requests: int = 1000
    ratelimit_tokens: int = 1_000_000
    require_auth: bool = True
    openrouter_processing: int = 0
    usage_location: Literal["usage", "x_groq"] = "usage"
    azure_filter_chunks: bool = False

    def __post_init__(self) -> None:
        if self.openrouter_processing < 0:
            raise ValueError("`openrouter_processing` must be >= 0")
        if not self.chunk_interval >= 0.0:
            raise ValueError("`chunk_interval` must be >= 0")
        if self.chunk_words < 1:
            raise ValueError("`chunk_words` must be >= 1")
        if self.context_window is not None and self.context_window < 1:
            raise ValueError("`context_window` must be >= 1")
        if self.cached_tokens < 0:
            raise ValueError("`cached_tokens` must be >= 0")
        if self.ratelimit_requests < 1 or self.ratelimit_tokens < 1:
            raise ValueError("rate limits must be >= 1")


class _ScenarioFile(msgspec.Struct, forbid_unknown_fields=True):
    scenarios: dict[str, Any] = {}


def load_scenarios(path: str | PathLike[str]) -> dict[str, Scenario]:
    """Read ``[scenarios.NAME]`` tables from a TOML file.

    Raises:
        ConfigError: the file is not valid TOML or a table is invalid; the message names
            the file and the place in it (``$.scenarios.flaky.faults[0].kind``).
        OSError: the file cannot be read.

    Example::

        # upstream.toml
        # [scenarios.flaky]
        # latency = { dist = "lognormal", median = 0.2, sigma = 0.5 }
        # faults = [{ kind = "status", status = 429, rate = 0.1, retry_after = 1.0 }]
        scenarios = load_scenarios("upstream.toml")
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid TOML: {exc} (in {path})") from exc
    try:
        top = msgspec.convert(data, _ScenarioFile)
    except msgspec.ValidationError as exc:
        raise _config_error(path, "$", exc) from exc
    scenarios: dict[str, Scenario] = {}
    for name, table in top.scenarios.items():
        try:
            scenarios[name] = msgspec.convert(table, Scenario)
        except msgspec.ValidationError as exc:
            raise _config_error(path, f"$.scenarios.{name}", exc) from exc
    return scenarios


def _config_error(
    file: str | PathLike[str], prefix: str, exc: msgspec.ValidationError
) -> ConfigError:
    message, sep, where = str(exc).rpartition(" - at `")
    if not sep:
        return ConfigError(f"{exc} (in {file})", path=prefix)
    return ConfigError(f"{message} (in {file})", path=prefix + where.rstrip("`").removeprefix("$"))


# --------------------------------------------------------------------------- tokens and words

# Each piece is one word with the whitespace before it; trailing whitespace is glued on
# to the last piece, so "".join(pieces) always gives the text back.
_WORD_RE = re.compile(r"\s*\S+")


def split_words(text: str) -> list[str]:
    """Split ``text`` into words that keep their leading spaces; they join back to ``text``."""
    pieces = _WORD_RE.findall(text)
    if not pieces:
        return [text] if text else []
    consumed = sum(len(p) for p in pieces)
    if consumed < len(text):
        pieces[-1] += text[consumed:]
    return pieces


def estimate_text_tokens(chars: int) -> int:
    """Tokens for ``chars`` characters of text: ``ceil(chars / 4)``."""
    return -(-chars // 4)


def estimate_input_tokens(chars: int, messages: int) -> int:
    """The fake's prompt size: ``ceil(chars / 4) + 4 * messages``.

    ``chars`` counts every text in the conversation (system prompt, message texts, tool
    results, tool-call arguments); a top-level Anthropic ``system`` counts as a message.
    """
    return estimate_text_tokens(chars) + 4 * messages


# --------------------------------------------------------------------------- JSON Schema examples

_encode = msgspec.json.Encoder().encode


def _spaced_json(value: Any) -> str:
    """JSON with a space after ``:`` and ``,``, so it streams as several "words"."""
    return msgspec.json.format(_encode(value), indent=0).decode()


_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "P1D",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "email": "user@example.com",
    "uri": "https://example.com",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}
_MAX_SCHEMA_DEPTH = 16


def schema_example(schema: Mapping[str, Any]) -> Any:
    """A deterministic value that fits a JSON Schema, for fake tool calls and JSON replies.

    A ``const`` or ``default`` is used as is; otherwise ``string`` → ``"value"`` (or the
    first ``enum``, or a sample for a known ``format``), ``integer`` → 1, ``number`` →
    1.5, ``boolean`` → true, ``array`` → ``minItems`` items (usually ``[]``), ``object``
    → every property, recursively.
    ``$ref`` into ``$defs``/``definitions`` (as ``msgspec.json.schema`` writes them),
    ``anyOf``/``oneOf``/``allOf`` and type lists take the first usable branch.

    Example::

        >>> schema_example({"type": "object", "properties": {"city": {"type": "string"}}})
        {'city': 'value'}
    """
    return _example(schema, schema, 0)


def _example(schema: Any, root: Mapping[str, Any], depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > _MAX_SCHEMA_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _example(_resolve_ref(ref, root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            usable = [
                b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")
            ]
            return _example((usable or branches)[0], root, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {}
        for branch in all_of:
            value = _example(branch, root, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
            else:
                return value
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if kinds else "null"
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "string":
        fmt = schema.get("format")
        text = _STRING_FORMATS.get(fmt, "value") if isinstance(fmt, str) else "value"
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(text) < min_length:
            text = text + "x" * (min_length - len(text))
        return text
    if kind == "integer":
        return int(_clamp(1, schema))
    if kind == "number":
        return _clamp(1.5, schema)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        count = schema.get("minItems")
        items = schema.get("items")
        if not isinstance(count, int) or count <= 0:
            return []
        return [_example(items, root, depth + 1) for _ in range(count)]
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return {}
        return {str(name): _example(sub, root, depth + 1) for name, sub in props.items()}
    return None


def _clamp(value: float, schema: Mapping[str, Any]) -> float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if isinstance(low, int | float) and value < low:
        value = low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    if isinstance(high, int | float) and value > high:
        value = high - (1 if "exclusiveMaximum" in schema and "maximum" not in schema else 0)
    return value


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# --------------------------------------------------------------------------- reply planning


class OfferedTool(msgspec.Struct, frozen=True):
    """A tool the request offers: its name and its input JSON Schema."""

    name: str
    schema: Mapping[str, Any]


class ChatView(msgspec.Struct, frozen=True, kw_only=True):
    """What the planner needs from a chat request, whichever vendor sent it.

    Attributes:
        last_user_text: text of the last user message ("" if none).
        tool_result: content of the last message if it is a tool result, else None.
        mentions: text of the last message if it is a plain user message, else None
            (tool names mentioned in it trigger a tool call).
        tools: the function tools offered.
        tool_choice: "auto", "none", "required" (OpenAI) / "any" (Anthropic), or "tool".
        forced_tool: the name when ``tool_choice == "tool"``.
        schema: a structured-output JSON Schema, or None.
        json_mode: JSON asked for without a schema (OpenAI ``json_object``).
        stop: stop sequences.
        max_tokens: output cap in tokens (= words), or None.
        input_tokens: :func:`estimate_input_tokens` of the request.
    """

    last_user_text: str = ""
    tool_result: str | None = None
    mentions: str | None = None
    tools: Sequence[OfferedTool] = ()
    tool_choice: str = "auto"
    forced_tool: str | None = None
    schema: Mapping[str, Any] | None = None
    json_mode: bool = False
    stop: Sequence[str] = ()
    max_tokens: int | None = None
    input_tokens: int = 0


class ReplyPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The answer, before a vendor format renders it.

    ``finish`` is "stop" (natural end), "stop_sequence", "length", "tool_use" or
    "content_filter" (the safety filter cut the output, see :func:`filter_plan`).
    ``chunks`` is the streamed text (or the tool arguments) split into fragments.
    ``prompt_blocked`` means the filter refused the prompt itself: no output at all.
    """

    text: str = ""
    tool_name: str | None = None
    tool_input: Any = None
    finish: Literal["stop", "stop_sequence", "length", "tool_use", "content_filter"] = "stop"
    stop_sequence: str | None = None
    chunks: Sequence[str] = ()
    input_tokens: int = 0
    output_tokens: int = 1
    prompt_blocked: bool = False


def filter_plan(plan: ReplyPlan, after_chunks: int) -> ReplyPlan:
    """The plan as the safety filter leaves it: cut after ``after_chunks`` chunks.

    ``after_chunks == 0`` blocks the prompt (no output, no output tokens); otherwise the
    first ``after_chunks`` text chunks survive (a tool call becomes plain text: the
    filter stops it before it completes).

    Example::

        >>> filter_plan(ReplyPlan(text="a b", chunks=["a", " b"]), 1).text
        'a'
    """
    if after_chunks == 0:
        return ReplyPlan(
            finish="content_filter",
            input_tokens=plan.input_tokens,
            output_tokens=0,
            prompt_blocked=True,
        )
    chunks = list(plan.chunks[:after_chunks]) if plan.tool_name is None else []
    return ReplyPlan(
        text="".join(chunks),
        finish="content_filter",
        chunks=chunks,
        input_tokens=plan.input_tokens,
        output_tokens=max(1, len(chunks)),
    )


def plan_reply(view: ChatView, scenario: Scenario) -> ReplyPlan:
    """Decide the reply to a chat request: a tool call, a JSON object, or text.

    A tool is called when tools are offered, ``tool_choice`` is not "none", and either
    the choice forces one ("tool", "required", "any") or the last message is a user
    message naming a tool.  The forced tool, else the earliest-mentioned, else the first
    tool is called with :func:`schema_example` arguments.  Otherwise the reply is
    ``scenario.reply``, a :func:`schema_example` of the structured-output schema, or the
    echo; stop sequences cut it, and ``max_tokens`` (counting words) truncates it.
    """
    tool = _choose_tool(view)
    if tool is not None:
        tool_input: Any
        if scenario.reply is not None and view.tool_choice == "tool":
            # A scripted reply is the forced tool's arguments, verbatim (Anthropic's
            # structured output is a forced tool): invalid JSON can be scripted too.
            arguments = scenario.reply
            try:
                tool_input = msgspec.json.decode(arguments)
            except msgspec.DecodeError:
                tool_input = arguments
        else:
            tool_input = schema_example(tool.schema)
            if not isinstance(tool_input, dict):
                tool_input = {}
            arguments = _spaced_json(tool_input)
        return ReplyPlan(
            text=arguments,
            tool_name=tool.name,
            tool_input=tool_input,
            finish="tool_use",
            chunks=_fragments(arguments, scenario.chunk_words),
            input_tokens=view.input_tokens,
            output_tokens=max(1, len(arguments.split())),
        )

    if scenario.reply is not None:
        text = scenario.reply
    elif view.schema is not None:
        text = _spaced_json(schema_example(view.schema))
    elif view.tool_result is not None:
        text = "tool result: " + view.tool_result
    else:
        text = "echo: " + view.last_user_text
    if view.json_mode and scenario.reply is None and view.schema is None:
        text = _spaced_json({"reply": text})

    finish: Literal["stop", "stop_sequence", "length"] = "stop"
    stop_sequence: str | None = None
    cut = min(((text.find(s), s) for s in view.stop if s and s in text), default=None)
    if cut is not None:
        text, stop_sequence, finish = text[: cut[0]], cut[1], "stop_sequence"
    words = split_words(text)
    if view.max_tokens is not None and len(words) > view.max_tokens:
        words = words[: view.max_tokens]
        text, finish, stop_sequence = "".join(words), "length", None
    n = scenario.chunk_words
    return ReplyPlan(
        text=text,
        finish=finish,
        stop_sequence=stop_sequence,
        chunks=["".join(words[i : i + n]) for i in range(0, len(words), n)],
        input_tokens=view.input_tokens,
        output_tokens=max(1, len(words)),
    )


def _choose_tool(view: ChatView) -> OfferedTool | None:
    if not view.tools or view.tool_choice == "none":
        return None
    if view.tool_choice == "tool":
        return next((t for t in view.tools if t.name == view.forced_tool), None)
    mentioned: OfferedTool | None = None
    if view.mentions is not None:
        positions = [(view.mentions.find(t.name), i) for i, t in enumerate(view.tools) if t.name]
        hits = sorted((pos, i) for pos, i in positions if pos >= 0)
        if hits:
            mentioned = view.tools[hits[0][1]]
    if mentioned is not None:
        return mentioned
    if view.tool_choice in ("required", "any"):
        return view.tools[0]
    return None


def _fragments(text: str, words_per_chunk: int) -> list[str]:
    """Split tool arguments into at least two fragments (when there are two characters)."""
    words = split_words(text)
    chunks = [
        "".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)
    ]
    if len(chunks) < 2 and len(text) >= 2:
        middle = len(text) // 2
        chunks = [text[:middle], text[middle:]]
    return chunks
