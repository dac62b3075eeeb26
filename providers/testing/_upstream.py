"""A fake OpenAI/Anthropic HTTP server on loopback, with scripted latency and faults.

:func:`open_fake_upstream` starts a trio HTTP/1.1 server (``h11`` over
``trio.serve_tcp``, real sockets, keep-alive) that answers the OpenAI Chat Completions,
Embeddings and Models endpoints and the Anthropic Messages and Models endpoints, in JSON
and as server-sent-event streams, faithfully enough that the vendors' official SDKs parse
every response, stream and error it sends.  Each URL starts with a scenario name that
selects a :class:`~._scenario.Scenario` (latency, streaming pace, reply, faults)::

    /{scenario}/v1/chat/completions     OpenAI          POST
    /{scenario}/v1/embeddings           OpenAI          POST
    /{scenario}/v1/messages             Anthropic       POST  (also /v1/messages/count_tokens)
    /{scenario}/v1/models[/{id}]        Anthropic if the request has an ``anthropic-version``
                                        or ``x-api-key`` header, else OpenAI           GET

Unknown scenario names behave like ``Scenario()`` (an instant echo); ``/v1/...`` without
a scenario is the scenario ``"default"``.  Every request is recorded
(:class:`RecordedRequest`), including how its exchange ended, so tests can prove that
cancelling a client call really closed its HTTP response.

One exchange, in order: record the request, pick the scenario's fault for this request
number, sample the latency, build the answer (validation errors included), sleep the
latency (racing a read on the socket, so a client that hangs up is noticed at once),
then send the answer, or inject the fault instead.
"""

from __future__ import annotations

import base64
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
from typing import Any, Literal, TypeAlias
from urllib.parse import quote, unquote

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
    plan_reply,
    select_fault,
)

__all__ = [
    "FakeUpstream",
    "RecordedRequest",
    "UpstreamStats",
    "open_fake_upstream",
    "serve_fake_upstream",
]

Vendor: TypeAlias = Literal["openai", "anthropic"]

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
        body: the decoded JSON body, or None (no body, or not JSON).
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


@dataclass(slots=True)
class _StreamReply:
    """A streamed 200: SSE events before, during and after the content, plus fault bodies."""

    headers: list[tuple[str, str]]
    head: list[bytes]
    content: list[bytes]
    tail: list[bytes]
    error_event: bytes
    malformed_event: bytes


_Answer: TypeAlias = _Reply | _StreamReply


class _RequestError(Exception):
    """A request the real API would reject: answered with the vendor's error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


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


@dataclass(slots=True)
class _Route:
    scenario: str
    vendor: Vendor
    endpoint: Literal[
        "chat", "embeddings", "messages", "count_tokens", "models", "model", "unknown"
    ]
    model_id: str = ""


def _route(method: str, path: str, headers: Mapping[str, str]) -> _Route:
    parts = path.split("/")
    # "/{scenario}/v1/..." -> ["", scenario, "v1", ...]; "/v1/..." -> scenario "default".
    if len(parts) > 1 and parts[1] == "v1":
        scenario, rest = "default", parts[1:]
    else:
        scenario, rest = unquote(parts[1]) if len(parts) > 1 else "", parts[2:]
    anthropic = _ANTHROPIC_VERSION_HEADER in headers or "x-api-key" in headers
    by_header: Vendor = "anthropic" if anthropic else "openai"
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

    def base_url(self, scenario: str, kind: Vendor) -> str:
        """The ``base_url`` to give a client for ``scenario`` in the ``kind`` wire format.

        OpenAI clients append ``/chat/completions``, so their base ends in ``/v1``;
        Anthropic clients append ``/v1/messages`` themselves.

        Example::

            openai.AsyncOpenAI(base_url=upstream.base_url("slow", "openai"), api_key="sk-x")
        """
        name = quote(scenario, safe="")
        if kind == "openai":
            return f"{self.url}/{name}/v1"
        if kind == "anthropic":
            return f"{self.url}/{name}"
        raise ValueError(f"unknown wire format {kind!r}; expected 'openai' or 'anthropic'")

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
            answer = self._answer(route, record, scenario, state, body, body_error)
            if fault is not None and not _applies(fault, answer):
                fault = None
            fault_reply: _Reply | None = None
            if fault is not None and (
                fault.kind == "status"
                or (fault.kind == "midstream_error" and isinstance(answer, _Reply))
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
        if fault is None:
            if delay > 0:
                await trio.sleep(delay)
            if isinstance(answer, _Reply):
                await self._send_reply(conn, record, answer)
            else:
                await self._send_stream(conn, record, answer, None, interval)
            record.outcome = "completed"
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
        elif fault_reply is not None:  # "status", or "midstream_error" without a stream
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
                if fault.kind == "midstream_error":
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
    ) -> _Answer:
        vendor = _OPENAI if route.vendor == "openai" else _ANTHROPIC
        request_id = f"req_fake{next(_ids):010d}"
        try:
            if route.endpoint == "unknown":
                raise _RequestError(404, vendor.not_found_message(record.method, record.path))
            if scenario.require_auth and not vendor.authorized(record.headers):
                raise _RequestError(401, vendor.missing_auth_message)
            if route.vendor == "anthropic" and _ANTHROPIC_VERSION_HEADER not in record.headers:
                raise _RequestError(400, "anthropic-version: header is required")
            if body_error:
                raise _RequestError(400, vendor.bad_json_message)
            return self._success(route, vendor, scenario, state, body, request_id)
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
    ) -> _Answer:
        now = trio.current_time()
        if route.endpoint in ("models", "model"):
            state.request_bucket.take(1, now)
            return vendor.models_reply(scenario, route.model_id, request_id, self._wall())
        if route.endpoint == "embeddings":
            req = _convert_body(body, _OAEmbeddingRequest)
            reply, tokens = _embeddings_reply(req, request_id)
            state.request_bucket.take(1, now)
            state.token_bucket.take(tokens, now)
            if scenario.ratelimit_headers:
                reply.headers += vendor.ratelimit_headers(state, self._wall(), None)
            return reply

        view: ChatView
        stream = False
        include_usage = False
        if route.endpoint == "chat":
            oa = _convert_body(body, _OAChatRequest)
            if not oa.messages:
                raise _RequestError(400, "messages: must not be empty", param="messages")
            view, model = _openai_view(oa), oa.model
            stream = bool(oa.stream)
            include_usage = bool(oa.stream_options and oa.stream_options.include_usage)
        else:
            an = _convert_body(body, _AnRequest)
            if route.endpoint == "messages" and an.max_tokens is None:
                raise _RequestError(400, "max_tokens: Field required", param="max_tokens")
            view, model = _anthropic_view(an), an.model
            stream = bool(an.stream)

        if route.endpoint == "count_tokens":
            return _json_reply(200, {"input_tokens": view.input_tokens}, vendor, request_id)
        window = scenario.context_window
        if window is not None and view.input_tokens > window:
            raise vendor.context_error(window, view.input_tokens)

        plan = plan_reply(view, scenario)
        state.request_bucket.take(1, now)
        state.token_bucket.take(plan.input_tokens + plan.output_tokens, now)
        extra = (
            vendor.ratelimit_headers(state, self._wall(), None)
            if scenario.ratelimit_headers
            else []
        )
        n = next(_ids)
        created = int(self._wall())
        cached = min(scenario.cached_tokens, plan.input_tokens)
        if stream:
            return vendor.stream_reply(
                plan, model, n, created, cached, include_usage, request_id, extra
            )
        reply = vendor.chat_reply(plan, model, n, created, cached, request_id)
        reply.headers += extra
        return reply

    def _status_fault(self, vendor_name: Vendor, fault: Fault, state: _ScenarioState) -> _Reply:
        vendor = _OPENAI if vendor_name == "openai" else _ANTHROPIC
        request_id = f"req_fake{next(_ids):010d}"
        status = fault.status
        retry_after = fault.retry_after
        if status == 429 and retry_after is None:
            retry_after = 1.0
        reply = vendor.error_reply(vendor.fault_error(status, state, retry_after), request_id)
        if retry_after is not None:
            reply.headers.append(("retry-after", _format_seconds(retry_after)))
            if vendor_name == "openai":
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


def _applies(fault: Fault, answer: _Answer) -> bool:
    """Faults that shape a body only strike answers that would have succeeded."""
    if fault.kind in ("status", "reset", "hang"):
        return True
    return isinstance(answer, _StreamReply) or answer.status < 400


def _json_reply(status: int, obj: Any, vendor: _VendorFormat, request_id: str) -> _Reply:
    body = _encode(obj)
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        (vendor.request_id_header, request_id),
    ]
    return _Reply(status, headers, body)


def _embeddings_reply(req: _OAEmbeddingRequest, request_id: str) -> tuple[_Reply, int]:
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
    return _json_reply(200, obj, _OPENAI, request_id), tokens


# --------------------------------------------------------------------------- wire formats


class _VendorFormat:
    """What differs between the vendors: error shapes, headers, bodies and streams."""

    name: Vendor
    request_id_header: str
    missing_auth_message: str
    bad_json_message: str

    def authorized(self, headers: Mapping[str, str]) -> bool:
        raise NotImplementedError

    def not_found_message(self, method: str, path: str) -> str:
        raise NotImplementedError

    def error_body(self, error: _RequestError, request_id: str) -> Any:
        raise NotImplementedError

    def error_reply(self, error: _RequestError, request_id: str) -> _Reply:
        return _json_reply(error.status, self.error_body(error, request_id), self, request_id)

    def fault_error(
        self, status: int, state: _ScenarioState, retry_after: float | None
    ) -> _RequestError:
        """The error a ``status`` fault answers, as the vendor words it."""
        raise NotImplementedError

    def context_error(self, limit: int, requested: int) -> _RequestError:
        raise NotImplementedError

    def ratelimit_headers(
        self, state: _ScenarioState, wall: float, retry_after: float | None
    ) -> list[tuple[str, str]]:
        raise NotImplementedError

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float
    ) -> _Reply:
        raise NotImplementedError

    def chat_reply(
        self, plan: ReplyPlan, model: str, n: int, created: int, cached: int, request_id: str
    ) -> _Reply:
        raise NotImplementedError

    def stream_reply(
        self,
        plan: ReplyPlan,
        model: str,
        n: int,
        created: int,
        cached: int,
        include_usage: bool,
        request_id: str,
        extra: list[tuple[str, str]],
    ) -> _StreamReply:
        raise NotImplementedError

    def stream_headers(
        self, request_id: str, extra: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        return [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("transfer-encoding", "chunked"),
            (self.request_id_header, request_id),
            *extra,
        ]


_OPENAI_FINISH = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_use": "tool_calls",
}
_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_use": "tool_use",
}


class _OpenAIFormat(_VendorFormat):
    name: Vendor = "openai"
    request_id_header = "x-request-id"
    missing_auth_message = (
        "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    bad_json_message = (
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
        "but what was sent was not valid JSON.)"
    )

    def authorized(self, headers: Mapping[str, str]) -> bool:
        auth = headers.get("authorization", "")
        return auth[:7].lower() == "bearer " and bool(auth[7:].strip())

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
        self, scenario: Scenario, model_id: str, request_id: str, wall: float
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

    def chat_reply(
        self, plan: ReplyPlan, model: str, n: int, created: int, cached: int, request_id: str
    ) -> _Reply:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": plan.text,
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
        obj = {
            "id": f"chatcmpl-fake{n:012d}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _OPENAI_FINISH[plan.finish],
                }
            ],
            "usage": self._usage(plan, cached),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        return _json_reply(200, obj, self, request_id)

    def stream_reply(
        self,
        plan: ReplyPlan,
        model: str,
        n: int,
        created: int,
        cached: int,
        include_usage: bool,
        request_id: str,
        extra: list[tuple[str, str]],
    ) -> _StreamReply:
        base: dict[str, Any] = {
            "id": f"chatcmpl-fake{n:012d}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": _FINGERPRINT,
        }
        if include_usage:
            base["usage"] = None

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + _encode({**base, "choices": [choice]}) + b"\n\n"

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
        tail = [event({}, _OPENAI_FINISH[plan.finish])]
        if include_usage:
            usage = {**base, "choices": [], "usage": self._usage(plan, cached)}
            tail.append(b"data: " + _encode(usage) + b"\n\n")
        tail.append(b"data: [DONE]\n\n")
        error = {
            "error": {
                "message": _OPENAI_ERRORS[500][2],
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        return _StreamReply(
            headers=self.stream_headers(request_id, extra),
            head=head,
            content=content,
            tail=tail,
            error_event=b"data: " + _encode(error) + b"\n\n",
            malformed_event=(
                b'data: {"id":"' + base["id"].encode() + b'","object":"chat.completion.chunk",'
                b'"choices":[{"index":0,"delta":{"content":"\n\n'
            ),
        )


class _AnthropicFormat(_VendorFormat):
    name: Vendor = "anthropic"
    request_id_header = "request-id"
    missing_auth_message = "x-api-key header is required"
    bad_json_message = "There was an error parsing the body of your request: invalid JSON"

    def authorized(self, headers: Mapping[str, str]) -> bool:
        if headers.get("x-api-key", "").strip():
            return True
        auth = headers.get("authorization", "")
        return auth[:7].lower() == "bearer " and bool(auth[7:].strip())

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
        self, scenario: Scenario, model_id: str, request_id: str, wall: float
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

    @staticmethod
    def _usage(plan: ReplyPlan, cached: int, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": plan.input_tokens - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": output_tokens,
        }

    def chat_reply(
        self, plan: ReplyPlan, model: str, n: int, created: int, cached: int, request_id: str
    ) -> _Reply:
        block: dict[str, Any]
        if plan.tool_name is not None:
            block = {
                "type": "tool_use",
                "id": f"toolu_fake{n:012d}",
                "name": plan.tool_name,
                "input": plan.tool_input,
            }
        else:
            block = {"type": "text", "text": plan.text}
        obj = {
            "id": f"msg_fake{n:012d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": _ANTHROPIC_STOP[plan.finish],
            "stop_sequence": plan.stop_sequence,
            "usage": {**self._usage(plan, cached, plan.output_tokens), "service_tier": "standard"},
        }
        return _json_reply(200, obj, self, request_id)

    def stream_reply(
        self,
        plan: ReplyPlan,
        model: str,
        n: int,
        created: int,
        cached: int,
        include_usage: bool,
        request_id: str,
        extra: list[tuple[str, str]],
    ) -> _StreamReply:
        def event(name: bytes, obj: dict[str, Any]) -> bytes:
            return b"event: " + name + b"\ndata: " + _encode(obj) + b"\n\n"

        message: dict[str, Any] = {
            "id": f"msg_fake{n:012d}",
            "type": "message",
            "role": "assistant",
            "model": model,
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
            "request_id": request_id,
        }
        return _StreamReply(
            headers=self.stream_headers(request_id, extra),
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


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


_OPENAI = _OpenAIFormat()
_ANTHROPIC = _AnthropicFormat()


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
    """Start a fake OpenAI/Anthropic server in a nursery of its own.

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
