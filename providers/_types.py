"""The shared vocabulary: messages, requests, responses, stream events, usage.

Every type is a frozen msgspec Struct, so requests and responses can be encoded,
decoded, compared and hashed where their fields allow, and validated while decoding.
Vendor adapters translate these to and from each wire format; nothing vendor-specific
lives here.

Synopsis::

    req = ChatRequest(
        model="openai:gpt-4o-mini",
        messages=[Message.system("Be terse."), Message.user("What is trio?")],
        max_tokens=200,
    )
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import msgspec

from ._errors import InvalidRequest, UnsupportedFeature

__all__ = [
    "Attempt",
    "Capabilities",
    "ChatRequest",
    "ChatResponse",
    "Done",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "FinishReason",
    "ForceTool",
    "ImagePart",
    "Message",
    "ModelInfo",
    "Part",
    "ReasoningDelta",
    "ResponseFormat",
    "Role",
    "StreamAccumulator",
    "StreamEvent",
    "TextDelta",
    "TextPart",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolChoice",
    "ToolSpec",
    "Usage",
    "UsageEvent",
    "is_content_event",
    "parse_tool_arguments",
    "validate_request",
]

#: Who speaks a message: the system prompt, the user, the model, or a tool's result.
Role: TypeAlias = Literal["system", "user", "assistant", "tool"]

#: One vocabulary for why generation stopped, whatever the vendor called it.
FinishReason: TypeAlias = Literal[
    "stop", "length", "tool_calls", "content_filter", "error", "other"
]

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Struct(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Base of our own types: immutable, keyword-only, strict about unknown fields."""


# --------------------------------------------------------------------------- content


class TextPart(_Struct, frozen=True, tag="text", tag_field="type"):
    """A piece of text inside a message."""

    text: str


class ImagePart(_Struct, frozen=True, tag="image", tag_field="type"):
    """An image, either by URL or inline as base64 ``data`` with its ``media_type``.

    Example::

        ImagePart.from_url("https://example.com/cat.png")
        ImagePart.from_bytes(png_bytes, "image/png")
    """

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: Literal["auto", "low", "high"] | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.data is None):
            raise ValueError("an image needs exactly one of `url` or `data`")
        if self.data is not None:
            if self.media_type not in _IMAGE_MEDIA_TYPES:
                raise ValueError(
                    f"image `media_type` must be one of {sorted(_IMAGE_MEDIA_TYPES)}, "
                    f"got {self.media_type!r}"
                )
        elif self.url is not None and not self.url.startswith(("http://", "https://", "data:")):
            raise ValueError(f"image `url` must be http(s) or a data: URL, got {self.url[:40]!r}")

    @classmethod
    def from_url(
        cls, url: str, *, detail: Literal["auto", "low", "high"] | None = None
    ) -> ImagePart:
        """An image the provider fetches by URL (a ``data:`` URL is split into data and type)."""
        if url.startswith("data:"):
            head, sep, payload = url.partition(",")
            if sep and head.endswith(";base64"):
                return cls(data=payload, media_type=head[5:-7], detail=detail)
        return cls(url=url, detail=detail)

    @classmethod
    def from_bytes(
        cls, raw: bytes, media_type: str, *, detail: Literal["auto", "low", "high"] | None = None
    ) -> ImagePart:
        """An inline image from its raw bytes."""
        return cls(data=base64.b64encode(raw).decode("ascii"), media_type=media_type, detail=detail)

    @property
    def data_url(self) -> str:
        """The image as a URL: its own URL, or a ``data:`` URL for inline data."""
        if self.url is not None:
            return self.url
        return f"data:{self.media_type};base64,{self.data}"


#: One piece of a message's content: text or an image.
Part: TypeAlias = TextPart | ImagePart


# --------------------------------------------------------------------------- tools


class ToolSpec(_Struct, frozen=True):
    """A function the model may call; ``parameters`` is a JSON Schema object.

    Example::

        ToolSpec(name="get_weather", description="Weather in a city",
                 parameters={"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]})
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    strict: bool | None = None

    def __post_init__(self) -> None:
        if not _TOOL_NAME.match(self.name):
            raise ValueError(
                f"tool name {self.name!r} must be 1-64 characters of letters, digits, _ or -"
            )
        if self.parameters.get("type", "object") != "object":
            raise ValueError(f"tool {self.name!r}: `parameters` must be a JSON Schema object")


class ForceTool(_Struct, frozen=True, tag="tool", tag_field="type"):
    """Tool choice that forces the model to call one named tool."""

    name: str


#: ``"auto"`` (the model decides), ``"none"``, ``"required"`` (some tool), or one tool.
ToolChoice: TypeAlias = Literal["auto", "none", "required"] | ForceTool


class ToolCall(_Struct, frozen=True):
    """A call the model made: ``arguments`` parsed from JSON.

    When the model produced arguments that are not a JSON object, ``arguments`` is empty
    and ``raw_arguments`` holds what it sent, so nothing is silently lost.
    """

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    raw_arguments: str | None = None


def parse_tool_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """Parse a tool call's argument string defensively.

    Returns ``(arguments, None)`` for a JSON object (an empty string counts as ``{}``), and
    ``({}, raw)`` for anything else.

    Example::

        >>> parse_tool_arguments('{"city": "Paris"}')
        ({'city': 'Paris'}, None)
        >>> parse_tool_arguments('{"city": ')
        ({}, '{"city": ')
    """
    if not raw.strip():
        return {}, None
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}, raw
    if isinstance(value, dict):
        return value, None
    return {}, raw


# --------------------------------------------------------------------------- messages


class Message(_Struct, frozen=True):
    """One turn of a conversation.

    Use the constructors::

        Message.system("Be terse.")
        Message.user("What is in this picture?", ImagePart.from_url("https://..."))
        Message.assistant(tool_calls=[ToolCall(id="call_1", name="get_weather",
                                               arguments={"city": "Paris"})])
        Message.tool("call_1", "18C and cloudy")
    """

    role: Role
    content: str | list[Part] = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False

    def __post_init__(self) -> None:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool calls, not {self.role!r}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the `tool_call_id` of the call it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("`tool_call_id` belongs on tool messages only")

    @classmethod
    def system(cls, text: str) -> Message:
        """A system prompt."""
        return cls(role="system", content=text)

    @classmethod
    def user(cls, *content: str | Part) -> Message:
        """A user turn from text and parts (strings become text parts)."""
        return cls(role="user", content=_content(content))

    @classmethod
    def assistant(cls, text: str = "", *, tool_calls: Sequence[ToolCall] = ()) -> Message:
        """An assistant turn (for conversation history, or a prefill)."""
        return cls(role="assistant", content=text, tool_calls=list(tool_calls))

    @classmethod
    def tool(
        cls, tool_call_id: str, content: str, *, name: str | None = None, is_error: bool = False
    ) -> Message:
        """The result of the tool call ``tool_call_id``."""
        return cls(
            role="tool", content=content, tool_call_id=tool_call_id, name=name, is_error=is_error
        )

    @property
    def text(self) -> str:
        """The message's text parts joined together."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def parts(self) -> list[Part]:
        """The content as a list of parts (a string becomes one text part)."""
        if isinstance(self.content, str):
            return [TextPart(text=self.content)] if self.content else []
        return self.content

    @property
    def images(self) -> list[ImagePart]:
        """The image parts of the message."""
        if isinstance(self.content, str):
            return []
        return [p for p in self.content if isinstance(p, ImagePart)]


def _content(items: Sequence[str | Part]) -> str | list[Part]:
    if len(items) == 1 and isinstance(items[0], str):
        return items[0]
    return [TextPart(text=p) if isinstance(p, str) else p for p in items]


# --------------------------------------------------------------------------- requests


class ResponseFormat(_Struct, frozen=True):
    """Ask for JSON: any JSON object, or one matching a JSON Schema.

    Example::

        ResponseFormat.json_schema({"type": "object", "properties": {"name": {"type": "string"}}})
    """

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = "response"
    schema: dict[str, Any] | None = None
    strict: bool = True
    description: str | None = None

    def __post_init__(self) -> None:
        if self.type == "json_schema" and self.schema is None:
            raise ValueError("a json_schema response format needs a `schema`")

    @classmethod
    def json_schema(
        cls, schema: dict[str, Any], *, name: str = "response", strict: bool = True
    ) -> ResponseFormat:
        """Structured output matching ``schema``."""
        return cls(type="json_schema", schema=schema, name=name, strict=strict)

    @classmethod
    def json_object(cls) -> ResponseFormat:
        """Any JSON object (legacy JSON mode)."""
        return cls(type="json_object")


class ChatRequest(_Struct, frozen=True):
    """A chat completion request, vendor-neutral.

    ``model`` is a ``provider:model`` string, a route name, or a bare model id; by the
    time an adapter sees it, it is the vendor's own model id.  ``extra`` is merged into
    the vendor's request body verbatim (e.g. OpenRouter's ``provider`` object).

    Example::

        ChatRequest(model="fast", messages=[Message.user("hi")], max_tokens=100)
    """

    model: str
    messages: list[Message]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    thinking_budget: int | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def last_user_text(self) -> str:
        """Text of the last user message ("" if there is none)."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m.text
        return ""

    @property
    def has_images(self) -> bool:
        """Whether any message carries an image."""
        for m in self.messages:
            content = m.content
            if not isinstance(content, str):
                for p in content:
                    if isinstance(p, ImagePart):
                        return True
        return False


class Capabilities(_Struct, frozen=True):
    """What a provider (or a model) can take; checked before any network call."""

    tools: bool = True
    vision: bool = True
    structured_output: bool = True
    streaming: bool = True
    embeddings: bool = True
    image_urls: bool = True


def validate_request(request: ChatRequest, capabilities: Capabilities | None = None) -> None:
    """Check a request before any network call; raise an error that says what to fix.

    Raises:
        InvalidRequest: the request is malformed for every provider.
        UnsupportedFeature: it needs something ``capabilities`` says the target lacks.

    Example::

        validate_request(ChatRequest(model="m", messages=[]))  # InvalidRequest: no messages
    """
    if not request.messages:
        raise InvalidRequest("the request has no messages; add at least one user message")
    if request.max_tokens is not None and request.max_tokens <= 0:
        raise InvalidRequest(f"max_tokens must be positive, got {request.max_tokens}")
    if request.temperature is not None and not 0.0 <= request.temperature <= 2.0:
        raise InvalidRequest(f"temperature must be between 0 and 2, got {request.temperature}")
    if request.top_p is not None and not 0.0 < request.top_p <= 1.0:
        raise InvalidRequest(f"top_p must be in (0, 1], got {request.top_p}")
    if request.thinking_budget is not None and request.thinking_budget <= 0:
        raise InvalidRequest(f"thinking_budget must be positive, got {request.thinking_budget}")
    if request.stop is not None and any(not s for s in request.stop):
        raise InvalidRequest("stop sequences must be non-empty strings")

    seen_non_system = False
    open_calls: set[str] = set()
    tool_names = {t.name for t in request.tools}
    if len(tool_names) != len(request.tools):
        raise InvalidRequest("tool names must be unique")
    if isinstance(request.tool_choice, ForceTool) and request.tool_choice.name not in tool_names:
        raise InvalidRequest(
            f"tool_choice forces {request.tool_choice.name!r}, which is not among the tools "
            f"{sorted(tool_names)}"
        )
    if request.tool_choice == "required" and not request.tools:
        raise InvalidRequest("tool_choice 'required' needs at least one tool")

    for i, m in enumerate(request.messages):
        if m.role == "system":
            if seen_non_system:
                raise InvalidRequest(
                    f"messages[{i}]: system messages must come before every other message"
                )
            continue
        if not seen_non_system and m.role != "user":
            raise InvalidRequest(
                f"messages[{i}]: the first message after the system prompt must be a user message, "
                f"not {m.role!r}"
            )
        seen_non_system = True
        if m.role == "tool":
            if m.tool_call_id not in open_calls:
                raise InvalidRequest(
                    f"messages[{i}]: tool result for {m.tool_call_id!r} has no matching tool "
                    "call in an earlier assistant message"
                )
            open_calls.discard(m.tool_call_id)
        elif m.role == "assistant":
            if open_calls:
                raise InvalidRequest(
                    f"messages[{i}]: tool calls {sorted(open_calls)} need tool results before the "
                    "next assistant message"
                )
            open_calls = {c.id for c in m.tool_calls}
        elif m.role == "user" and open_calls:
            raise InvalidRequest(
                f"messages[{i}]: tool calls {sorted(open_calls)} need tool results before the "
                "next user message"
            )
    if not seen_non_system:
        raise InvalidRequest("the request has only system messages; add a user message")

    if capabilities is None:
        return
    if request.has_images and not capabilities.vision:
        raise UnsupportedFeature("this target cannot take images; remove the image parts")
    if not capabilities.image_urls:
        for m in request.messages:
            if any(p.url is not None for p in m.images):
                raise UnsupportedFeature(
                    "this target takes inline images only; use ImagePart.from_bytes"
                )
    if request.tools and not capabilities.tools:
        raise UnsupportedFeature("this target cannot call tools; remove `tools`")
    fmt = request.response_format
    if fmt is not None and fmt.type != "text" and not capabilities.structured_output:
        raise UnsupportedFeature("this target has no structured output; remove `response_format`")


# --------------------------------------------------------------------------- responses


class Usage(_Struct, frozen=True):
    """Token usage, normalised.

    ``input_tokens`` counts the whole prompt, cached tokens included (OpenAI semantics);
    ``cached_input_tokens`` is the part read from a prompt cache, a subset of it.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


#: What became of one attempt in a router's race.
AttemptOutcome: TypeAlias = Literal["won", "failed", "cancelled", "skipped"]
#: Why an attempt was started: the first, a hedge (its delay ran out), or a fallback
#: (an earlier attempt failed).
AttemptKind: TypeAlias = Literal["primary", "hedge", "fallback"]


class Attempt(_Struct, frozen=True):
    """What one target did for one request: the router's trace, on results and errors.

    ``start`` and ``end`` are seconds since the request began; a skipped target has no
    ``start``, and its ``end`` is when it was passed over.  ``kind`` is the attempt it
    was started (or passed over) for.  ``error_type`` and ``reason`` say why an attempt
    failed, was cancelled (``"lost the race to openai"``) or was skipped (``"circuit
    open"``; a hedge that fell due but was not sent is a skipped ``"hedge"``, with an
    empty provider and model when no target was left).  ``usage`` is what the provider
    reported for the winner; for attempts that lost or failed after sending,
    ``wasted_tokens`` estimates the prompt tokens spent on them (hedge waste).
    ``hedge_delay`` is the hedge delay in force, on every attempt of a hedged race.
    ``queued`` is the seconds the attempt waited in the provider's mailbox for admission
    (rate limits, concurrency, a provider's pause; summed over its retries), included in
    ``start``..``end``; 0 when it was admitted at once or skipped.

    Example::

        for a in response.attempts:
            print(a.provider, a.kind, a.outcome, a.reason or "")
    """

    provider: str
    model: str
    kind: AttemptKind = "primary"
    outcome: AttemptOutcome = "won"
    start: float | None = None
    end: float | None = None
    retries: int = 0
    error_type: str | None = None
    reason: str | None = None
    usage: Usage | None = None
    cost: float | None = None
    wasted_tokens: int = 0
    hedge_delay: float | None = None
    queued: float = 0.0


class ChatResponse(_Struct, frozen=True):
    """A complete answer.

    ``finish_reason`` uses one vocabulary across vendors; ``raw_finish_reason`` keeps the
    vendor's word.  ``headers`` holds the response's retry and rate-limit headers.
    """

    id: str
    model: str
    provider: str
    text: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    finish_reason: FinishReason = "stop"
    raw_finish_reason: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    reasoning: str | None = None
    request_id: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    cost: float | None = None
    #: The router's trace: every target tried for this answer (empty from an adapter).
    attempts: list[Attempt] = msgspec.field(default_factory=list)

    @property
    def message(self) -> Message:
        """The answer as an assistant message, ready to append to the conversation."""
        return Message.assistant(self.text, tool_calls=self.tool_calls)


class ModelInfo(_Struct, frozen=True):
    """A model a provider lists."""

    id: str
    provider: str
    context_window: int | None = None
    owned_by: str | None = None


class EmbeddingRequest(_Struct, frozen=True):
    """Embed each string of ``inputs``."""

    model: str
    inputs: list[str]
    dimensions: int | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("an embedding request needs at least one input")
        if self.dimensions is not None and self.dimensions <= 0:
            raise ValueError(f"dimensions must be positive, got {self.dimensions}")


class EmbeddingResponse(_Struct, frozen=True):
    """One vector per input, in input order."""

    model: str
    provider: str
    vectors: list[list[float]]
    usage: Usage = msgspec.field(default_factory=Usage)
    cost: float | None = None
    #: The router's trace: every target tried for these vectors (empty from an adapter).
    attempts: list[Attempt] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------- streaming


class TextDelta(_Struct, frozen=True, tag="text", tag_field="type"):
    """A piece of the answer's text."""

    text: str


class ReasoningDelta(_Struct, frozen=True, tag="reasoning", tag_field="type"):
    """A piece of the model's visible thinking, where the vendor streams it."""

    text: str


class ToolCallStart(_Struct, frozen=True, tag="tool_call_start", tag_field="type"):
    """The model began tool call number ``index``."""

    index: int
    id: str
    name: str


class ToolCallDelta(_Struct, frozen=True, tag="tool_call_delta", tag_field="type"):
    """A fragment of tool call ``index``'s JSON arguments."""

    index: int
    arguments: str


class ToolCallEnd(_Struct, frozen=True, tag="tool_call_end", tag_field="type"):
    """Tool call ``index`` is complete; ``call`` has its parsed arguments."""

    index: int
    call: ToolCall


class UsageEvent(_Struct, frozen=True, tag="usage", tag_field="type"):
    """Token usage so far (cumulative; the last one wins)."""

    usage: Usage


class Done(_Struct, frozen=True, tag="done", tag_field="type"):
    """The stream ended normally; ``response`` is the whole answer assembled."""

    response: ChatResponse

    @property
    def finish_reason(self) -> FinishReason:
        """Why generation stopped."""
        return self.response.finish_reason


#: What a stream yields; dispatch with ``match`` (every member has a ``type`` tag).
StreamEvent: TypeAlias = (
    TextDelta | ReasoningDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | UsageEvent | Done
)


def is_content_event(event: StreamEvent) -> bool:
    """Whether ``event`` is answer content — the point where a streaming race commits."""
    return isinstance(event, _CONTENT_EVENTS)


_CONTENT_EVENTS = (TextDelta, ReasoningDelta, ToolCallStart, ToolCallEnd)


class StreamAccumulator:
    """Folds stream events into a :class:`ChatResponse`; shared by every adapter.

    Example::

        acc = StreamAccumulator(provider="openai", model="gpt-4o-mini")
        for ev in events:
            acc.add(ev)
        resp = acc.response(finish_reason="stop")
    """

    __slots__ = ("_calls", "_finished", "_reasoning", "_text", "id", "model", "provider", "usage")

    def __init__(self, *, provider: str, model: str, id: str = "") -> None:
        self.provider = provider
        self.model = model
        self.id = id
        self.usage = Usage()
        self._text: list[str] = []
        self._reasoning: list[str] = []
        # index -> (id, name, argument fragments); finished calls kept apart
        self._calls: dict[int, tuple[str, str, list[str]]] = {}
        self._finished: dict[int, ToolCall] = {}

    @property
    def text(self) -> str:
        """The text so far."""
        return "".join(self._text)

    def add(self, event: StreamEvent) -> None:
        """Record one event."""
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self._reasoning.append(event.text)
        elif isinstance(event, ToolCallStart):
            self._calls[event.index] = (event.id, event.name, [])
        elif isinstance(event, ToolCallDelta):
            if event.index in self._calls:
                self._calls[event.index][2].append(event.arguments)
        elif isinstance(event, ToolCallEnd):
            self._finished[event.index] = event.call
        elif isinstance(event, UsageEvent):
            self.usage = event.usage

    def finish_call(self, index: int) -> ToolCall | None:
        """Assemble tool call ``index`` from its fragments (``None`` if it never started)."""
        started = self._calls.get(index)
        if started is None:
            return None
        call_id, name, fragments = started
        raw = "".join(fragments)
        args, bad = parse_tool_arguments(raw)
        return ToolCall(id=call_id, name=name, arguments=args, raw_arguments=bad)

    def open_calls(self) -> list[int]:
        """Indexes of tool calls started but not yet ended."""
        return [i for i in sorted(self._calls) if i not in self._finished]

    def response(
        self,
        *,
        finish_reason: FinishReason,
        raw_finish_reason: str | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> ChatResponse:
        """The assembled response."""
        calls = [self._finished[i] for i in sorted(self._finished)]
        return ChatResponse(
            id=self.id,
            model=self.model,
            provider=self.provider,
            text="".join(self._text),
            tool_calls=calls,
            finish_reason=finish_reason,
            raw_finish_reason=raw_finish_reason,
            usage=self.usage,
            reasoning="".join(self._reasoning) or None,
            request_id=request_id,
            headers=headers or {},
        )
