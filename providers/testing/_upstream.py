"""A fake LLM-vendor HTTP server on loopback, with scripted latency and faults.

:func:`open_fake_upstream` starts a trio HTTP/1.1 server (``h11`` over
``trio.serve_tcp``, real sockets, keep-alive) that speaks five wire formats natively —
OpenAI, Anthropic, Gemini, Ollama and Azure OpenAI — in JSON and as streams, faithfully
enough that the vendors' official SDKs parse every response, stream and error it sends.
Each URL starts with a scenario name that selects a :class:`~._scenario.Scenario`
(latency, streaming pace, reply, faults)::

    OpenAI (also OpenRouter, Groq, Together, any compatible server)
    /{scenario}/v1/chat/completions                              POST  SSE, data: [DONE]
    /{scenario}/v1/embeddings                                    POST
    /{scenario}/v1/models[/{id}]                                 GET   (*)

    Anthropic
    /{scenario}/v1/messages                                      POST  SSE, event: names
    /{scenario}/v1/messages/count_tokens                         POST
    /{scenario}/v1/models[/{id}]                                 GET   (*)

    Gemini (key: x-goog-api-key or ?key=; base URL {url}/{scenario}/v1beta)
    /{scenario}/v1beta/models/{model}:generateContent            POST
    /{scenario}/v1beta/models/{model}:streamGenerateContent      POST  ?alt=sse: SSE with
                                                                       CRLF, no terminator;
                                                                       else one JSON array
    /{scenario}/v1beta/models/{model}:countTokens                POST
    /{scenario}/v1beta/models/{model}:embedContent               POST
    /{scenario}/v1beta/models/{model}:batchEmbedContents         POST  (at most 100)
    /{scenario}/v1beta/models[/{model}]                          GET   paged: pageSize,
                                                                       pageToken
    Ollama (no key; base URL {url}/{scenario})
    /{scenario}/api/chat                                         POST  NDJSON unless
                                                                       "stream": false
    /{scenario}/api/embed                                        POST
    /{scenario}/api/tags                                         GET

    Azure OpenAI (endpoint {url}/{scenario}; OpenAI bodies, Azure errors)
    /{scenario}/openai/deployments/{deployment}/chat/completions POST  ?api-version= and
    /{scenario}/openai/deployments/{deployment}/embeddings       POST  api-key required
    /{scenario}/openai/models                                    GET   (?api-version=)
    /{scenario}/openai/v1/chat/completions                       POST  api-key or Bearer
    /{scenario}/openai/v1/embeddings                             POST
    /{scenario}/openai/v1/models                                 GET

    (*) Anthropic's shape if the request has an ``anthropic-version`` or ``x-api-key``
        header, else OpenAI's.

Unknown scenario names behave like ``Scenario()`` (an instant echo); a path that starts
with ``/v1/``, ``/v1beta/`` or ``/api/`` has no scenario and uses ``"default"`` (so
those three cannot be scenario names).  Every request is recorded
(:class:`RecordedRequest`) with its headers, body and addressed model (the Azure
deployment, the Gemini model in the path, or the body's ``model``), including how its
exchange ended, so tests can prove that cancelling a client call really closed its HTTP
response.

Each format keeps its vendor's traps: Gemini refuses unknown field names (OpenAI's
``max_tokens``), roles other than ``user``/``model``, ``data:`` URLs as base64, arguments
that are strings, function responses that do not answer the previous turn one for one,
and a missing key with a 400 ``API_KEY_INVALID`` (not a 401); its 429 carries the wait
in a ``google.rpc.RetryInfo`` detail, not a header, and its usage counts leave zeros out.
Ollama streams unless told not to, takes images as bare base64 and arguments as objects,
and reports errors as ``{"error": "..."}``, also as a line inside a 200 stream.

One exchange, in order: record the request, pick the scenario's fault for this request
number, sample the latency, build the answer (validation errors included), sleep the
latency (racing a read on the socket, so a client that hangs up is noticed at once),
then send the answer, or inject the fault instead.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import itertools
import math
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs, quote, unquote

import h11
import msgspec
import trio

from ._scenario import (
    ChatView,
    Fault,
    OfferedTool,
    ReplyPlan,
    Scenario,
    estimate_input_tokens,
    estimate_text_tokens,
    filter_plan,
    plan_reply,
    select_fault,
)

__all__ = [
    "UPSTREAM_KINDS",
    "FakeUpstream",
    "RecordedRequest",
    "UpstreamStats",
    "open_fake_upstream",
    "serve_fake_upstream",
]

Vendor: TypeAlias = Literal["openai", "anthropic"]
#: Every wire format the server speaks (``Vendor`` is what :meth:`FakeUpstream.base_url`
#: builds URLs for).
_Wire: TypeAlias = Literal["openai", "anthropic", "gemini", "ollama", "azure"]

#: Every provider kind the server speaks to: its wire format, and the path its base URL
#: adds after ``{url}/{scenario}``.  :meth:`FakeUpstream.base_url` is built from it, and
#: ``llm-router upstream --help`` lists it, so neither can drift from the other.
UPSTREAM_KINDS: Mapping[str, tuple[_Wire, str]] = MappingProxyType(
    {
        "openai": ("openai", "/v1"),
        "openrouter": ("openai", "/v1"),
        "groq": ("openai", "/v1"),
        "together": ("openai", "/v1"),
        "openai-compatible": ("openai", "/v1"),
        "anthropic": ("anthropic", ""),
        "gemini": ("gemini", "/v1beta"),
        "ollama": ("ollama", ""),
        "azure": ("azure", ""),
    }
)

_RECEIVE_SIZE = 65536
_DEFAULT_DRIP_INTERVAL = 0.01
_RATE_WINDOW = 60.0  # seconds for a rate-limit bucket to refill completely
_FINGERPRINT = "fp_fakeupstream"
_ANTHROPIC_VERSION_HEADER = "anthropic-version"

_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus} | {529: b"Overloaded"}

# One counter for every instance in the process: ids stay unique when a test runs
# several upstreams side by side.
_ids = itertools.count(1)

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode


# --------------------------------------------------------------------------- public records


class RecordedRequest(msgspec.Struct, kw_only=True):
    """One request the fake upstream received, and how its exchange ended.

    Attributes:
        scenario: the scenario name from the URL.
        method: ``"POST"``, ``"GET"``...
        path: the URL path, scenario included (``/flaky/v1/chat/completions``).
        query: the raw query string ("" if none).
        headers: request headers, names lower-cased (repeated headers joined by ", ").
            Test keys arrive here as sent (``authorization``, ``x-api-key``,
            ``api-key``, ``x-goog-api-key``), so tests can assert on them.
        body: the decoded JSON body, or None (no body, or not JSON).
        model: the model the request addressed: the body's ``model``, the Gemini model
            in the path, or the Azure deployment in the path (None if none).
        received_at: ``trio.current_time()`` when the request was complete.
        outcome: "pending", "completed" (answered as scripted, error answers included),
            "client_disconnected" (the client went away first), or ``"fault:<kind>"``
            (the scripted fault ran to its end).  A request still pending when the
            server shuts down stays "pending".
        fault: the kind of fault applied to this request, if any.
        status: the HTTP status sent, if a status line was sent.
        finished: set when the exchange ends, whatever the outcome.
    """

    scenario: str
    method: str
    path: str
    query: str = ""
    headers: dict[str, str] = {}
    body: Any = None
    model: str | None = None
    received_at: float = 0.0
    outcome: str = "pending"
    fault: str | None = None
    status: int | None = None
    finished: trio.Event = msgspec.field(default_factory=trio.Event)


class UpstreamStats(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of one scenario's counters (or of all, see :meth:`FakeUpstream.stats`).

    Attributes:
        requests: requests received.
        completed: exchanges that ended "completed".
        client_disconnected: exchanges the client abandoned.
        faults: applied faults by kind.
        in_flight: exchanges not ended yet.
        open_connections: TCP connections open now (server-wide: a keep-alive connection
            may serve several scenarios).
    """

    requests: int = 0
    completed: int = 0
    client_disconnected: int = 0
    faults: dict[str, int] = {}
    in_flight: int = 0
    open_connections: int = 0


# --------------------------------------------------------------------------- per-scenario state


class _Bucket:
    """A rate-limit bucket refilling linearly over ``_RATE_WINDOW``, for the headers."""

    __slots__ = ("level", "limit", "updated")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = float(limit)
        self.level = float(limit)
        self.updated = now

    def take(self, amount: float, now: float) -> None:
        refill = (now - self.updated) * self.limit / _RATE_WINDOW
        self.level = max(0.0, min(self.limit, self.level + refill) - amount)
        self.updated = now

    def remaining(self) -> int:
        return int(self.level)

    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.limit - self.level) * _RATE_WINDOW / self.limit


class _ScenarioState:
    """A scenario's config, its random streams and request numbering, and its counters.

    The counters survive :meth:`FakeUpstream.set_scenario`; the request numbering and
    the random streams restart, so a scenario installed twice replays the same faults.
    """

    def __init__(self, name: str, scenario: Scenario, seed: int, now: float) -> None:
        self.name = name
        self.seed = seed
        self.requests = 0
        self.completed = 0
        self.client_disconnected = 0
        self.in_flight = 0
        self.faults: dict[str, int] = {}
        self.install(scenario, now)

    def install(self, scenario: Scenario, now: float) -> None:
        self.scenario = scenario
        self.served = 0
        # String seeds are hashed with SHA-512: stable across runs and PYTHONHASHSEED.
        self.fault_rng = random.Random(f"{self.seed}/{self.name}/faults")
        self.latency_rng = random.Random(f"{self.seed}/{self.name}/latency")
        self.request_bucket = _Bucket(scenario.ratelimit_requests, now)
        self.token_bucket = _Bucket(scenario.ratelimit_tokens, now)

    def snapshot(self, open_connections: int) -> UpstreamStats:
        return UpstreamStats(
            requests=self.requests,
            completed=self.completed,
            client_disconnected=self.client_disconnected,
            faults=dict(self.faults),
            in_flight=self.in_flight,
            open_connections=open_connections,
        )


# --------------------------------------------------------------------------- header formatting


def _format_seconds(seconds: float) -> str:
    """``retry-after`` value: whole seconds as an integer, else a short decimal.

    Real vendors send integers; fractions let tests use short waits (both SDKs and
    most clients parse them as floats).
    """
    if seconds == int(seconds):
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration``, as OpenAI's ``x-ratelimit-reset-*`` headers do.

    ``0.02`` → ``"20ms"``, ``1.5`` → ``"1.5s"``, ``360`` → ``"6m0s"``, ``3725`` → ``"1h2m5s"``.
    """
    total_ms = round(seconds * 1000)
    if total_ms <= 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    secs = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


def _rfc3339(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(math.ceil(unix_seconds), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- errors by vendor

# status -> (type, code, message)
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", None, "The requested resource does not exist."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Another request is in progress; try again."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", ""),  # message built per response
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: (
        "service_unavailable_error",
        "server_is_overloaded",
        "The server is overloaded or not ready yet.",
    ),
    504: ("server_error", None, "Gateway timeout."),
}

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization. "
        "Please reduce the prompt length or the maximum tokens requested, or try again later.",
    ),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass(slots=True)
class _Reply:
    """A complete response with a Content-Length body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: A refusal by the safety filter (the ``content_filter`` fault), not a bad request.
    filtered: bool = False


@dataclass(slots=True)
class _StreamReply:
    """A streamed 200: SSE events before, during and after the content, plus fault bodies."""

    headers: list[tuple[str, str]]
    head: list[bytes]
    content: list[bytes]
    tail: list[bytes]
    error_event: bytes
    malformed_event: bytes
    #: OpenAI format only: the ``error_chunk`` fault's chunk and terminator, by status.
    error_chunk: Callable[[int], bytes] | None = None


_Answer: TypeAlias = _Reply | _StreamReply


class _RequestError(Exception):
    """A request the real API would reject: answered with the vendor's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        #: Gemini: the ``google.rpc`` detail objects of the error body.
        self.details = details


# --------------------------------------------------------------------------- request views
# Lenient Structs (vendors add fields all the time) holding only what the fake reads.


class _OAFunctionDef(msgspec.Struct):
    name: str = ""
    parameters: dict[str, Any] = {}


class _OATool(msgspec.Struct):
    type: str = "function"
    function: _OAFunctionDef | None = None


class _OAToolCallFunction(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class _OAToolCall(msgspec.Struct):
    function: _OAToolCallFunction | None = None


class _OAMessage(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None
    tool_calls: list[_OAToolCall] | None = None


class _OAStreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _OAJsonSchema(msgspec.Struct):
    name: str = ""
    schema: dict[str, Any] | None = None


class _OAResponseFormat(msgspec.Struct):
    type: str
    json_schema: _OAJsonSchema | None = None


class _OAChatRequest(msgspec.Struct):
    model: str
    messages: list[_OAMessage]
    stream: bool | None = None
    stream_options: _OAStreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[_OATool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: _OAResponseFormat | None = None
    stop: str | list[str] | None = None


class _OAEmbeddingRequest(msgspec.Struct):
    model: str
    input: Any
    dimensions: int | None = None
    encoding_format: str | None = None


class _AnMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]]


class _AnTool(msgspec.Struct):
    name: str = ""
    input_schema: dict[str, Any] = {}


class _AnToolChoice(msgspec.Struct):
    type: str = "auto"
    name: str | None = None


class _AnFormat(msgspec.Struct):
    type: str = ""
    schema: dict[str, Any] | None = None


class _AnOutputConfig(msgspec.Struct):
    format: _AnFormat | None = None


class _AnRequest(msgspec.Struct):
    model: str
    messages: list[_AnMessage]
    max_tokens: int | None = None
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = None
    tools: list[_AnTool] | None = None
    tool_choice: _AnToolChoice | None = None
    output_config: _AnOutputConfig | None = None
    output_format: _AnFormat | None = None
    stop_sequences: list[str] | None = None


def _convert_body(body: Any, kind: type[Any]) -> Any:
    if not isinstance(body, dict):
        raise _RequestError(400, "The request body must be a JSON object.")
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `")
        param = where.rstrip("`").removeprefix("$.") or None
        if not message:
            message, param = str(exc), None
        if message.startswith("Object missing required field `"):
            missing = message.split("`")[1]
            param = missing if param is None else f"{param}.{missing}"
            raise _RequestError(400, f"{param}: Field required", param=param) from exc
        raise _RequestError(400, f"{param}: {message}" if param else message, param=param) from exc


def _openai_text(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(
        str(part.get("text", ""))
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    )


def _openai_view(req: _OAChatRequest) -> ChatView:
    chars = 0
    last_user = ""
    for message in req.messages:
        text = _openai_text(message.content)
        chars += len(text)
        for call in message.tool_calls or ():
            if call.function is not None:
                chars += len(call.function.arguments)
        if message.role == "user":
            last_user = text
    last = req.messages[-1] if req.messages else None
    tools = [
        OfferedTool(t.function.name, t.function.parameters)
        for t in req.tools or ()
        if t.type == "function" and t.function is not None
    ]
    choice = req.tool_choice
    forced: str | None = None
    if isinstance(choice, dict):
        function = choice.get("function")
        forced = str(function.get("name", "")) if isinstance(function, dict) else None
        choice = "tool"
    schema: dict[str, Any] | None = None
    json_mode = False
    if req.response_format is not None:
        if req.response_format.type == "json_schema" and req.response_format.json_schema:
            schema = req.response_format.json_schema.schema or {}
        json_mode = req.response_format.type == "json_object"
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    return ChatView(
        last_user_text=last_user,
        tool_result=_openai_text(last.content) if last and last.role == "tool" else None,
        mentions=_openai_text(last.content) if last and last.role == "user" else None,
        tools=tools,
        tool_choice=choice or "auto",
        forced_tool=forced,
        schema=schema,
        json_mode=json_mode,
        stop=stop,
        max_tokens=req.max_completion_tokens
        if req.max_completion_tokens is not None
        else req.max_tokens,
        input_tokens=estimate_input_tokens(chars, len(req.messages)),
    )


def _anthropic_blocks_text(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        return ""
    return " ".join(
        str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text"
    )


def _anthropic_view(req: _AnRequest) -> ChatView:
    chars = len(_anthropic_blocks_text(req.system)) if req.system is not None else 0
    last_user = ""
    tool_result: str | None = None
    mentions: str | None = None
    for message in req.messages:
        content = message.content
        text = _anthropic_blocks_text(content)
        results: list[str] = []
        if isinstance(content, list):
            for block in content:
                kind = block.get("type")
                if kind == "tool_result":
                    results.append(_anthropic_blocks_text(block.get("content", "")))
                elif kind == "tool_use":
                    chars += len(_encode(block.get("input", {})))
        chars += len(text) + sum(len(r) for r in results)
        if message.role == "user":
            if text or not results:
                last_user = text
            tool_result = " ".join(results) if results else None
            mentions = text if not results else None
        else:
            tool_result = mentions = None
    tools = [OfferedTool(t.name, t.input_schema) for t in req.tools or ()]
    choice = req.tool_choice.type if req.tool_choice else "auto"
    forced = req.tool_choice.name if req.tool_choice else None
    fmt = req.output_config.format if req.output_config else None
    fmt = fmt or req.output_format
    schema = (fmt.schema or {}) if fmt is not None and fmt.type == "json_schema" else None
    n_messages = len(req.messages) + (1 if req.system else 0)
    return ChatView(
        last_user_text=last_user,
        tool_result=tool_result,
        mentions=mentions,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        schema=schema,
        stop=req.stop_sequences or (),
        max_tokens=req.max_tokens,
        input_tokens=estimate_input_tokens(chars, n_messages),
    )


def _embedding(key: bytes, dimensions: int) -> list[float]:
    """A unit vector derived from a hash of ``key``: same input, same vector."""
    raw = hashlib.shake_256(key).digest(2 * dimensions)
    values = [x / 32767.5 - 1.0 for x in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


# --------------------------------------------------------------------------- the HTTP connection


class _Connection:
    """One TCP connection: h11 state, bytes read ahead, and how to write or kill it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self.read_ahead: list[bytes] = []
        self.eof = False
        self.closing = False  # we are closing it ourselves: EOF is not the client's doing
        self._eof_fed = False

    async def next_request(self) -> tuple[h11.Request, bytes] | None:
        """Read one request and its body; None when the client closes the connection."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:  # curl, for big bodies
                    await self.stream.send_all(
                        self.frame(
                            h11.InformationalResponse(
                                status_code=100, headers=[], reason=b"Continue"
                            )
                        )
                    )
                if self.read_ahead:
                    self.h11.receive_data(self.read_ahead.pop(0))
                    continue
                if self.eof:
                    if self._eof_fed:
                        return None
                    self._eof_fed = True
                    self.h11.receive_data(b"")
                    continue
                data = await self.stream.receive_some(_RECEIVE_SIZE)
                if data:
                    self.h11.receive_data(data)
                else:
                    self.eof = True
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return request, bytes(body)
            else:  # ConnectionClosed, PAUSED
                return None

    async def watch(self, on_eof: Callable[[], None]) -> None:
        """Read while a response is in progress; call ``on_eof`` when the client hangs up.

        Bytes that arrive (a pipelined next request) are kept for :meth:`next_request`.
        """
        while True:
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if self.closing:
                return
            if not data:
                self.eof = True
                on_eof()
                return
            self.read_ahead.append(data)

    def frame(self, event: h11.Event) -> bytes:
        return self.h11.send(event) or b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def drip(self, data: bytes, size: int, interval: float) -> None:
        for start in range(0, len(data), size):
            if start:
                await trio.sleep(interval)
            await self.stream.send_all(data[start : start + size])

    async def close(self) -> None:
        self.closing = True
        await self.stream.aclose()

    async def reset(self) -> None:
        """Close with an RST (SO_LINGER 0) rather than a FIN."""
        self.closing = True
        try:
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # pragma: no cover - platform without SO_LINGER
            pass
        await self.stream.aclose()


# --------------------------------------------------------------------------- the server


Endpoint: TypeAlias = Literal[
    "chat",
    "embeddings",
    "messages",
    "count_tokens",
    "models",
    "model",
    "generate",
    "stream_generate",
    "embed_content",
    "batch_embed",
    "embed",
    "tags",
    "unknown",
]

# The first path segments that mean "no scenario in the URL": the "default" scenario.
_UNSCOPED = frozenset({"v1", "v1beta", "api"})
_GEMINI_METHODS: dict[str, Endpoint] = {
    "generateContent": "generate",
    "streamGenerateContent": "stream_generate",
    "countTokens": "count_tokens",
    "embedContent": "embed_content",
    "batchEmbedContents": "batch_embed",
}


@dataclass(slots=True)
class _Route:
    scenario: str
    vendor: _Wire
    endpoint: Endpoint
    model_id: str = ""
    #: Azure: the deployment named in the path ("" for the v1 form).
    deployment: str = ""
    #: Azure's dated API: the ``api-version`` query parameter is required.
    dated: bool = False


def _route(method: str, path: str, headers: Mapping[str, str]) -> _Route:
    parts = path.split("/")
    # "/{scenario}/v1/..." -> ["", scenario, "v1", ...]; "/v1/..." -> scenario "default".
    if len(parts) > 1 and parts[1] in _UNSCOPED:
        scenario, rest = "default", parts[1:]
    else:
        scenario, rest = unquote(parts[1]) if len(parts) > 1 else "", parts[2:]
    # Gemini's v1 surface shares "/v1/models/..." with OpenAI; its POST methods have a
    # ":verb" suffix no OpenAI path has (fine-tuned OpenAI model ids contain colons too,
    # but are only ever read with GET).
    if rest[:1] == ["v1beta"] or (
        method == "POST"
        and len(rest) == 3
        and rest[:2] == ["v1", "models"]
        and unquote(rest[2]).partition(":")[2] in _GEMINI_METHODS
    ):
        return _gemini_route(scenario, method, rest)
    if rest[:1] == ["api"]:
        endpoint: Endpoint = "unknown"
        if method == "POST" and rest == ["api", "chat"]:
            endpoint = "chat"
        elif method == "POST" and rest == ["api", "embed"]:
            endpoint = "embed"
        elif method == "GET" and rest == ["api", "tags"]:
            endpoint = "tags"
        return _Route(scenario, "ollama", endpoint)
    if rest[:1] == ["openai"]:
        return _azure_route(scenario, method, rest)
    anthropic = _ANTHROPIC_VERSION_HEADER in headers or "x-api-key" in headers
    by_header: _Wire = "anthropic" if anthropic else "openai"
    if method == "POST":
        if rest == ["v1", "chat", "completions"]:
            return _Route(scenario, "openai", "chat")
        if rest == ["v1", "embeddings"]:
            return _Route(scenario, "openai", "embeddings")
        if rest == ["v1", "messages"]:
            return _Route(scenario, "anthropic", "messages")
        if rest == ["v1", "messages", "count_tokens"]:
            return _Route(scenario, "anthropic", "count_tokens")
    elif method == "GET":
        if rest == ["v1", "models"]:
            return _Route(scenario, by_header, "models")
        if len(rest) == 3 and rest[:2] == ["v1", "models"] and rest[2]:
            return _Route(scenario, by_header, "model", unquote(rest[2]))
    if rest[:2] == ["v1", "messages"]:
        by_header = "anthropic"
    return _Route(scenario, by_header, "unknown")


def _gemini_route(scenario: str, method: str, rest: list[str]) -> _Route:
    """``v1beta/models[/{model}[:{method}]]``: the model, and the method after the colon."""
    if len(rest) == 3 and rest[1] == "models":
        model, colon, verb = unquote(rest[2]).partition(":")
        if colon and method == "POST" and verb in _GEMINI_METHODS and model:
            return _Route(scenario, "gemini", _GEMINI_METHODS[verb], model)
        if not colon and method == "GET" and model:
            return _Route(scenario, "gemini", "model", model)
    if rest == [rest[0], "models"] and method == "GET":
        return _Route(scenario, "gemini", "models")
    return _Route(scenario, "gemini", "unknown")


def _azure_route(scenario: str, method: str, rest: list[str]) -> _Route:
    """``openai/deployments/{deployment}/...`` (dated API) or ``openai/v1/...``."""
    if method == "POST" and len(rest) >= 4 and rest[1] == "deployments" and rest[2]:
        deployment = unquote(rest[2])
        if rest[3:] == ["chat", "completions"]:
            return _Route(scenario, "azure", "chat", deployment, deployment, dated=True)
        if rest[3:] == ["embeddings"]:
            return _Route(scenario, "azure", "embeddings", deployment, deployment, dated=True)
    if method == "GET" and rest == ["openai", "models"]:
        return _Route(scenario, "azure", "models", dated=True)
    if method == "POST" and rest == ["openai", "v1", "chat", "completions"]:
        return _Route(scenario, "azure", "chat")
    if method == "POST" and rest == ["openai", "v1", "embeddings"]:
        return _Route(scenario, "azure", "embeddings")
    if method == "GET" and rest == ["openai", "v1", "models"]:
        return _Route(scenario, "azure", "models")
    return _Route(scenario, "azure", "unknown")


class FakeUpstream:
    """A running fake upstream; get one from :func:`open_fake_upstream`.

    Attributes:
        url: ``"http://127.0.0.1:PORT"``.
        requests: every request received, in order (empty if recording is off).

    Example::

        async with open_fake_upstream({"slow": Scenario(latency=Fixed(5.0))}) as up:
            with trio.move_on_after(0.1):
                await client.post(up.base_url("slow", "openai") + "/chat/completions", ...)
            await up.requests[-1].finished.wait()
            assert up.requests[-1].outcome == "client_disconnected"
            up.set_scenario("slow", Scenario())          # fast from now on
            assert up.stats("slow").client_disconnected == 1
    """

    url: str
    requests: list[RecordedRequest]

    def __init__(
        self, scenarios: Mapping[str, Scenario] | None, *, seed: int, record: bool
    ) -> None:
        now = trio.current_time()
        self.url = ""
        self.requests = []
        self._seed = seed
        self._record = record
        self._states: dict[str, _ScenarioState] = {
            name: _ScenarioState(name, scenario, seed, now)
            for name, scenario in (scenarios or {}).items()
        }
        self._default = Scenario()
        self._open_connections = 0
        # One wall-clock read, then trio's clock: "created" and reset timestamps advance
        # with virtual time under a MockClock.
        self._clock_origin = now
        self._wall_origin = datetime.now(UTC).timestamp()

    # -- public API ------------------------------------------------------------------

    def base_url(self, scenario: str, kind: str) -> str:
        """The ``base_url`` to give a client for ``scenario`` in the ``kind`` wire format.

        ``kind`` is a provider kind, as in the router's configuration; the URL is what
        that adapter (or the vendor's SDK) expects, since each appends its own paths:

        =====================================================  ==========================
        kind                                                   base URL
        =====================================================  ==========================
        ``openai``, ``openrouter``, ``groq``, ``together``,    ``{url}/{scenario}/v1``
        ``openai-compatible`` (+ ``/chat/completions``)
        ``anthropic`` (+ ``/v1/messages``)                     ``{url}/{scenario}``
        ``gemini`` (+ ``/models/{model}:generateContent``)     ``{url}/{scenario}/v1beta``
        ``ollama`` (+ ``/api/chat``)                           ``{url}/{scenario}``
        ``azure``: the resource endpoint (+ ``/openai/...``)   ``{url}/{scenario}``
        =====================================================  ==========================

        The scenario name is percent-encoded into one path segment.

        Raises:
            ValueError: ``kind`` is none of these (``"mock"`` included: the mock provider
                is in-process and has no URL).

        Example::

            openai.AsyncOpenAI(base_url=upstream.base_url("slow", "openai"), api_key="sk-x")
            GeminiProvider(api_key="k", base_url=upstream.base_url("slow", "gemini"))
            AzureOpenAIProvider(api_key="k", endpoint=upstream.base_url("slow", "azure"))
        """
        try:
            _, path = UPSTREAM_KINDS[kind]
        except KeyError:
            expected = ", ".join(map(repr, UPSTREAM_KINDS))
            raise ValueError(f"unknown wire format {kind!r}; expected one of {expected}") from None
        return f"{self.url}/{quote(scenario, safe='')}{path}"

    def stats(self, scenario: str | None = None) -> UpstreamStats:
        """A frozen snapshot of ``scenario``'s counters, or of all scenarios together."""
        if scenario is not None:
            state = self._states.get(scenario)
            if state is None:
                return UpstreamStats(open_connections=self._open_connections)
            return state.snapshot(self._open_connections)
        faults: dict[str, int] = {}
        for state in self._states.values():
            for kind, count in state.faults.items():
                faults[kind] = faults.get(kind, 0) + count
        states = self._states.values()
        return UpstreamStats(
            requests=sum(s.requests for s in states),
            completed=sum(s.completed for s in states),
            client_disconnected=sum(s.client_disconnected for s in states),
            faults=faults,
            in_flight=sum(s.in_flight for s in states),
            open_connections=self._open_connections,
        )

    def scenario(self, name: str) -> Scenario:
        """The scenario now installed under ``name`` (``Scenario()`` if none)."""
        state = self._states.get(name)
        return state.scenario if state is not None else self._default

    def set_scenario(self, name: str, scenario: Scenario) -> None:
        """Install ``scenario`` under ``name`` from the next request on.

        Fault request numbers and the random streams restart; counters carry on.
        Exchanges already in progress finish with the scenario they started with.
        """
        state = self._states.get(name)
        if state is None:
            self._states[name] = _ScenarioState(name, scenario, self._seed, trio.current_time())
        else:
            state.install(scenario, trio.current_time())

    # -- plumbing --------------------------------------------------------------------

    def _state(self, name: str) -> _ScenarioState:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _ScenarioState(
                name, self._default, self._seed, trio.current_time()
            )
        return state

    def _wall(self) -> float:
        return self._wall_origin + (trio.current_time() - self._clock_origin)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection(stream)
        self._open_connections += 1
        try:
            while True:
                try:
                    got = await conn.next_request()
                except h11.RemoteProtocolError as exc:
                    await self._reject_garbage(conn, exc)
                    return
                if got is None:
                    return
                request, body = got
                keep_alive = await self._exchange(conn, request, body)
                if not keep_alive or conn.h11.our_state is not h11.DONE:
                    return
                if conn.h11.their_state is not h11.DONE:
                    return
                conn.h11.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self._open_connections -= 1

    async def _reject_garbage(self, conn: _Connection, exc: h11.RemoteProtocolError) -> None:
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = str(exc).encode()
        headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
        headers.append(("connection", "close"))
        try:
            data = conn.frame(h11.Response(status_code=exc.error_status_hint, headers=headers))
            data += conn.frame(h11.Data(data=body)) + conn.frame(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        await conn.send(data)

    async def _exchange(self, conn: _Connection, request: h11.Request, raw_body: bytes) -> bool:
        """Answer one request; return whether the connection may serve another."""
        method = request.method.decode("ascii", "replace")
        path, _, query = request.target.decode("latin-1").partition("?")
        headers: dict[str, str] = {}
        for name_bytes, value_bytes in request.headers:
            name, value = name_bytes.decode("latin-1"), value_bytes.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body: Any = None
        body_error = False
        if raw_body:
            try:
                body = _decode_any(raw_body)
            except msgspec.DecodeError:
                body_error = True

        route = _route(method, path, headers)
        state = self._state(route.scenario)
        scenario = state.scenario
        record = RecordedRequest(
            scenario=route.scenario,
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            model=_addressed_model(route, body),
            received_at=trio.current_time(),
        )
        if self._record:
            self.requests.append(record)
        state.requests += 1
        state.served += 1
        state.in_flight += 1
        keep_alive = False
        try:
            fault = select_fault(scenario.faults, state.served, state.fault_rng)
            delay = scenario.latency.sample(state.latency_rng)
            answer = self._answer(route, record, scenario, state, body, body_error, fault)
            if fault is not None and not _applies(fault, answer, route):
                fault = None
            fault_reply: _Reply | None = None
            if fault is not None and (
                fault.kind == "status"
                or (fault.kind in ("midstream_error", "error_chunk") and isinstance(answer, _Reply))
            ):
                fault_reply = self._status_fault(route.vendor, fault, state)

            deliver = partial(self._deliver, conn, record, state, answer, fault, fault_reply, delay)
            paced = isinstance(answer, _StreamReply) and scenario.chunk_interval > 0
            if delay > 0 or fault is not None or paced:
                keep_alive = await _watching_for_hangup(conn, deliver)
            else:  # nothing to wait for: skip the watcher (the benchmarks' hot path)
                try:
                    keep_alive = await deliver()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.eof = True
        finally:
            state.in_flight -= 1
            if record.outcome == "pending" and conn.eof:
                record.outcome = "client_disconnected"
            if record.outcome == "completed":
                state.completed += 1
            elif record.outcome == "client_disconnected":
                state.client_disconnected += 1
            record.finished.set()
        return keep_alive and not conn.eof

    async def _deliver(
        self,
        conn: _Connection,
        record: RecordedRequest,
        state: _ScenarioState,
        answer: _Answer,
        fault: Fault | None,
        fault_reply: _Reply | None,
        delay: float,
    ) -> bool:
        """Wait the latency, then send ``answer`` or inject ``fault``; set the outcome.

        Returns whether the connection is still usable.  A client that hangs up
        meanwhile cancels this (see :func:`_watching_for_hangup`), leaving the outcome
        "pending" for :meth:`_exchange` to turn into "client_disconnected".
        """
        interval = state.scenario.chunk_interval
        if fault is None or fault.kind == "content_filter":
            # The filter already shaped the answer; it is delivered like any other.
            if fault is not None:
                record.fault = fault.kind
                state.faults[fault.kind] = state.faults.get(fault.kind, 0) + 1
            if delay > 0:
                await trio.sleep(delay)
            if isinstance(answer, _Reply):
                await self._send_reply(conn, record, answer)
            else:
                await self._send_stream(conn, record, answer, None, interval)
            record.outcome = "completed" if fault is None else f"fault:{fault.kind}"
            return True

        record.fault = fault.kind
        state.faults[fault.kind] = state.faults.get(fault.kind, 0) + 1
        if fault.kind == "hang":
            await trio.sleep_forever()
        if delay > 0:
            await trio.sleep(delay)
        keep_alive = True
        if fault.kind == "reset":
            await conn.reset()
            keep_alive = False
        elif fault_reply is not None:  # "status"; in-stream errors without a stream
            await self._send_reply(conn, record, fault_reply)
        elif isinstance(answer, _StreamReply):
            keep_alive = await self._send_stream(conn, record, answer, fault, interval)
        elif fault.kind == "truncate":
            head = self._reply_head(conn, record, answer)
            half = answer.body[: len(answer.body) // 2]
            await conn.send(head + conn.frame(h11.Data(data=half)))
            await conn.close()
            keep_alive = False
        elif fault.kind == "malformed":
            broken = answer.body[: max(1, len(answer.body) // 2)]
            headers = [(k, v) for k, v in answer.headers if k != "content-length"]
            headers.append(("content-length", str(len(broken))))
            await self._send_reply(conn, record, _Reply(answer.status, headers, broken))
        else:  # slow_drip
            await conn.send(self._reply_head(conn, record, answer))
            body = conn.frame(h11.Data(data=answer.body)) + conn.frame(h11.EndOfMessage())
            await conn.drip(body, fault.drip_bytes, interval or _DEFAULT_DRIP_INTERVAL)
        record.outcome = f"fault:{fault.kind}"
        return keep_alive

    def _reply_head(self, conn: _Connection, record: RecordedRequest, reply: _Reply) -> bytes:
        record.status = reply.status
        reason = _REASONS.get(reply.status, b"")
        return conn.frame(
            h11.Response(status_code=reply.status, headers=reply.headers, reason=reason)
        )

    async def _send_reply(self, conn: _Connection, record: RecordedRequest, reply: _Reply) -> None:
        data = self._reply_head(conn, record, reply)
        if record.method != "HEAD":  # HEAD: the headers of the answer, no body
            data += conn.frame(h11.Data(data=reply.body))
        data += conn.frame(h11.EndOfMessage())
        await conn.send(data)

    async def _send_stream(
        self,
        conn: _Connection,
        record: RecordedRequest,
        reply: _StreamReply,
        fault: Fault | None,
        interval: float,
    ) -> bool:
        """Send an SSE stream; a fault strikes just before content chunk ``after_chunks``.

        ``interval`` separates content chunks; events with no pause between them go out
        in one write.  With ``slow_drip`` the whole body goes out ``drip_bytes`` at a
        time instead.  Returns whether the connection is still usable.
        """
        record.status = 200
        head = conn.frame(h11.Response(status_code=200, headers=reply.headers, reason=b"OK"))
        events = reply.head + reply.content + reply.tail
        if fault is not None and fault.kind == "slow_drip":
            await conn.send(head)
            body = conn.frame(h11.Data(data=b"".join(events))) + conn.frame(h11.EndOfMessage())
            await conn.drip(body, fault.drip_bytes, interval or _DEFAULT_DRIP_INTERVAL)
            return True

        first_content = len(reply.head)
        end_content = first_content + len(reply.content)
        strike = -1
        if fault is not None:
            strike = first_content + min(fault.after_chunks, len(reply.content))
        out = bytearray(head)  # framed bytes ready for the socket
        batch: list[bytes] = []  # SSE events not framed yet: one HTTP chunk per write

        def framed() -> bytes:
            if batch:
                out.extend(conn.frame(h11.Data(data=b"".join(batch))))
                batch.clear()
            data = bytes(out)
            out.clear()
            return data

        for index, event in enumerate(events):
            if index == strike:
                assert fault is not None
                if fault.kind == "truncate":
                    await conn.send(framed())
                    await conn.close()
                    return False
                if fault.kind in ("midstream_error", "error_chunk"):
                    if fault.kind == "error_chunk" and reply.error_chunk is not None:
                        batch.append(reply.error_chunk(fault.status))
                    else:
                        batch.append(reply.error_event)
                    await conn.send(framed() + conn.frame(h11.EndOfMessage()))
                    return True
                batch.append(reply.malformed_event)
            if interval > 0 and first_content < index < end_content:
                await conn.send(framed())
                await trio.sleep(interval)
            batch.append(event)
        await conn.send(framed() + conn.frame(h11.EndOfMessage()))
        return True

    # -- building answers --------------------------------------------------------------

    def _answer(
        self,
        route: _Route,
        record: RecordedRequest,
        scenario: Scenario,
        state: _ScenarioState,
        body: Any,
        body_error: bool,
        fault: Fault | None,
    ) -> _Answer:
        vendor = _FORMATS[route.vendor]
        request_id = f"req_fake{next(_ids):010d}"
        try:
            if route.endpoint == "unknown":
                return vendor.unknown_url_reply(record.method, record.path, request_id)
            if scenario.require_auth and not vendor.authorized(record, route):
                raise vendor.auth_error()
            if route.vendor == "anthropic" and _ANTHROPIC_VERSION_HEADER not in record.headers:
                raise _RequestError(400, "anthropic-version: header is required")
            if route.dated and not _query_value(record.query, "api-version"):
                raise _RequestError(400, _AZURE_NO_VERSION, code="MissingApiVersionParameter")
            if body_error:
                raise _RequestError(400, vendor.bad_json_message)
            return self._success(route, vendor, scenario, state, body, request_id, record, fault)
        except _RequestError as exc:
            return vendor.error_reply(exc, request_id)

    def _success(
        self,
        route: _Route,
        vendor: _VendorFormat,
        scenario: Scenario,
        state: _ScenarioState,
        body: Any,
        request_id: str,
        record: RecordedRequest,
        fault: Fault | None,
    ) -> _Answer:
        now = trio.current_time()
        if route.endpoint in ("models", "model", "tags"):
            state.request_bucket.take(1, now)
            return vendor.models_reply(
                scenario, route.model_id, request_id, self._wall(), record.query
            )
        if route.endpoint in ("embeddings", "embed", "embed_content", "batch_embed"):
            reply, tokens = vendor.embeddings_reply(route, body, request_id)
            state.request_bucket.take(1, now)
            state.token_bucket.take(tokens, now)
            if scenario.ratelimit_headers:
                reply.headers += vendor.ratelimit_headers(state, self._wall(), None)
            return reply

        chat = vendor.read_chat(route, body, record.query)
        if route.endpoint == "count_tokens":
            return vendor.count_tokens_reply(chat.view.input_tokens, request_id)
        window = scenario.context_window
        if window is not None and chat.view.input_tokens > window:
            raise vendor.context_error(window, chat.view.input_tokens)

        plan = plan_reply(chat.view, scenario)
        if fault is not None and fault.kind == "content_filter" and vendor.has_filter:
            plan = filter_plan(plan, fault.after_chunks)
            blocked = vendor.prompt_blocked_error() if plan.prompt_blocked else None
            if blocked is not None:
                reply = vendor.error_reply(blocked, request_id)
                reply.filtered = True
                return reply
        state.request_bucket.take(1, now)
        state.token_bucket.take(plan.input_tokens + plan.output_tokens, now)
        extra = (
            vendor.ratelimit_headers(state, self._wall(), None)
            if scenario.ratelimit_headers
            else []
        )
        shape = _Shape(
            chat=chat,
            n=next(_ids),
            created=int(self._wall()),
            cached=min(scenario.cached_tokens, plan.input_tokens),
            request_id=request_id,
            scenario=scenario,
            wall=self._wall(),
        )
        if chat.stream:
            return vendor.stream_reply(plan, shape, extra)
        reply = vendor.chat_reply(plan, shape)
        reply.headers += extra
        return reply

    def _status_fault(self, wire: _Wire, fault: Fault, state: _ScenarioState) -> _Reply:
        vendor = _FORMATS[wire]
        request_id = f"req_fake{next(_ids):010d}"
        status = fault.status
        retry_after = fault.retry_after
        if status == 429 and retry_after is None:
            retry_after = 1.0
        reply = vendor.error_reply(vendor.fault_error(status, state, retry_after), request_id)
        if retry_after is not None and vendor.retry_after_header:
            reply.headers.append(("retry-after", _format_seconds(retry_after)))
            if vendor.retry_after_ms_header:
                reply.headers.append(("retry-after-ms", str(round(retry_after * 1000))))
        if status == 429:
            reply.headers += vendor.ratelimit_headers(state, self._wall(), retry_after)
        return reply


async def _watching_for_hangup(conn: _Connection, deliver: Callable[[], Awaitable[bool]]) -> bool:
    """Run ``deliver`` while reading the socket; a client hang-up cancels it at once.

    Without the read, a client that gives up during a long latency or a slow stream
    would go unnoticed until the next write fails (or forever, for a hang).
    """
    keep_alive = False
    done = False

    def on_eof() -> None:
        if not done:
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.watch, on_eof)
        try:
            keep_alive = await deliver()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.eof = True
        done = True
        nursery.cancel_scope.cancel()
    return keep_alive


_CHAT_ENDPOINTS = frozenset({"chat", "messages", "generate", "stream_generate"})


def _applies(fault: Fault, answer: _Answer, route: _Route) -> bool:
    """Faults that shape a body only strike answers that would have succeeded."""
    if fault.kind in ("status", "reset", "hang"):
        return True
    if fault.kind == "content_filter":
        if not _FORMATS[route.vendor].has_filter or route.endpoint not in _CHAT_ENDPOINTS:
            return False
        if isinstance(answer, _Reply) and answer.filtered:
            return True
    return isinstance(answer, _StreamReply) or answer.status < 400


def _json_reply(status: int, obj: Any, vendor: _VendorFormat, request_id: str) -> _Reply:
    body = _encode(obj)
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    if vendor.request_id_header:
        headers.append((vendor.request_id_header, request_id))
    return _Reply(status, headers, body)


def _text_reply(status: int, content_type: str, text: str) -> _Reply:
    body = text.encode()
    return _Reply(
        status, [("content-type", content_type), ("content-length", str(len(body)))], body
    )


def _addressed_model(route: _Route, body: Any) -> str | None:
    """The model a request addressed: Azure's deployment, Gemini's path, or the body's."""
    if route.model_id:
        return route.model_id
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return str(body["model"])
    return None


def _query_value(query: str, name: str) -> str | None:
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None


def _openai_embeddings(
    req: _OAEmbeddingRequest, request_id: str, vendor: _VendorFormat
) -> tuple[_Reply, int]:
    inputs = req.input
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and all(isinstance(x, int) for x in inputs)
    ):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise _RequestError(400, "input: must be a non-empty string or array", param="input")
    dimensions = req.dimensions if req.dimensions is not None else 8
    if dimensions < 1:
        raise _RequestError(400, "dimensions: must be at least 1", param="dimensions")
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            key = item.encode()
            tokens += estimate_text_tokens(len(item))
        elif isinstance(item, list) and all(isinstance(x, int) for x in item):
            key = _encode(item)
            tokens += len(item)
        else:
            raise _RequestError(400, f"input[{index}]: expected a string or tokens", param="input")
        vector = _embedding(key, dimensions)
        embedding: Any = vector
        if req.encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    obj = {
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return _json_reply(200, obj, vendor, request_id), tokens


# --------------------------------------------------------------------------- wire formats


@dataclass(slots=True, frozen=True)
class _ChatRead:
    """A chat request as the planner and the formatters need it, whichever vendor."""

    view: ChatView
    model: str
    stream: bool = False
    include_usage: bool = False
    #: Gemini ``streamGenerateContent`` without ``alt=sse``: one JSON array of chunks.
    array: bool = False
    #: The request asked to see the model's thinking (Gemini ``includeThoughts``,
    #: Ollama ``think``).
    thinking: bool = False


@dataclass(slots=True, frozen=True)
class _Shape:
    """Everything a formatter needs besides the plan."""

    chat: _ChatRead
    n: int
    created: int
    cached: int
    request_id: str
    scenario: Scenario
    wall: float

    @property
    def model(self) -> str:
        return self.chat.model


class _VendorFormat(abc.ABC):
    """What differs between the vendors: error shapes, headers, bodies and streams."""

    name: _Wire
    #: The response header carrying the request id ("" for none).
    request_id_header: str = ""
    missing_auth_message: str = ""
    bad_json_message: str = ""
    #: 429 and other retry answers carry ``retry-after`` (and ``retry-after-ms``).
    retry_after_header: bool = True
    retry_after_ms_header: bool = False
    #: The vendor has a safety filter (the ``content_filter`` fault applies).
    has_filter: bool = True

    @abc.abstractmethod
    def authorized(self, record: RecordedRequest, route: _Route) -> bool: ...

    def auth_error(self) -> _RequestError:
        """The answer to a request without a usable key."""
        return _RequestError(401, self.missing_auth_message)

    @abc.abstractmethod
    def not_found_message(self, method: str, path: str) -> str: ...

    def unknown_url_reply(self, method: str, path: str, request_id: str) -> _Reply:
        return self.error_reply(
            _RequestError(404, self.not_found_message(method, path)), request_id
        )

    @abc.abstractmethod
    def error_body(self, error: _RequestError, request_id: str) -> Any: ...

    def error_reply(self, error: _RequestError, request_id: str) -> _Reply:
        return _json_reply(error.status, self.error_body(error, request_id), self, request_id)

    @abc.abstractmethod
    def fault_error(
        self, status: int, state: _ScenarioState, retry_after: float | None
    ) -> _RequestError:
        """The error a ``status`` fault answers, as the vendor words it."""
        ...

    @abc.abstractmethod
    def context_error(self, limit: int, requested: int) -> _RequestError: ...

    def prompt_blocked_error(self) -> _RequestError | None:
        """How a blocked prompt is refused when it is an HTTP error (Azure), else None."""
        return None

    def ratelimit_headers(
        self, state: _ScenarioState, wall: float, retry_after: float | None
    ) -> list[tuple[str, str]]:
        return []

    @abc.abstractmethod
    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> _Reply: ...

    def embeddings_reply(self, route: _Route, body: Any, request_id: str) -> tuple[_Reply, int]:
        raise _RequestError(404, self.not_found_message("POST", "embeddings"))

    @abc.abstractmethod
    def read_chat(self, route: _Route, body: Any, query: str) -> _ChatRead: ...

    def count_tokens_reply(self, tokens: int, request_id: str) -> _Reply:
        raise _RequestError(404, self.not_found_message("POST", "countTokens"))

    @abc.abstractmethod
    def chat_reply(self, plan: ReplyPlan, shape: _Shape) -> _Reply: ...

    @abc.abstractmethod
    def stream_reply(
        self, plan: ReplyPlan, shape: _Shape, extra: list[tuple[str, str]]
    ) -> _StreamReply: ...

    def stream_headers(
        self, request_id: str, extra: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("transfer-encoding", "chunked"),
        ]
        if self.request_id_header:
            headers.append((self.request_id_header, request_id))
        return headers + extra


_OPENAI_FINISH = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
}
_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_use": "tool_use",
    "content_filter": "refusal",
}
_AZURE_SAFE = {
    category: {"filtered": False, "severity": "safe"}
    for category in ("hate", "self_harm", "sexual", "violence")
}
_AZURE_FILTERED = {**_AZURE_SAFE, "violence": {"filtered": True, "severity": "high"}}


class _OpenAIFormat(_VendorFormat):
    name: _Wire = "openai"
    request_id_header = "x-request-id"
    retry_after_ms_header = True
    missing_auth_message = (
        "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    bad_json_message = (
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
        "but what was sent was not valid JSON.)"
    )

    def authorized(self, record: RecordedRequest, route: _Route) -> bool:
        return _bearer(record.headers)

    def not_found_message(self, method: str, path: str) -> str:
        return f"Invalid URL ({method} {path})"

    def error_body(self, error: _RequestError, request_id: str) -> Any:
        default = "server_error" if error.status >= 500 else "invalid_request_error"
        kind = _OPENAI_ERRORS.get(error.status, (default,))[0]
        return {
            "error": {
                "message": error.message,
                "type": kind,
                "param": error.param,
                "code": error.code,
            }
        }

    def fault_error(
        self, status: int, state: _ScenarioState, retry_after: float | None
    ) -> _RequestError:
        _, code, message = _OPENAI_ERRORS.get(status, ("", None, _phrase(status)))
        if status == 429:
            limit = state.scenario.ratelimit_requests
            message = (
                f"Rate limit reached for requests per min (RPM): Limit {limit}, Used {limit}, "
                f"Requested 1. Please try again in {_go_duration(retry_after or 0.0)}. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
        return _RequestError(status, message, code=code)

    def context_error(self, limit: int, requested: int) -> _RequestError:
        return _RequestError(
            400,
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {requested} tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )

    def ratelimit_headers(
        self, state: _ScenarioState, wall: float, retry_after: float | None
    ) -> list[tuple[str, str]]:
        requests, tokens = state.request_bucket, state.token_bucket
        remaining_requests = 0 if retry_after is not None else requests.remaining()
        reset_requests = retry_after if retry_after is not None else requests.reset_after()
        return [
            ("x-ratelimit-limit-requests", str(int(requests.limit))),
            ("x-ratelimit-limit-tokens", str(int(tokens.limit))),
            ("x-ratelimit-remaining-requests", str(remaining_requests)),
            ("x-ratelimit-remaining-tokens", str(tokens.remaining())),
            ("x-ratelimit-reset-requests", _go_duration(reset_requests)),
            ("x-ratelimit-reset-tokens", _go_duration(tokens.reset_after())),
        ]

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> _Reply:
        def entry(model: str) -> dict[str, Any]:
            return {"id": model, "object": "model", "created": 1700000000, "owned_by": "system"}

        if model_id:
            if model_id not in scenario.models:
                raise _RequestError(
                    404,
                    f"The model '{model_id}' does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
            return _json_reply(200, entry(model_id), self, request_id)
        obj = {"object": "list", "data": [entry(m) for m in scenario.models]}
        return _json_reply(200, obj, self, request_id)

    def _with_model(self, route: _Route, body: Any) -> Any:
        return body

    def embeddings_reply(self, route: _Route, body: Any, request_id: str) -> tuple[_Reply, int]:
        req = _convert_body(self._with_model(route, body), _OAEmbeddingRequest)
        return _openai_embeddings(req, request_id, self)

    def read_chat(self, route: _Route, body: Any, query: str) -> _ChatRead:
        oa = _convert_body(self._with_model(route, body), _OAChatRequest)
        if not oa.messages:
            raise _RequestError(400, "messages: must not be empty", param="messages")
        return _ChatRead(
            view=_openai_view(oa),
            model=oa.model,
            stream=bool(oa.stream),
            include_usage=bool(oa.stream_options and oa.stream_options.include_usage),
        )

    @staticmethod
    def _usage(plan: ReplyPlan, cached: int) -> dict[str, Any]:
        return {
            "prompt_tokens": plan.input_tokens,
            "completion_tokens": plan.output_tokens,
            "total_tokens": plan.input_tokens + plan.output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def chat_reply(self, plan: ReplyPlan, shape: _Shape) -> _Reply:
        n, scenario = shape.n, shape.scenario
        message: dict[str, Any] = {
            "role": "assistant",
            "content": plan.text if plan.text or plan.finish != "content_filter" else None,
            "refusal": None,
            "annotations": [],
        }
        if plan.tool_name is not None:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_fake{n:012d}",
                    "type": "function",
                    "function": {"name": plan.tool_name, "arguments": plan.text},
                }
            ]
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": _OPENAI_FINISH[plan.finish],
        }
        obj: dict[str, Any] = {
            "id": f"chatcmpl-fake{n:012d}",
            "object": "chat.completion",
            "created": shape.created,
            "model": shape.model,
            "choices": [choice],
            "usage": self._usage(plan, shape.cached),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        if scenario.azure_filter_chunks:
            filtered = plan.finish == "content_filter"
            choice["content_filter_results"] = _AZURE_FILTERED if filtered else _AZURE_SAFE
            obj["prompt_filter_results"] = [
                {"prompt_index": 0, "content_filter_results": _AZURE_SAFE}
            ]
        if scenario.usage_location == "x_groq":
            obj["x_groq"] = {"id": shape.request_id}
        return _json_reply(200, obj, self, shape.request_id)

    def stream_reply(
        self, plan: ReplyPlan, shape: _Shape, extra: list[tuple[str, str]]
    ) -> _StreamReply:
        n, scenario = shape.n, shape.scenario
        # Groq's shape: usage rides on the finish chunk, never in a separate chunk.
        groq = scenario.usage_location == "x_groq"
        include_usage = shape.chat.include_usage and not groq
        azure = scenario.azure_filter_chunks
        base: dict[str, Any] = {
            "id": f"chatcmpl-fake{n:012d}",
            "object": "chat.completion.chunk",
            "created": shape.created,
            "model": shape.model,
            "system_fingerprint": _FINGERPRINT,
        }
        if include_usage:
            base["usage"] = None

        def data(obj: dict[str, Any]) -> bytes:
            return b"data: " + _encode(obj) + b"\n\n"

        def event(delta: dict[str, Any], finish: str | None = None, **top: Any) -> bytes:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            if azure:
                filtered = finish == "content_filter"
                choice["content_filter_results"] = _AZURE_FILTERED if filtered else _AZURE_SAFE
            return data({**base, "choices": [choice], **top})

        if plan.tool_name is not None:
            call = {
                "index": 0,
                "id": f"call_fake{n:012d}",
                "type": "function",
                "function": {"name": plan.tool_name, "arguments": ""},
            }
            head = [
                event({"role": "assistant", "content": None, "tool_calls": [call], "refusal": None})
            ]
            content = [
                event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in plan.chunks
            ]
        else:
            head = [event({"role": "assistant", "content": "", "refusal": None})]
            content = [event({"content": piece}) for piece in plan.chunks]
        if azure:
            # Azure's first chunk: no choices, empty id and model, the prompt's filter.
            head.insert(
                0,
                data(
                    {
                        "choices": [],
                        "created": 0,
                        "id": "",
                        "model": "",
                        "object": "",
                        "prompt_filter_results": [
                            {"prompt_index": 0, "content_filter_results": _AZURE_SAFE}
                        ],
                    }
                ),
            )
        head[:0] = [b": OPENROUTER PROCESSING\n\n"] * scenario.openrouter_processing
        usage = self._usage(plan, shape.cached)
        finish = _OPENAI_FINISH[plan.finish]
        if groq:
            x_groq = {"id": shape.request_id, "usage": {**usage, "queue_time": 0.001}}
            tail = [event({}, finish, x_groq=x_groq)]
        else:
            tail = [event({}, finish)]
        if include_usage:
            tail.append(data({**base, "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        error = {
            "error": {
                "message": _OPENAI_ERRORS[500][2],
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }

        def error_chunk(status: int) -> bytes:
            # OpenRouter: an error during generation arrives as a 200 chunk with a
            # numeric code and a choice that finished with "error".
            message = _OPENAI_ERRORS.get(status, ("", None, _phrase(status)))[2]
            choice = {
                "index": 0,
                "delta": {"content": ""},
                "logprobs": None,
                "finish_reason": "error",
            }
            obj = {
                **base,
                "error": {"code": status, "message": message or _phrase(status)},
                "choices": [choice],
            }
            return data(obj) + b"data: [DONE]\n\n"

        return _StreamReply(
            headers=self.stream_headers(shape.request_id, extra),
            head=head,
            content=content,
            tail=tail,
            error_event=data(error),
            malformed_event=(
                b'data: {"id":"' + base["id"].encode() + b'","object":"chat.completion.chunk",'
                b'"choices":[{"index":0,"delta":{"content":"\n\n'
            ),
            error_chunk=error_chunk,
        )


_AZURE_NO_VERSION = "The api-version query parameter (?api-version=) is required for all requests."
_AZURE_NO_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)


class _AzureFormat(_OpenAIFormat):
    """Azure OpenAI: OpenAI's bodies behind Azure's paths, keys and error envelope."""

    name: _Wire = "azure"
    missing_auth_message = _AZURE_NO_KEY

    def authorized(self, record: RecordedRequest, route: _Route) -> bool:
        if record.headers.get("api-key", "").strip():
            return True
        # The v1 API also takes the key (or an Entra token) as a bearer token.
        return not route.deployment and _bearer(record.headers)

    def auth_error(self) -> _RequestError:
        return _RequestError(401, self.missing_auth_message, code="401")

    def not_found_message(self, method: str, path: str) -> str:
        return "Resource not found"

    def error_body(self, error: _RequestError, request_id: str) -> Any:
        body: dict[str, Any] = {"code": error.code or str(error.status), "message": error.message}
        if error.param is not None:
            body["param"] = error.param
            body["type"] = super().error_body(error, request_id)["error"]["type"]
        if error.code == "content_filter":
            body["status"] = error.status
            body["innererror"] = {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": _AZURE_FILTERED,
            }
        return {"error": body}

    def fault_error(
        self, status: int, state: _ScenarioState, retry_after: float | None
    ) -> _RequestError:
        if status == 404:
            return _RequestError(
                404,
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
                code="DeploymentNotFound",
            )
        if status == 429:
            wait = math.ceil(retry_after or 1.0)
            return _RequestError(
                429,
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                "version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 "
                f"pricing tier. Please retry after {wait} seconds.",
                code="429",
            )
        return _RequestError(status, super().fault_error(status, state, retry_after).message)

    def prompt_blocked_error(self) -> _RequestError | None:
        return _RequestError(
            400,
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry.",
            param="prompt",
            code="content_filter",
        )

    def _with_model(self, route: _Route, body: Any) -> Any:
        # The dated API names the deployment in the path; a body "model" is ignored.
        if route.deployment and isinstance(body, dict):
            return {**body, "model": route.deployment}
        return body


def _bearer(headers: Mapping[str, str]) -> bool:
    auth = headers.get("authorization", "")
    return auth[:7].lower() == "bearer " and bool(auth[7:].strip())


class _AnthropicFormat(_VendorFormat):
    name: _Wire = "anthropic"
    request_id_header = "request-id"
    missing_auth_message = "x-api-key header is required"
    bad_json_message = "There was an error parsing the body of your request: invalid JSON"

    def authorized(self, record: RecordedRequest, route: _Route) -> bool:
        return bool(record.headers.get("x-api-key", "").strip()) or _bearer(record.headers)

    def not_found_message(self, method: str, path: str) -> str:
        return "Not Found"

    def error_body(self, error: _RequestError, request_id: str) -> Any:
        kind, _ = _ANTHROPIC_ERRORS.get(
            error.status, ("api_error" if error.status >= 500 else "invalid_request_error", "")
        )
        return {
            "type": "error",
            "error": {"type": kind, "message": error.message},
            "request_id": request_id,
        }

    def fault_error(
        self, status: int, state: _ScenarioState, retry_after: float | None
    ) -> _RequestError:
        return _RequestError(status, _ANTHROPIC_ERRORS.get(status, ("", _phrase(status)))[1])

    def context_error(self, limit: int, requested: int) -> _RequestError:
        return _RequestError(400, f"prompt is too long: {requested} tokens > {limit} maximum")

    def ratelimit_headers(
        self, state: _ScenarioState, wall: float, retry_after: float | None
    ) -> list[tuple[str, str]]:
        requests, tokens = state.request_bucket, state.token_bucket
        remaining_requests = 0 if retry_after is not None else requests.remaining()
        reset_requests = retry_after if retry_after is not None else requests.reset_after()
        return [
            ("anthropic-ratelimit-requests-limit", str(int(requests.limit))),
            ("anthropic-ratelimit-requests-remaining", str(remaining_requests)),
            ("anthropic-ratelimit-requests-reset", _rfc3339(wall + reset_requests)),
            ("anthropic-ratelimit-tokens-limit", str(int(tokens.limit))),
            ("anthropic-ratelimit-tokens-remaining", str(tokens.remaining())),
            ("anthropic-ratelimit-tokens-reset", _rfc3339(wall + tokens.reset_after())),
        ]

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> _Reply:
        def entry(model: str) -> dict[str, Any]:
            return {
                "type": "model",
                "id": model,
                "display_name": model,
                "created_at": "2024-01-01T00:00:00Z",
            }

        if model_id:
            if model_id not in scenario.models:
                raise _RequestError(404, f"model: {model_id}")
            return _json_reply(200, entry(model_id), self, request_id)
        models = scenario.models
        obj = {
            "data": [entry(m) for m in models],
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
        return _json_reply(200, obj, self, request_id)

    def read_chat(self, route: _Route, body: Any, query: str) -> _ChatRead:
        an = _convert_body(body, _AnRequest)
        if route.endpoint == "messages" and an.max_tokens is None:
            raise _RequestError(400, "max_tokens: Field required", param="max_tokens")
        return _ChatRead(view=_anthropic_view(an), model=an.model, stream=bool(an.stream))

    def count_tokens_reply(self, tokens: int, request_id: str) -> _Reply:
        return _json_reply(200, {"input_tokens": tokens}, self, request_id)

    @staticmethod
    def _usage(plan: ReplyPlan, cached: int, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": plan.input_tokens - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": output_tokens,
        }

    def chat_reply(self, plan: ReplyPlan, shape: _Shape) -> _Reply:
        n, cached = shape.n, shape.cached
        blocks: list[dict[str, Any]]
        if plan.tool_name is not None:
            blocks = [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{n:012d}",
                    "name": plan.tool_name,
                    "input": plan.tool_input,
                }
            ]
        elif plan.text or plan.finish != "content_filter":
            blocks = [{"type": "text", "text": plan.text}]
        else:
            blocks = []
        obj = {
            "id": f"msg_fake{n:012d}",
            "type": "message",
            "role": "assistant",
            "model": shape.model,
            "content": blocks,
            "stop_reason": _ANTHROPIC_STOP[plan.finish],
            "stop_sequence": plan.stop_sequence,
            "usage": {**self._usage(plan, cached, plan.output_tokens), "service_tier": "standard"},
        }
        return _json_reply(200, obj, self, shape.request_id)

    def stream_reply(
        self, plan: ReplyPlan, shape: _Shape, extra: list[tuple[str, str]]
    ) -> _StreamReply:
        n, cached = shape.n, shape.cached

        def event(name: bytes, obj: dict[str, Any]) -> bytes:
            return b"event: " + name + b"\ndata: " + _encode(obj) + b"\n\n"

        message: dict[str, Any] = {
            "id": f"msg_fake{n:012d}",
            "type": "message",
            "role": "assistant",
            "model": shape.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self._usage(plan, cached, 1), "service_tier": "standard"},
        }
        block: dict[str, Any]
        if plan.tool_name is not None:
            block = {
                "type": "tool_use",
                "id": f"toolu_fake{n:012d}",
                "name": plan.tool_name,
                "input": {},
            }

            def delta(piece: str) -> dict[str, Any]:
                return {"type": "input_json_delta", "partial_json": piece}
        else:
            block = {"type": "text", "text": ""}

            def delta(piece: str) -> dict[str, Any]:
                return {"type": "text_delta", "text": piece}

        head = [
            event(b"message_start", {"type": "message_start", "message": message}),
            event(b"ping", {"type": "ping"}),
            event(
                b"content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
        ]
        content = [
            event(
                b"content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": delta(piece)},
            )
            for piece in plan.chunks
        ]
        tail = [
            event(b"content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": _ANTHROPIC_STOP[plan.finish],
                        "stop_sequence": plan.stop_sequence,
                    },
                    "usage": self._usage(plan, cached, plan.output_tokens),
                },
            ),
            event(b"message_stop", {"type": "message_stop"}),
        ]
        error = {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": shape.request_id,
        }
        return _StreamReply(
            headers=self.stream_headers(shape.request_id, extra),
            head=head,
            content=content,
            tail=tail,
            error_event=event(b"error", error),
            malformed_event=(
                b"event: content_block_delta\n"
                b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
                b'"text":"\n\n'
            ),
        )


# --------------------------------------------------------------------------- Gemini

_GOOGLE_RPC = "type.googleapis.com/google.rpc."
_GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_GEMINI_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_GEMINI_FINISH = {
    "stop": "STOP",
    "stop_sequence": "STOP",
    "length": "MAX_TOKENS",
    "tool_use": "STOP",
    "content_filter": "SAFETY",
}
# Field names the fake accepts (proto JSON also takes them in snake_case).
_GEMINI_TOP = frozenset(
    {
        "model",
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
        "labels",
    }
)
_GEMINI_GENERATION = frozenset(
    {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "speechConfig",
        "thinkingConfig",
        "mediaResolution",
        "imageConfig",
    }
)
_GEMINI_TASK_TYPES = frozenset(
    {
        "TASK_TYPE_UNSPECIFIED",
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    }
)
_GEMINI_MAX_BATCH = 100
_SAFETY_BLOCKED = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
]
_THOUGHT = "Let me think about that."
_THOUGHT_TOKENS = 5


def _camel(name: str) -> str:
    head, *tail = name.split("_")
    return head + "".join(t[:1].upper() + t[1:] for t in tail)


def _camel_keys(obj: Any) -> dict[str, Any]:
    """A proto-JSON object with its (top-level) field names in camelCase."""
    return {_camel(k): v for k, v in obj.items()} if isinstance(obj, dict) else {}


def _gemini_invalid(message: str, field: str = "") -> _RequestError:
    violation = {"field": field, "description": message} if field else {"description": message}
    return _RequestError(
        400,
        message,
        details=[{"@type": _GOOGLE_RPC + "BadRequest", "fieldViolations": [violation]}],
    )


def _gemini_unknown(name: str, where: str = "") -> _RequestError:
    at = f" at '{where}'" if where else ""
    return _gemini_invalid(
        f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.', where
    )


def _base64_ok(data: Any, *, urlsafe: bool) -> bool:
    if not isinstance(data, str):
        return False
    if urlsafe:  # Google reads both alphabets, padded or not
        data = data.replace("-", "+").replace("_", "/")
        data += "=" * (-len(data) % 4)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


#: The fields of Gemini's OpenAPI-subset ``Schema`` (``responseSchema``).
_OPENAPI_SCHEMA_FIELDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)


def _check_openapi_schema(schema: Any, where: str) -> None:
    """Refuse what Gemini's proto ``Schema`` has no field for, as Gemini does (a 400):
    ``$ref``, ``$defs``, ``additionalProperties``, a ``type`` list..."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key not in _OPENAPI_SCHEMA_FIELDS:
            raise _gemini_unknown(key, where)
        if key == "type" and not isinstance(value, str):
            raise _gemini_invalid(
                f"Invalid value at '{where}.type': Proto field is not repeating, cannot "
                "start list.",
                f"{where}.type",
            )
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                _check_openapi_schema(sub, f"{where}.properties[{name}].value")
        elif key == "items":
            _check_openapi_schema(value, f"{where}.items")
        elif key == "anyOf" and isinstance(value, list):
            for i, sub in enumerate(value):
                _check_openapi_schema(sub, f"{where}.any_of[{i}]")


def _lower_types(schema: Any) -> Any:
    """An OpenAPI-subset schema ("OBJECT", "STRING") with JSON Schema's lower-case types."""
    if isinstance(schema, dict):
        out = {k: _lower_types(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = out["type"].lower()
        return out
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


def _gemini_result_text(response: Any) -> str:
    if isinstance(response, dict):
        for key in ("output", "result", "content", "error"):
            value = response.get(key)
            if isinstance(value, str):
                return value
    return _encode(response).decode()


def _gemini_text(parts: Any) -> str:
    if not isinstance(parts, list):
        return ""
    return " ".join(
        str(p["text"]) for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _gemini_view(body: Any) -> tuple[ChatView, bool]:
    """Read and check a ``generateContent`` body the way Gemini does; (view, thinking).

    The checks are the traps real adapters fall into: unknown (e.g. OpenAI-style)
    field names, roles other than ``user``/``model``, empty parts, arguments or
    responses that are not objects, ``data:`` URLs where base64 belongs, a schema
    without ``responseMimeType``, and function responses that do not answer the
    previous turn's calls one for one.
    """
    if not isinstance(body, dict):
        raise _gemini_invalid("Invalid JSON payload received. Expected an object.")
    for key in body:
        if _camel(key) not in _GEMINI_TOP:
            raise _gemini_unknown(key)
    top = _camel_keys(body)
    raw_generation = top.get("generationConfig") or {}
    if not isinstance(raw_generation, dict):
        raise _gemini_invalid("Invalid value at 'generation_config'", "generation_config")
    for key in raw_generation:
        if _camel(key) not in _GEMINI_GENERATION:
            raise _gemini_unknown(key, "generation_config")
    generation = _camel_keys(raw_generation)
    contents = top.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _gemini_invalid("* GenerateContentRequest.contents: contents is not specified\n")

    chars = 0
    n_messages = 0
    system = _camel_keys(top.get("systemInstruction"))
    if system:
        chars += len(_gemini_text(system.get("parts")))
        n_messages += 1
    last_user = ""
    tool_result: str | None = None
    mentions: str | None = None
    open_calls: int | None = None  # calls made by the previous (model) turn
    for i, raw_content in enumerate(contents):
        content = _camel_keys(raw_content)
        role = content.get("role", "user")
        if role not in ("user", "model", "function", "tool"):
            raise _gemini_invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _gemini_invalid(
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )
        calls = 0
        results: list[str] = []
        texts: list[str] = []
        for j, raw_part in enumerate(parts):
            part = _camel_keys(raw_part)
            where = f"contents[{i}].parts[{j}]"
            if isinstance(part.get("text"), str):
                if not part.get("thought"):
                    texts.append(part["text"])
            elif "inlineData" in part:
                inline = _camel_keys(part["inlineData"])
                if not isinstance(inline.get("mimeType"), str):
                    raise _gemini_invalid(
                        f"* GenerateContentRequest.{where}.inline_data.mime_type: "
                        "mime_type is not specified\n"
                    )
                if not _base64_ok(inline.get("data"), urlsafe=True):
                    shown = str(inline.get("data"))[:40]
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), "
                        f'Base64 decoding failed for "{shown}"',
                        f"{where}.inline_data.data",
                    )
            elif "functionCall" in part:
                call = _camel_keys(part["functionCall"])
                args = call.get("args", {})
                if not isinstance(args, dict):
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.function_call.args' "
                        f"(type.googleapis.com/google.protobuf.Struct), {_encode(args).decode()}",
                        f"{where}.function_call.args",
                    )
                if not call.get("name"):
                    raise _gemini_invalid(
                        f"* GenerateContentRequest.{where}.function_call.name: "
                        "name is not specified\n"
                    )
                calls += 1
                chars += len(_encode(args))
            elif "functionResponse" in part:
                response = _camel_keys(part["functionResponse"]).get("response", {})
                if not isinstance(response, dict):
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.function_response.response' "
                        "(type.googleapis.com/google.protobuf.Struct)",
                        f"{where}.function_response.response",
                    )
                results.append(_gemini_result_text(response))
            elif "fileData" not in part:
                raise _gemini_invalid(
                    f"* GenerateContentRequest.{where}.data: required oneof field 'data' "
                    "must have one initialized field\n"
                )
        if open_calls is not None and len(results) != open_calls:
            raise _gemini_invalid(
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn."
            )
        if open_calls is None and results:
            raise _gemini_invalid(
                "Please ensure that function response turn comes immediately after a "
                "function call turn."
            )
        open_calls = calls if role == "model" and calls else None
        text = " ".join(texts)
        chars += len(text) + sum(len(r) for r in results)
        n_messages += 1
        if role == "model":
            tool_result = mentions = None
        else:
            if text or not results:
                last_user = text
            tool_result = " ".join(results) if results else None
            mentions = text if not results else None

    tools: list[OfferedTool] = []
    for raw_tool in top.get("tools") or ():
        for raw_decl in _camel_keys(raw_tool).get("functionDeclarations") or ():
            decl = _camel_keys(raw_decl)
            schema = decl.get("parametersJsonSchema")
            if schema is None:
                schema = _lower_types(decl.get("parameters") or {})
            tools.append(OfferedTool(str(decl.get("name", "")), schema))
    calling = _camel_keys(_camel_keys(top.get("toolConfig")).get("functionCallingConfig"))
    mode = str(calling.get("mode", "AUTO")).upper()
    allowed = calling.get("allowedFunctionNames") or []
    if allowed and mode not in ("ANY", "VALIDATED"):
        raise _gemini_invalid(
            "allowed_function_names should only be set when the function calling mode is ANY"
        )
    choice = {"NONE": "none", "ANY": "required"}.get(mode, "auto")
    forced: str | None = None
    if mode == "ANY" and len(allowed) == 1:
        choice, forced = "tool", str(allowed[0])
    elif mode == "ANY" and allowed:
        tools = [t for t in tools if t.name in allowed]

    mime = generation.get("responseMimeType", "text/plain")
    json_schema = generation.get("responseJsonSchema")
    legacy_schema = generation.get("responseSchema")
    if json_schema is not None and legacy_schema is not None:
        raise _gemini_invalid("response_schema and response_json_schema cannot both be set.")
    if (json_schema is not None or legacy_schema is not None) and mime not in (
        "application/json",
        "text/x.enum",
    ):
        raise _gemini_invalid(
            "* GenerateContentRequest.generation_config.response_mime_type: "
            "response_mime_type must be application/json when a response schema is set.\n"
        )
    if legacy_schema is not None:
        _check_openapi_schema(legacy_schema, "generation_config.response_schema")
    schema = json_schema if json_schema is not None else _lower_types(legacy_schema)
    thinking = _camel_keys(generation.get("thinkingConfig"))
    max_tokens = generation.get("maxOutputTokens")
    view = ChatView(
        last_user_text=last_user,
        tool_result=tool_result,
        mentions=mentions,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        schema=schema if isinstance(schema, dict) else None,
        json_mode=mime == "application/json" and schema is None,
        stop=[str(s) for s in generation.get("stopSequences") or ()],
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        input_tokens=estimate_input_tokens(chars, n_messages),
    )
    return view, bool(thinking.get("includeThoughts"))


def _gemini_embed_one(request: Any, where: str) -> tuple[list[float], int]:
    req = _camel_keys(request)
    content = _camel_keys(req.get("content"))
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _gemini_invalid(f"* {where}.content: content is not specified\n")
    task = req.get("taskType")
    if task is not None and task not in _GEMINI_TASK_TYPES:
        raise _gemini_invalid(f"Invalid value at 'task_type', \"{task}\"", "task_type")
    dimensions = req.get("outputDimensionality", 8)
    if not isinstance(dimensions, int) or dimensions < 1:
        raise _gemini_invalid(f"* {where}.output_dimensionality: must be positive\n")
    text = "".join(
        str(p["text"]) for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )
    return _embedding(text.encode(), dimensions), estimate_text_tokens(len(text))


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _page_offset(token: str) -> int:
    try:
        kind, _, number = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "offset" and number.isdigit():
            return int(number)
    except (binascii.Error, ValueError):
        pass
    raise _gemini_invalid("Invalid page token.", "page_token")


class _GeminiFormat(_VendorFormat):
    """The Generative Language API (v1beta): camelCase JSON, ``google.rpc`` errors."""

    name: _Wire = "gemini"
    # Gemini says when to come back in a RetryInfo detail, not in a header.
    retry_after_header = False
    missing_auth_message = "API key not valid. Please pass a valid API key."
    bad_json_message = "Invalid JSON payload received. Unexpected token."

    def authorized(self, record: RecordedRequest, route: _Route) -> bool:
        key = record.headers.get("x-goog-api-key") or _query_value(record.query, "key") or ""
        return bool(key.strip())

    def auth_error(self) -> _RequestError:
        # Not a 401: a bad (or missing) key is a 400 INVALID_ARGUMENT with this reason.
        return _RequestError(
            400,
            self.missing_auth_message,
            details=[
                {
                    "@type": _GOOGLE_RPC + "ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
                {
                    "@type": _GOOGLE_RPC + "LocalizedMessage",
                    "locale": "en-US",
                    "message": self.missing_auth_message,
                },
            ],
        )

    def not_found_message(self, method: str, path: str) -> str:
        return f"The requested URL {path} was not found on this server."

    def unknown_url_reply(self, method: str, path: str, request_id: str) -> _Reply:
        # Google's front end answers an unknown path with an HTML page, not JSON.
        html = (
            "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
            "  <title>Error 404 (Not Found)!!1</title>\n"
            "  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n"
            f"  <p>The requested URL <code>{path}</code> was not found on this server.  "
            "<ins>That\u2019s all we know.</ins>\n"
        )
        return _text_reply(404, "text/html; charset=UTF-8", html)

    def error_body(self, error: _RequestError, request_id: str) -> Any:
        return {
            "error": {
                "code": error.status,
                "message": error.message,
                "status": _GRPC_STATUS.get(error.status, "UNKNOWN"),
                "details": error.details or [],
            }
        }

    def fault_error(
        self, status: int, state: _ScenarioState, retry_after: float | None
    ) -> _RequestError:
        if status != 429:
            return _RequestError(status, _GEMINI_MESSAGES.get(status, _phrase(status)))
        delay = retry_after if retry_after is not None else 1.0
        violation = {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global"},
            "quotaValue": str(state.scenario.ratelimit_requests),
        }
        return _RequestError(
            429,
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, head to: "
            "https://ai.google.dev/gemini-api/docs/rate-limits.",
            details=[
                {"@type": _GOOGLE_RPC + "QuotaFailure", "violations": [violation]},
                {
                    "@type": _GOOGLE_RPC + "Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {"@type": _GOOGLE_RPC + "RetryInfo", "retryDelay": f"{_format_seconds(delay)}s"},
            ],
        )

    def context_error(self, limit: int, requested: int) -> _RequestError:
        return _RequestError(
            400,
            f"The input token count ({requested}) exceeds the maximum number of tokens "
            f"allowed ({limit}).",
        )

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> _Reply:
        def entry(model: str) -> dict[str, Any]:
            return {
                "name": f"models/{model}",
                "version": "001",
                "displayName": model,
                "description": "A model of the fake upstream.",
                "inputTokenLimit": scenario.context_window or 1_048_576,
                "outputTokenLimit": 65_536,
                "supportedGenerationMethods": [
                    "generateContent",
                    "countTokens",
                    "embedContent",
                    "batchEmbedContents",
                ],
                "temperature": 1,
                "topP": 0.95,
                "topK": 64,
                "maxTemperature": 2,
            }

        if model_id:
            name = model_id.removeprefix("models/")
            if name not in scenario.models:
                raise _RequestError(
                    404,
                    f"models/{name} is not found for API version v1beta, or is not supported "
                    "for get. Call ListModels to see the list of available models and their "
                    "supported methods.",
                )
            return _json_reply(200, entry(name), self, request_id)
        raw_size = _query_value(query, "pageSize") or ""
        size = int(raw_size) if raw_size.isdigit() and int(raw_size) > 0 else 50
        size = min(size, 1000)
        token = _query_value(query, "pageToken") or ""
        start = _page_offset(token) if token else 0
        obj: dict[str, Any] = {"models": [entry(m) for m in scenario.models[start : start + size]]}
        if start + size < len(scenario.models):
            obj["nextPageToken"] = _page_token(start + size)
        return _json_reply(200, obj, self, request_id)

    def embeddings_reply(self, route: _Route, body: Any, request_id: str) -> tuple[_Reply, int]:
        if route.endpoint == "embed_content":
            vector, tokens = _gemini_embed_one(body, "EmbedContentRequest")
            return _json_reply(200, {"embedding": {"values": vector}}, self, request_id), tokens
        requests = _camel_keys(body).get("requests")
        if not isinstance(requests, list) or not requests:
            raise _gemini_invalid(
                "* BatchEmbedContentsRequest.requests: requests is not specified\n"
            )
        if len(requests) > _GEMINI_MAX_BATCH:
            raise _gemini_invalid(
                "* BatchEmbedContentsRequest.requests: at most "
                f"{_GEMINI_MAX_BATCH} requests can be in one batch\n"
            )
        model = f"models/{route.model_id.removeprefix('models/')}"
        embeddings: list[dict[str, Any]] = []
        total = 0
        for i, request in enumerate(requests):
            where = f"BatchEmbedContentsRequest.requests[{i}]"
            named = _camel_keys(request).get("model")
            if named != model:
                raise _gemini_invalid(
                    f"* {where}.model: the model of each request must be the batch's model "
                    f"({model}), got {_encode(named).decode()}\n"
                )
            vector, tokens = _gemini_embed_one(request, where)
            embeddings.append({"values": vector})
            total += tokens
        return _json_reply(200, {"embeddings": embeddings}, self, request_id), total

    def read_chat(self, route: _Route, body: Any, query: str) -> _ChatRead:
        view, thinking = _gemini_view(body)
        streaming = route.endpoint == "stream_generate"
        sse = _query_value(query, "alt") == "sse"
        return _ChatRead(
            view=view,
            model=route.model_id.removeprefix("models/"),
            stream=streaming and sse,
            array=streaming and not sse,
            thinking=thinking,
        )

    def count_tokens_reply(self, tokens: int, request_id: str) -> _Reply:
        details = [{"modality": "TEXT", "tokenCount": tokens}]
        obj = {"totalTokens": tokens, "promptTokensDetails": details}
        return _json_reply(200, obj, self, request_id)

    @staticmethod
    def _usage(plan: ReplyPlan, cached: int, output: int, thoughts: int) -> dict[str, Any]:
        # proto3 JSON leaves zero counts out: candidatesTokenCount may well be missing.
        usage: dict[str, Any] = {"promptTokenCount": plan.input_tokens}
        if output:
            usage["candidatesTokenCount"] = output
        usage["totalTokenCount"] = plan.input_tokens + output + thoughts
        if cached:
            usage["cachedContentTokenCount"] = cached
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": plan.input_tokens}]
        return usage

    def _chunks(
        self, plan: ReplyPlan, shape: _Shape
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The stream's responses: before, during and after the content."""
        base = {"modelVersion": shape.model, "responseId": f"fake{shape.n:012d}"}
        cached = shape.cached
        if plan.prompt_blocked:
            feedback = {"blockReason": "SAFETY", "safetyRatings": _SAFETY_BLOCKED}
            usage = self._usage(plan, cached, 0, 0)
            return [], [], [{"promptFeedback": feedback, "usageMetadata": usage, **base}]
        thoughts = _THOUGHT_TOKENS if shape.chat.thinking else 0

        def response(parts: list[dict[str, Any]], output: int) -> dict[str, Any]:
            candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
            usage = self._usage(plan, cached, output, thoughts)
            return {"candidates": [candidate], "usageMetadata": usage, **base}

        head = [response([{"text": _THOUGHT, "thought": True}], 0)] if thoughts else []
        if plan.tool_name is not None:
            content = [response([self._call_part(plan, shape)], plan.output_tokens)]
        else:
            content = [
                response([{"text": piece}], min(i + 1, plan.output_tokens))
                for i, piece in enumerate(plan.chunks)
            ]
        final: dict[str, Any] = {"finishReason": _GEMINI_FINISH[plan.finish], "index": 0}
        if plan.finish == "content_filter":
            final["safetyRatings"] = _SAFETY_BLOCKED
        else:
            final = {"content": {"parts": [{"text": ""}], "role": "model"}, **final}
        usage = self._usage(plan, cached, plan.output_tokens, thoughts)
        return head, content, [{"candidates": [final], "usageMetadata": usage, **base}]

    @staticmethod
    def _call_part(plan: ReplyPlan, shape: _Shape) -> dict[str, Any]:
        # Gemini 3 signs its function calls; the signature must come back unchanged.
        signature = base64.b64encode(f"fake-signature-{shape.n}".encode()).decode()
        call = {"name": plan.tool_name, "args": plan.tool_input}
        return {"functionCall": call, "thoughtSignature": signature}

    def chat_reply(self, plan: ReplyPlan, shape: _Shape) -> _Reply:
        if shape.chat.array:
            head, content, tail = self._chunks(plan, shape)
            return _json_reply(200, head + content + tail, self, shape.request_id)
        base = {"modelVersion": shape.model, "responseId": f"fake{shape.n:012d}"}
        if plan.prompt_blocked:
            feedback = {"blockReason": "SAFETY", "safetyRatings": _SAFETY_BLOCKED}
            usage = self._usage(plan, shape.cached, 0, 0)
            obj: dict[str, Any] = {"promptFeedback": feedback, "usageMetadata": usage, **base}
            return _json_reply(200, obj, self, shape.request_id)
        thoughts = _THOUGHT_TOKENS if shape.chat.thinking else 0
        parts: list[dict[str, Any]] = [{"text": _THOUGHT, "thought": True}] if thoughts else []
        if plan.tool_name is not None:
            parts.append(self._call_part(plan, shape))
        elif plan.text or plan.finish != "content_filter":
            parts.append({"text": plan.text})
        candidate: dict[str, Any] = {}
        if parts:
            candidate["content"] = {"parts": parts, "role": "model"}
        candidate["finishReason"] = _GEMINI_FINISH[plan.finish]
        candidate["index"] = 0
        if plan.finish == "content_filter":
            candidate["safetyRatings"] = _SAFETY_BLOCKED
        usage = self._usage(plan, shape.cached, plan.output_tokens, thoughts)
        obj = {"candidates": [candidate], "usageMetadata": usage, **base}
        return _json_reply(200, obj, self, shape.request_id)

    def stream_reply(
        self, plan: ReplyPlan, shape: _Shape, extra: list[tuple[str, str]]
    ) -> _StreamReply:
        def event(obj: dict[str, Any]) -> bytes:
            # Gemini frames its SSE with CRLF line ends and sends no terminator.
            return b"data: " + _encode(obj) + b"\r\n\r\n"

        head, content, tail = self._chunks(plan, shape)
        error = {"code": 500, "message": _GEMINI_MESSAGES[500], "status": "INTERNAL"}
        return _StreamReply(
            headers=self.stream_headers(shape.request_id, extra),
            head=[event(o) for o in head],
            content=[event(o) for o in content],
            tail=[event(o) for o in tail],
            error_event=event({"error": error}),
            malformed_event=b'data: {"candidates": [{"content": {"parts": [{"text": "\r\n\r\n',
        )

    def stream_headers(
        self, request_id: str, extra: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        return [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("x-content-type-options", "nosniff"),
            *extra,
        ]


# --------------------------------------------------------------------------- Ollama

_OLLAMA_ERRORS = {
    400: "invalid request",
    429: "too many requests",
    500: "an error was encountered while running the model",
    502: "bad gateway",
    503: "server busy, please try again.  maximum pending requests exceeded",
}
_OLLAMA_DONE = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_use": "stop",
    "content_filter": "stop",
}
_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _go_base64_error(data: Any) -> int | None:
    """Where Go's strict standard base64 decoder fails on ``data`` (None if it does not)."""
    if not isinstance(data, str):
        return 0
    for index, char in enumerate(data):
        if char not in _B64_ALPHABET:
            return index
    return None if _base64_ok(data, urlsafe=False) else len(data)


def _rfc3339_nano(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _ollama_view(body: Any) -> tuple[ChatView, str, bool, bool]:
    """Read and check an ``/api/chat`` body as Ollama does; (view, model, stream, think).

    The traps: ``stream`` defaults to true; ``content`` must be a string (no content
    parts: images go in ``images`` as bare base64, a ``data:`` URL fails to decode);
    tool-call ``arguments`` must be an object, not a JSON string.
    """
    if not isinstance(body, dict):
        raise _RequestError(400, "json: cannot unmarshal into Go value of type api.ChatRequest")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _RequestError(400, "model is required")
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise _RequestError(
            400, "json: cannot unmarshal object into Go struct field ChatRequest.messages"
        )
    chars = 0
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            raise _RequestError(400, "json: cannot unmarshal into Go value of type api.Message")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise _RequestError(
                400,
                "json: cannot unmarshal array into Go struct field Message.messages.content "
                "of type string",
            )
        for image in message.get("images") or ():
            at = _go_base64_error(image)
            if at is not None:
                raise _RequestError(400, f"illegal base64 data at input byte {at}")
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments", {}) if isinstance(function, dict) else None
            if not isinstance(arguments, dict):
                raise _RequestError(
                    400,
                    "json: cannot unmarshal string into Go struct field "
                    "ToolCallFunction.messages.tool_calls.function.arguments of type "
                    "api.ToolCallFunctionArguments",
                )
            chars += len(_encode(arguments))
        chars += len(content)
        if message.get("role") == "user":
            last_user = content
    last = messages[-1] if messages else {}
    tools: list[OfferedTool] = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            tools.append(
                OfferedTool(str(function.get("name", "")), function.get("parameters") or {})
            )
    fmt = body.get("format")
    options = body.get("options") or {}
    max_tokens = options.get("num_predict") if isinstance(options, dict) else None
    stop = options.get("stop") if isinstance(options, dict) else None
    view = ChatView(
        last_user_text=last_user,
        tool_result=str(last.get("content") or "") if last.get("role") == "tool" else None,
        mentions=str(last.get("content") or "") if last.get("role") == "user" else None,
        tools=tools,
        schema=fmt if isinstance(fmt, dict) else None,
        json_mode=fmt == "json",
        stop=[str(s) for s in stop or ()],
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
        input_tokens=estimate_input_tokens(chars, len(messages)),
    )
    return view, model, body.get("stream", True) is not False, bool(body.get("think"))


class _OllamaFormat(_VendorFormat):
    """Ollama's native API: NDJSON streams by default, ``{"error": "..."}`` bodies."""

    name: _Wire = "ollama"
    has_filter = False
    bad_json_message = "invalid character looking for beginning of value"

    def authorized(self, record: RecordedRequest, route: _Route) -> bool:
        return True  # a local Ollama asks for no key

    def not_found_message(self, method: str, path: str) -> str:
        return "404 page not found"

    def unknown_url_reply(self, method: str, path: str, request_id: str) -> _Reply:
        return _text_reply(404, "text/plain", "404 page not found")

    def error_body(self, error: _RequestError, request_id: str) -> Any:
        return {"error": error.message}

    def fault_error(
        self, status: int, state: _ScenarioState, retry_after: float | None
    ) -> _RequestError:
        if status == 404:
            model = state.scenario.models[0] if state.scenario.models else "fake-model"
            return _RequestError(404, f'model "{model}" not found, try pulling it first')
        return _RequestError(status, _OLLAMA_ERRORS.get(status, _phrase(status).lower()))

    def context_error(self, limit: int, requested: int) -> _RequestError:
        return _RequestError(400, "the input length exceeds the context length")

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> _Reply:
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }
        models = [
            {
                "name": model,
                "model": model,
                "modified_at": "2025-01-01T00:00:00.000000000Z",
                "size": 2_019_393_189,
                "digest": hashlib.sha256(model.encode()).hexdigest(),
                "details": details,
            }
            for model in scenario.models
        ]
        return _json_reply(200, {"models": models}, self, request_id)

    def embeddings_reply(self, route: _Route, body: Any, request_id: str) -> tuple[_Reply, int]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _RequestError(400, "model is required")
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise _RequestError(400, "invalid input type")
        dimensions = body.get("dimensions") or 8
        if not isinstance(dimensions, int) or dimensions < 1:
            raise _RequestError(400, "dimensions must be a positive integer")
        tokens = sum(estimate_text_tokens(len(text)) for text in inputs)
        obj = {
            "model": body["model"],
            "embeddings": [_embedding(text.encode(), dimensions) for text in inputs],
            "total_duration": 14_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": tokens,
        }
        return _json_reply(200, obj, self, request_id), tokens

    def read_chat(self, route: _Route, body: Any, query: str) -> _ChatRead:
        view, model, stream, think = _ollama_view(body)
        return _ChatRead(view=view, model=model, stream=stream, thinking=think)

    @staticmethod
    def _metrics(plan: ReplyPlan, cached: int) -> dict[str, Any]:
        # Only the evaluated (uncached) prompt is counted; zero counts are left out.
        evaluated = plan.input_tokens - cached
        metrics: dict[str, Any] = {
            "total_duration": 1_000_000 * (5 + plan.output_tokens),
            "load_duration": 1_000_000,
        }
        if evaluated:
            metrics["prompt_eval_count"] = evaluated
        metrics["prompt_eval_duration"] = 100_000 * max(1, evaluated)
        if plan.output_tokens:
            metrics["eval_count"] = plan.output_tokens
        metrics["eval_duration"] = 1_000_000 * plan.output_tokens
        return metrics

    @staticmethod
    def _tool_calls(plan: ReplyPlan) -> list[dict[str, Any]]:
        function = {"index": 0, "name": plan.tool_name, "arguments": plan.tool_input}
        return [{"function": function}]

    def chat_reply(self, plan: ReplyPlan, shape: _Shape) -> _Reply:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if shape.chat.thinking:
            message["thinking"] = _THOUGHT
        if plan.tool_name is not None:
            message["content"] = ""
            message["tool_calls"] = self._tool_calls(plan)
        obj = {
            "model": shape.model,
            "created_at": _rfc3339_nano(shape.wall),
            "message": message,
            "done_reason": _OLLAMA_DONE[plan.finish],
            "done": True,
            **self._metrics(plan, shape.cached),
        }
        return _json_reply(200, obj, self, shape.request_id)

    def stream_reply(
        self, plan: ReplyPlan, shape: _Shape, extra: list[tuple[str, str]]
    ) -> _StreamReply:
        created_at = _rfc3339_nano(shape.wall)

        def line(obj: dict[str, Any]) -> bytes:
            return _encode(obj) + b"\n"

        def chunk(message: dict[str, Any]) -> bytes:
            return line(
                {
                    "model": shape.model,
                    "created_at": created_at,
                    "message": {"role": "assistant", **message},
                    "done": False,
                }
            )

        head = [chunk({"content": "", "thinking": _THOUGHT})] if shape.chat.thinking else []
        if plan.tool_name is not None:
            content = [chunk({"content": "", "tool_calls": self._tool_calls(plan)})]
        else:
            content = [chunk({"content": piece}) for piece in plan.chunks]
        done = {
            "model": shape.model,
            "created_at": created_at,
            "message": {"role": "assistant", "content": ""},
            "done_reason": _OLLAMA_DONE[plan.finish],
            "done": True,
            **self._metrics(plan, shape.cached),
        }
        return _StreamReply(
            headers=self.stream_headers(shape.request_id, extra),
            head=head,
            content=content,
            tail=[line(done)],
            error_event=line(
                {"error": "an error was encountered while running the model: unexpected EOF"}
            ),
            malformed_event=(
                b'{"model":"'
                + shape.model.encode()
                + b'","created_at":"'
                + created_at.encode()
                + b'","message":{"role":"assistant","content":"\n'
            ),
        )

    def stream_headers(
        self, request_id: str, extra: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        return [("content-type", "application/x-ndjson"), ("transfer-encoding", "chunked"), *extra]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


_OPENAI = _OpenAIFormat()
_ANTHROPIC = _AnthropicFormat()
_FORMATS: dict[_Wire, _VendorFormat] = {
    "openai": _OPENAI,
    "anthropic": _ANTHROPIC,
    "gemini": _GeminiFormat(),
    "ollama": _OllamaFormat(),
    "azure": _AzureFormat(),
}


# --------------------------------------------------------------------------- entry points


@asynccontextmanager
async def open_fake_upstream(
    scenarios: Mapping[str, Scenario] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    record: bool = True,
) -> AsyncIterator[FakeUpstream]:
    """Start a fake upstream (every wire format above) in a nursery of its own.

    Args:
        scenarios: behaviours by name; any other name in a URL gets ``Scenario()``.
        host: the address to listen on.
        port: the port; 0 picks a free one (see :attr:`FakeUpstream.url`).
        seed: seeds every scenario's random streams (faults, latency).
        record: keep every request in :attr:`FakeUpstream.requests` (turn off for long
            benchmarks; the counters are kept either way).

    On exit the server stops and every connection is closed.

    Example::

        async with open_fake_upstream({"flaky": Scenario(faults=[Fault("reset", rate=0.2)])}) as up:
            async with httpx.AsyncClient() as client:
                r = await client.post(
                    up.base_url("flaky", "openai") + "/chat/completions",
                    headers={"authorization": "Bearer sk-test"},
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
    """
    upstream = FakeUpstream(scenarios, seed=seed, record=record)
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, upstream._serve_connection, port, host=host)
        )
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        upstream.url = f"http://{shown}:{bound_port}"
        try:
            yield upstream
        except BaseException as exc:
            # Re-raised outside the nursery so a user's error is not wrapped in a group.
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None


async def serve_fake_upstream(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    scenarios: Mapping[str, Scenario] | None = None,
    seed: int = 0,
    task_status: trio.TaskStatus[FakeUpstream] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a fake upstream until cancelled; ``nursery.start`` returns the :class:`FakeUpstream`.

    Requests are not recorded (a long-running server would grow without bound).

    Example::

        upstream = await nursery.start(partial(serve_fake_upstream, port=8080))
        print("listening on", upstream.url)
    """
    async with open_fake_upstream(
        scenarios, host=host, port=port, seed=seed, record=False
    ) as upstream:
        task_status.started(upstream)
        await trio.sleep_forever()
