"""The gateway's Anthropic dialect: the Messages API in, the router's types out.

Pure translation, no I/O: :func:`decode_messages` reads a ``POST /v1/messages`` body into
a :class:`~router.ChatRequest`; :func:`encode_message` writes a
:class:`~router.ChatResponse` as a ``message``; :class:`EventEncoder` turns the router's
stream events into Anthropic's named SSE events, in Anthropic's order:

1. ``message_start`` (a message with empty ``content``);
2. per content block: ``content_block_start``, its deltas (``thinking_delta``,
   ``text_delta``, ``input_json_delta``), ``content_block_stop``; blocks never overlap;
3. ``message_delta`` with the ``stop_reason`` and the usage;
4. ``message_stop``.

Text and thinking stream as they come.  A ``tool_use`` block is sent whole when its
call is complete (start, one ``input_json_delta`` with the whole input, stop): a
provider may interleave the argument fragments of parallel calls, which Anthropic's
one-block-at-a-time order cannot show.

The translation of the request: ``system`` (a string or text blocks) becomes the system
message; a user turn's ``tool_result`` blocks become tool messages (in their order,
before the rest of the turn); an assistant turn's ``tool_use`` blocks become its tool
calls; ``thinking`` blocks sent back are dropped (the router keeps no signatures);
``thinking.budget_tokens`` is the request's thinking budget;
``output_config.format`` (``json_schema``) its response format.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from providers import (
    ChatRequest,
    ChatResponse,
    Done,
    ForceTool,
    ImagePart,
    Message,
    ReasoningDelta,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolSpec,
    Usage,
    UsageEvent,
)

from ._gateway_wire import BadRequest, Int64, decode_body, sse_event

__all__ = [
    "EventEncoder",
    "MessagesCall",
    "decode_messages",
    "encode_message",
    "error_body",
    "error_event",
    "served_model",
    "stop_reason",
]


class _Wire(msgspec.Struct, kw_only=True):
    """Blocks inside the body: unknown fields (``cache_control``, ``citations``) ignored."""


class _Base64(_Wire, tag="base64", tag_field="type"):
    media_type: str
    data: str


class _URL(_Wire, tag="url", tag_field="type"):
    url: str


class _Text(_Wire, tag="text", tag_field="type"):
    text: str


class _Image(_Wire, tag="image", tag_field="type"):
    source: _Base64 | _URL


class _ToolUse(_Wire, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class _ToolResult(_Wire, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[_Text | _Image] = ""
    is_error: bool = False


class _Thinking(_Wire, tag="thinking", tag_field="type"):
    thinking: str = ""


class _RedactedThinking(_Wire, tag="redacted_thinking", tag_field="type"):
    pass


class _Document(_Wire, tag="document", tag_field="type"):
    pass


_Block = _Text | _Image | _ToolUse | _ToolResult | _Thinking | _RedactedThinking | _Document


class _MessageBody(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _ToolDef(_Wire):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None
    type: Literal["custom"] | None = None


class _ToolChoice(_Wire):
    type: Literal["auto", "any", "none", "tool"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Thinking_(_Wire):
    type: Literal["enabled", "disabled"]
    budget_tokens: Int64 | None = None


class _Format(_Wire):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class _OutputConfig(_Wire):
    format: _Format | None = None


class _Metadata(_Wire):
    user_id: str | None = None


class _MessagesBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A Messages body: Anthropic refuses unknown top-level fields, so do we."""

    model: str
    max_tokens: Int64
    messages: list[_MessageBody]
    system: str | list[_Text] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Int64 | None = None
    stop_sequences: list[str] | None = None
    tools: list[_ToolDef] | None = None
    tool_choice: _ToolChoice | None = None
    thinking: _Thinking_ | None = None
    output_config: _OutputConfig | None = None
    metadata: _Metadata | None = None
    service_tier: Any = None


_DECODER = msgspec.json.Decoder(_MessagesBody)


class MessagesCall(msgspec.Struct, frozen=True):
    """A decoded Messages request: what to send, and whether to stream it."""

    request: ChatRequest
    stream: bool


def decode_messages(body: bytes, *, request_id: str) -> MessagesCall:
    """Read a Messages body; ``request_id`` goes into the request's metadata.

    Raises:
        BadRequest: what Anthropic would answer with a 400 (``invalid_request_error``).
    """
    b = decode_body(_DECODER, body)
    if b.top_k is not None:
        raise BadRequest("top_k: the gateway does not support `top_k`; remove it", param="top_k")
    if not b.messages:
        raise BadRequest("messages: at least one message is required", param="messages")
    messages: list[Message] = []
    if b.system:
        text = b.system if isinstance(b.system, str) else "".join(t.text for t in b.system)
        messages.append(Message.system(text))
    for i, m in enumerate(b.messages):
        messages.extend(_turn(m, i))
    tools = []
    for i, t in enumerate(b.tools or ()):
        try:
            tools.append(
                ToolSpec(
                    name=t.name,
                    description=t.description or "",
                    parameters=t.input_schema,
                    strict=t.strict,
                )
            )
        except ValueError as exc:
            raise BadRequest(f"tools.{i}: {exc}", param=f"tools.{i}") from None
    choice: Literal["none", "auto", "required"] | ForceTool | None = None
    if b.tool_choice is not None:
        kind = b.tool_choice.type
        if kind == "tool":
            if not b.tool_choice.name:
                raise BadRequest("tool_choice.name: Field required", param="tool_choice.name")
            choice = ForceTool(name=b.tool_choice.name)
        else:
            choice = "required" if kind == "any" else kind
    thinking = None
    if b.thinking is not None and b.thinking.type == "enabled":
        if b.thinking.budget_tokens is None:
            raise BadRequest(
                "thinking.budget_tokens: Field required", param="thinking.budget_tokens"
            )
        thinking = b.thinking.budget_tokens
    fmt = None
    if b.output_config is not None and b.output_config.format is not None:
        fmt = ResponseFormat.json_schema(b.output_config.format.schema)
    metadata = {"request_id": request_id}
    if b.metadata is not None and b.metadata.user_id is not None:
        metadata["user"] = b.metadata.user_id
    request = ChatRequest(
        model=b.model,
        messages=messages,
        max_tokens=b.max_tokens,
        temperature=b.temperature,
        top_p=b.top_p,
        stop=b.stop_sequences,
        tools=tools,
        tool_choice=choice,
        thinking_budget=thinking,
        response_format=fmt,
        metadata=metadata,
    )
    return MessagesCall(request=request, stream=bool(b.stream))


def _image(block: _Image, where: str) -> ImagePart:
    try:
        if isinstance(block.source, _URL):
            return ImagePart.from_url(block.source.url)
        return ImagePart(data=block.source.data, media_type=block.source.media_type)
    except ValueError as exc:
        raise BadRequest(f"{where}.source: {exc}", param=f"{where}.source") from None


def _turn(m: _MessageBody, i: int) -> list[Message]:
    where = f"messages.{i}"
    if isinstance(m.content, str):
        return [Message(role=m.role, content=m.content)]
    out: list[Message] = []
    parts: list[TextPart | ImagePart] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(m.content):
        here = f"{where}.content.{j}"
        if isinstance(block, _Text):
            parts.append(TextPart(text=block.text))
        elif isinstance(block, _Image):
            if m.role != "user":
                raise BadRequest(f"{here}: images are allowed in user turns only", param=here)
            parts.append(_image(block, here))
        elif isinstance(block, _ToolUse):
            if m.role != "assistant":
                raise BadRequest(f"{here}: tool_use blocks belong in assistant turns", param=here)
            calls.append(ToolCall(id=block.id, name=block.name, arguments=block.input))
        elif isinstance(block, _ToolResult):
            if m.role != "user":
                raise BadRequest(f"{here}: tool_result blocks belong in user turns", param=here)
            content = block.content
            if not isinstance(content, str):
                if any(isinstance(p, _Image) for p in content):
                    raise BadRequest(
                        f"{here}.content: the gateway takes text tool results only", param=here
                    )
                content = "".join(p.text for p in content if isinstance(p, _Text))
            out.append(Message.tool(block.tool_use_id, content, is_error=block.is_error))
        elif isinstance(block, _Document):
            raise BadRequest(
                f"{here}: document blocks are not supported by the gateway", param=here
            )
        # thinking and redacted_thinking blocks sent back: dropped (see the docstring)
    if m.role == "assistant":
        text = "".join(p.text for p in parts if isinstance(p, TextPart))
        if text or calls:
            out.append(Message.assistant(text, tool_calls=calls))
    elif parts:
        if len(parts) == 1 and isinstance(parts[0], TextPart):
            out.append(Message(role="user", content=parts[0].text))
        else:
            out.append(Message(role="user", content=parts))
    return out


# --------------------------------------------------------------------------- outbound

_STOP: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(response: ChatResponse) -> str:
    """Anthropic's ``stop_reason`` for the router's finish reason."""
    if response.raw_finish_reason in ("stop_sequence", "pause_turn"):
        return response.raw_finish_reason
    return _STOP.get(response.finish_reason, "end_turn")


def _usage(u: Usage) -> dict[str, Any]:
    # Anthropic counts input without the cached part (and without cache writes).
    return {
        "input_tokens": max(0, u.input_tokens - u.cached_input_tokens - u.cache_write_tokens),
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
    }


def _tool_input(call: ToolCall) -> dict[str, Any]:
    return call.arguments


def served_model(response: ChatResponse) -> str:
    """The ``model`` a reply names: ``provider:model``, a model string this gateway takes."""
    return f"{response.provider}:{response.model}"


def encode_message(response: ChatResponse, message_id: str) -> bytes:
    """``response`` as Anthropic's ``message`` object."""
    content: list[dict[str, Any]] = []
    if response.reasoning:
        content.append({"type": "thinking", "thinking": response.reasoning, "signature": ""})
    if response.text:
        content.append({"type": "text", "text": response.text})
    for call in response.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call)}
        )
    body = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": served_model(response),
        "content": content,
        "stop_reason": stop_reason(response),
        "stop_sequence": None,
        "usage": _usage(response.usage),
    }
    return msgspec.json.encode(body)


class EventEncoder:
    """The router's stream events as Anthropic's named SSE events (see the module doc).

    Example::

        encoder = EventEncoder("msg_1", "anthropic:claude-3-5-haiku-latest")
        head = encoder.start()                  # message_start
        for event in events:
            data = encoder.event(event)         # b"" when the event shows nothing yet
    """

    __slots__ = ("_block", "_ids", "_kind", "_message_id", "_model", "done")

    def __init__(self, message_id: str, model: str) -> None:
        self._message_id = message_id
        self._model = model
        self._block = -1  # the index of the open block, or of the last one
        self._kind: str | None = None  # the open block's type, None when none is open
        self._ids: set[str] = set()
        self.done = False

    def start(self) -> bytes:
        """``message_start``: the message, with no content yet."""
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse_event(b"message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        self._kind = None
        return sse_event(
            b"content_block_stop", {"type": "content_block_stop", "index": self._block}
        )

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        closed = self._close()
        self._block += 1
        self._kind = kind
        return closed + sse_event(
            b"content_block_start",
            {"type": "content_block_start", "index": self._block, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event(
            b"content_block_delta",
            {"type": "content_block_delta", "index": self._block, "delta": delta},
        )

    def _tool(self, call: ToolCall) -> bytes:
        self._ids.add(call.id)
        head = self._open(
            "tool_use", {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        )
        body = self._delta(
            {
                "type": "input_json_delta",
                "partial_json": msgspec.json.encode(call.arguments).decode(),
            }
        )
        return head + body + self._close()

    def event(self, event: StreamEvent) -> bytes:
        """The SSE bytes for one event (``b""`` for events the wire does not show)."""
        if isinstance(event, TextDelta):
            if not event.text:
                return b""
            head = b"" if self._kind == "text" else self._open("text", {"type": "text", "text": ""})
            return head + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            if not event.text:
                return b""
            head = (
                b""
                if self._kind == "thinking"
                else self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            )
            return head + self._delta({"type": "thinking_delta", "thinking": event.text})
        if isinstance(event, ToolCallEnd):
            return self._tool(event.call)
        if isinstance(event, ToolCallStart | ToolCallDelta | UsageEvent):
            return b""
        return self.finish(event)

    def finish(self, done: Done) -> bytes:
        """After ``Done``: calls never shown, ``message_delta`` and ``message_stop``."""
        self.done = True
        response = done.response
        out = [self._close()]
        for call in response.tool_calls:
            if call.id not in self._ids:
                out.append(self._tool(call))
        out.append(
            sse_event(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason(response), "stop_sequence": None},
                    "usage": _usage(response.usage),
                },
            )
        )
        out.append(sse_event(b"message_stop", {"type": "message_stop"}))
        return b"".join(out)


def error_body(type_: str, message: str, extra: dict[str, Any]) -> bytes:
    """Anthropic's error shape: ``{"type": "error", "error": {"type", "message", ...}}``."""
    return msgspec.json.encode(
        {"type": "error", "error": {"type": type_, "message": message, **extra}}
    )


def error_event(type_: str, message: str) -> bytes:
    """An in-stream ``error`` event, as Anthropic sends after a 200 has begun."""
    return sse_event(b"error", {"type": "error", "error": {"type": type_, "message": message}})
