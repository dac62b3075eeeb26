"""What every wire format of the fake upstream shares: the interface and its helpers.

A *format* (:class:`VendorFormat`) is one vendor's dialect: it decodes a request body
into a :class:`ChatRead` (with the same msgspec Structs :mod:`.._decode` reads), renders
a JSON answer (:meth:`VendorFormat.chat_reply`, ``models_reply``,
``embeddings_reply``...), a stream (:meth:`VendorFormat.stream_reply`: the events
before, during and after the content, so the server can pace them and inject faults
between them) and an error in the vendor's own shape (:meth:`VendorFormat.error_reply`).
The server (:mod:`.._server`) owns the connection, the routing of a path to a
:class:`Route`, the scenario's latency and faults, and the recording; it never builds a
body itself.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs

import msgspec

from .._records import ScenarioState
from .._scenario import ChatView, ReplyPlan, Scenario

#: Every wire format the server speaks.
Wire: TypeAlias = Literal["openai", "anthropic", "gemini", "ollama", "azure"]

#: The header that marks an Anthropic request (and that Anthropic requires).
ANTHROPIC_VERSION_HEADER = "anthropic-version"
#: What Gemini and Ollama show as the model's thinking, when asked for it.
THOUGHT = "Let me think about that."

encode = msgspec.json.Encoder().encode


# --------------------------------------------------------------------------- header formatting


def format_seconds(seconds: float) -> str:
    """``retry-after`` value: whole seconds as an integer, else a short decimal.

    Real vendors send integers; fractions let tests use short waits (both SDKs and
    most clients parse them as floats).
    """
    if seconds == int(seconds):
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def go_duration(seconds: float) -> str:
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


def rfc3339(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(math.ceil(unix_seconds), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- answers


@dataclass(slots=True)
class Reply:
    """A complete response with a Content-Length body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: A refusal by the safety filter (the ``content_filter`` fault), not a bad request.
    filtered: bool = False


@dataclass(slots=True)
class StreamReply:
    """A streamed 200: SSE events before, during and after the content, plus fault bodies."""

    headers: list[tuple[str, str]]
    head: list[bytes]
    content: list[bytes]
    tail: list[bytes]
    error_event: bytes
    malformed_event: bytes
    #: OpenAI format only: the ``error_chunk`` fault's chunk and terminator, by status.
    error_chunk: Callable[[int], bytes] | None = None


Answer: TypeAlias = Reply | StreamReply


class RequestError(ValueError):
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


def convert_body(body: Any, kind: type[Any]) -> Any:
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
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
            raise RequestError(400, f"{param}: Field required", param=param) from exc
        raise RequestError(400, f"{param}: {message}" if param else message, param=param) from exc


def base64_ok(data: Any, *, urlsafe: bool) -> bool:
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


def embedding(key: bytes, dimensions: int) -> list[float]:
    """A unit vector derived from a hash of ``key``: same input, same vector."""
    raw = hashlib.shake_256(key).digest(2 * dimensions)
    values = [x / 32767.5 - 1.0 for x in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


# --------------------------------------------------------------------------- routes


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


@dataclass(slots=True)
class Route:
    """Where a request goes: its scenario, wire format, endpoint and addressed model."""

    scenario: str
    vendor: Wire
    endpoint: Endpoint
    model_id: str = ""
    #: Azure: the deployment named in the path ("" for the v1 form).
    deployment: str = ""
    #: Azure's dated API: the ``api-version`` query parameter is required.
    dated: bool = False


def json_reply(status: int, obj: Any, vendor: VendorFormat, request_id: str) -> Reply:
    body = encode(obj)
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    if vendor.request_id_header:
        headers.append((vendor.request_id_header, request_id))
    return Reply(status, headers, body)


def text_reply(status: int, content_type: str, text: str) -> Reply:
    body = text.encode()
    return Reply(status, [("content-type", content_type), ("content-length", str(len(body)))], body)


def query_value(query: str, name: str) -> str | None:
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None


# --------------------------------------------------------------------------- wire formats


@dataclass(slots=True, frozen=True)
class ChatRead:
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
class Shape:
    """Everything a formatter needs besides the plan."""

    chat: ChatRead
    n: int
    created: int
    cached: int
    request_id: str
    scenario: Scenario
    wall: float

    @property
    def model(self) -> str:
        return self.chat.model


class VendorFormat(abc.ABC):
    """One vendor's wire format: what differs between vendors, and nothing else.

    The server calls, per request: :meth:`authorized` and :meth:`check_request` (the
    vendor's own preconditions), then :meth:`read_chat` (decode the body with the
    vendor's request Structs into a :class:`ChatRead`) or :meth:`embeddings_reply` /
    :meth:`models_reply` / :meth:`count_tokens_reply`; then :meth:`chat_reply` or
    :meth:`stream_reply` for the planned answer.  Every refusal is a
    :class:`RequestError` that :meth:`error_reply` renders in the vendor's error shape;
    :meth:`fault_error` and :meth:`ratelimit_headers` word the scripted faults.
    """

    name: Wire
    #: The provider kinds (as in the router's configuration) this format serves, each with
    #: the path its base URL adds after ``{url}/{scenario}``.
    kinds: Mapping[str, str] = {}
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
    def authorized(self, headers: Mapping[str, str], query: str, route: Route) -> bool:
        """Whether the request carries a key the way this vendor expects one."""

    def check_request(self, headers: Mapping[str, str], query: str, route: Route) -> None:
        """Raise :class:`RequestError` for a request the vendor refuses before its body."""
        return None

    def auth_error(self) -> RequestError:
        """The answer to a request without a usable key."""
        return RequestError(401, self.missing_auth_message)

    @abc.abstractmethod
    def not_found_message(self, method: str, path: str) -> str: ...

    def unknown_url_reply(self, method: str, path: str, request_id: str) -> Reply:
        return self.error_reply(RequestError(404, self.not_found_message(method, path)), request_id)

    @abc.abstractmethod
    def error_body(self, error: RequestError, request_id: str) -> Any: ...

    def error_reply(self, error: RequestError, request_id: str) -> Reply:
        return json_reply(error.status, self.error_body(error, request_id), self, request_id)

    @abc.abstractmethod
    def fault_error(
        self, status: int, state: ScenarioState, retry_after: float | None
    ) -> RequestError:
        """The error a ``status`` fault answers, as the vendor words it."""
        ...

    @abc.abstractmethod
    def context_error(self, limit: int, requested: int) -> RequestError: ...

    def prompt_blocked_error(self) -> RequestError | None:
        """How a blocked prompt is refused when it is an HTTP error (Azure), else None."""
        return None

    def ratelimit_headers(
        self, state: ScenarioState, wall: float, retry_after: float | None
    ) -> list[tuple[str, str]]:
        return []

    @abc.abstractmethod
    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> Reply: ...

    def embeddings_reply(self, route: Route, body: Any, request_id: str) -> tuple[Reply, int]:
        raise RequestError(404, self.not_found_message("POST", "embeddings"))

    @abc.abstractmethod
    def read_chat(self, route: Route, body: Any, query: str) -> ChatRead: ...

    def count_tokens_reply(self, tokens: int, request_id: str) -> Reply:
        raise RequestError(404, self.not_found_message("POST", "countTokens"))

    @abc.abstractmethod
    def chat_reply(self, plan: ReplyPlan, shape: Shape) -> Reply: ...

    @abc.abstractmethod
    def stream_reply(
        self, plan: ReplyPlan, shape: Shape, extra: list[tuple[str, str]]
    ) -> StreamReply: ...

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


def bearer(headers: Mapping[str, str]) -> bool:
    auth = headers.get("authorization", "")
    return auth[:7].lower() == "bearer " and bool(auth[7:].strip())


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
