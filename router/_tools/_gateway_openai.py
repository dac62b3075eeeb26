"""The gateway's OpenAI dialect: Chat Completions and embeddings in, the router's types out.

Pure translation, no I/O: :func:`decode_chat` reads a ``POST /v1/chat/completions`` body
into a :class:`~router.ChatRequest` (plus the two things only the wire knows: whether to
stream, and whether the stream ends with a usage chunk); :func:`encode_completion` writes
a :class:`~router.ChatResponse` as a ``chat.completion``; :class:`ChunkEncoder` turns the
router's stream events into ``chat.completion.chunk`` SSE events in OpenAI's order:

1. a role chunk (``{"role": "assistant", "content": ""}``);
2. content deltas; a tool call's first delta carries ``index``, ``id``, ``type`` and
   ``function.name`` (with ``arguments: ""``), the next ones ``index`` and argument
   fragments, one index per call in the order the calls began;
3. a chunk with an empty delta and the ``finish_reason``;
4. with ``stream_options.include_usage`` only: a ``choices: []`` chunk with the usage
   (and ``"usage": null`` on every chunk before it, as OpenAI sends);
5. ``data: [DONE]``.

Top-level fields OpenAI has and the router cannot honour are refused with a 400 that
names them (:data:`UNSUPPORTED`), a few harmless ones are accepted and ignored
(:data:`IGNORED`), and any other unknown field is a 400 naming it, as OpenAI answers.
Message objects are lenient (an SDK's own response message, sent back, carries
``refusal`` and ``annotations``).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from providers import (
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    FinishReason,
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

# The one internal, and why: an assistant message sent back carries its tool calls'
# argument strings, read defensively exactly as the adapters read them.
from providers._types import parse_tool_arguments

from ._gateway_wire import BadRequest, Int64, decode_body, sse_data

__all__ = [
    "IGNORED",
    "UNSUPPORTED",
    "ChatCall",
    "ChunkEncoder",
    "EmbeddingCall",
    "decode_chat",
    "decode_embeddings",
    "encode_completion",
    "encode_embeddings",
    "error_body",
    "finish_reason",
    "served_model",
    "sse_error",
]

#: OpenAI parameters the gateway cannot honour through every vendor: a 400 naming them.
UNSUPPORTED = (
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "modalities",
    "prediction",
    "presence_penalty",
    "reasoning_effort",
    "top_logprobs",
    "verbosity",
    "web_search_options",
)
#: OpenAI parameters accepted and ignored: they change nothing a client can observe here.
IGNORED = ("parallel_tool_calls", "prompt_cache_key", "safety_identifier", "service_tier", "store")


# --------------------------------------------------------------------------- inbound


class _Wire(msgspec.Struct, kw_only=True):
    """Vendor objects inside the body: unknown fields ignored, as vendors add them."""


class _ImageURL(_Wire):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class _Text(_Wire, tag="text", tag_field="type"):
    text: str


class _Image(_Wire, tag="image_url", tag_field="type"):
    image_url: _ImageURL


class _Refusal(_Wire, tag="refusal", tag_field="type"):
    refusal: str = ""


class _Audio(_Wire, tag="input_audio", tag_field="type"):
    pass


class _File(_Wire, tag="file", tag_field="type"):
    pass


_Part = _Text | _Image | _Refusal | _Audio | _File


class _Function(_Wire):
    name: str
    arguments: str = ""


class _CallBody(_Wire):
    id: str
    function: _Function
    type: Literal["function"] = "function"


class _MessageBody(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[_Part] | None = None
    name: str | None = None
    tool_calls: list[_CallBody] | None = None
    tool_call_id: str | None = None


class _FunctionDef(_Wire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _ToolDef(_Wire):
    type: Literal["function"]
    function: _FunctionDef


class _Named(_Wire):
    name: str


class _NamedChoice(_Wire):
    function: _Named
    type: Literal["function"] = "function"


class _StreamOptions(_Wire):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _JsonSchema(_Wire):
    name: str = "response"
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class _ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


class _ChatBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A Chat Completions body: OpenAI refuses unknown top-level parameters, so do we."""

    model: str
    messages: list[_MessageBody]
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    max_tokens: Int64 | None = None
    max_completion_tokens: Int64 | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: Int64 | None = None
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    tools: list[_ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedChoice | None = None
    response_format: _ResponseFormat | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    logprobs: bool | None = None
    # IGNORED
    parallel_tool_calls: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None
    service_tier: Any = None
    store: Any = None
    # UNSUPPORTED
    audio: Any = None
    frequency_penalty: Any = None
    function_call: Any = None
    functions: Any = None
    logit_bias: Any = None
    modalities: Any = None
    prediction: Any = None
    presence_penalty: Any = None
    reasoning_effort: Any = None
    top_logprobs: Any = None
    verbosity: Any = None
    web_search_options: Any = None


class _EmbeddingBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    input: str | list[str]
    dimensions: Int64 | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


_CHAT = msgspec.json.Decoder(_ChatBody)
_EMBEDDINGS = msgspec.json.Decoder(_EmbeddingBody)


class ChatCall(msgspec.Struct, frozen=True):
    """A decoded chat request: what to send, and how the client wants the answer."""

    request: ChatRequest
    stream: bool
    include_usage: bool


class EmbeddingCall(msgspec.Struct, frozen=True):
    """A decoded embeddings request."""

    model: str
    inputs: list[str]
    dimensions: int | None
    base64: bool = False


def decode_chat(body: bytes, *, request_id: str) -> ChatCall:
    """Read a Chat Completions body; ``request_id`` goes into the request's metadata.

    Raises:
        BadRequest: what OpenAI would answer with a 400, naming the parameter.
    """
    b = decode_body(_CHAT, body)
    for name in UNSUPPORTED:
        if getattr(b, name) is not None:
            raise BadRequest(
                f"the gateway does not support `{name}` (it cannot be honoured by every "
                "provider a route may reach); remove it",
                param=name,
            )
    if b.logprobs:
        raise BadRequest("the gateway does not support `logprobs`; remove it", param="logprobs")
    if b.n is not None and b.n != 1:
        raise BadRequest(f"n must be 1 through the gateway, got {b.n}", param="n")
    if b.stream_options is not None and not b.stream:
        raise BadRequest(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    messages = [_message(m, i) for i, m in enumerate(b.messages)]
    tools = [_tool(t, i) for i, t in enumerate(b.tools or ())]
    choice: Literal["none", "auto", "required"] | ForceTool | None
    if isinstance(b.tool_choice, _NamedChoice):
        choice = ForceTool(name=b.tool_choice.function.name)
    else:
        choice = b.tool_choice
    metadata = _metadata(b.metadata)
    if b.user is not None:
        metadata["user"] = b.user
    metadata["request_id"] = request_id
    stop = [b.stop] if isinstance(b.stop, str) else b.stop
    try:
        request = ChatRequest(
            model=b.model,
            messages=messages,
            temperature=b.temperature,
            top_p=b.top_p,
            max_tokens=b.max_completion_tokens
            if b.max_completion_tokens is not None
            else b.max_tokens,
            stop=stop,
            seed=b.seed,
            tools=tools,
            tool_choice=choice,
            response_format=_response_format(b.response_format),
            metadata=metadata,
        )
    except ValueError as exc:  # pragma: no cover - each part is checked above
        raise BadRequest(str(exc)) from None
    include_usage = bool(b.stream and b.stream_options and b.stream_options.include_usage)
    return ChatCall(request=request, stream=bool(b.stream), include_usage=include_usage)


def _metadata(given: dict[str, str] | None) -> dict[str, str]:
    """OpenAI's limits on ``metadata``: 16 pairs, keys to 64 characters, values to 512."""
    if not given:
        return {}
    if len(given) > 16:
        raise BadRequest(f"metadata holds at most 16 pairs, got {len(given)}", param="metadata")
    for key, value in given.items():
        if len(key) > 64 or len(value) > 512:
            raise BadRequest(
                f"metadata[{key[:64]!r}]: keys are at most 64 characters, values 512",
                param="metadata",
            )
    return dict(given)


def _text_of(content: str | list[_Part] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, _Text):
            texts.append(part.text)
        elif isinstance(part, _Refusal):
            texts.append(part.refusal)
        else:
            raise BadRequest(
                f"{where}.content[{j}]: only text parts are allowed here", param="messages"
            )
    return "".join(texts)


def _message(m: _MessageBody, i: int) -> Message:
    where = f"messages[{i}]"
    try:
        if m.role in ("system", "developer"):
            return Message.system(_text_of(m.content, where))
        if m.role == "user":
            return Message(role="user", content=_user_content(m.content, where), name=m.name)
        if m.role == "assistant":
            calls = [
                ToolCall(
                    id=c.id,
                    name=c.function.name,
                    arguments=(parsed := parse_tool_arguments(c.function.arguments))[0],
                    raw_arguments=parsed[1],
                )
                for c in m.tool_calls or ()
            ]
            return Message(
                role="assistant", content=_text_of(m.content, where), tool_calls=calls, name=m.name
            )
        if m.role == "tool":
            if not m.tool_call_id:
                raise BadRequest(
                    f"{where}: a tool message needs `tool_call_id`", param=f"{where}.tool_call_id"
                )
            return Message.tool(m.tool_call_id, _text_of(m.content, where))
    except ValueError as exc:
        raise BadRequest(f"{where}: {exc}", param="messages") from None
    raise BadRequest(
        f"{where}: the deprecated `function` role is not supported; use `tool`",
        param=f"{where}.role",
    )


def _user_content(
    content: str | list[_Part] | None, where: str
) -> str | list[TextPart | ImagePart]:
    if content is None:
        raise BadRequest(f"{where}: a user message needs `content`", param=f"{where}.content")
    if isinstance(content, str):
        return content
    parts: list[TextPart | ImagePart] = []
    for j, part in enumerate(content):
        if isinstance(part, _Text):
            parts.append(TextPart(text=part.text))
        elif isinstance(part, _Image):
            try:
                parts.append(ImagePart.from_url(part.image_url.url, detail=part.image_url.detail))
            except ValueError as exc:
                raise BadRequest(
                    f"{where}.content[{j}].image_url: {exc}", param=f"{where}.content"
                ) from None
        else:
            raise BadRequest(
                f"{where}.content[{j}]: content parts of type `{_TAGS[type(part)]}` are not "
                "supported by the gateway; send text and image_url parts",
                param=f"{where}.content",
            )
    return parts


_TAGS = {_Refusal: "refusal", _Audio: "input_audio", _File: "file"}


def _tool(t: _ToolDef, i: int) -> ToolSpec:
    f = t.function
    try:
        return ToolSpec(
            name=f.name,
            description=f.description or "",
            parameters=f.parameters
            if f.parameters is not None
            else {"type": "object", "properties": {}},
            strict=f.strict,
        )
    except ValueError as exc:
        raise BadRequest(f"tools[{i}].function: {exc}", param=f"tools[{i}].function") from None


def _response_format(f: _ResponseFormat | None) -> ResponseFormat | None:
    if f is None or f.type == "text":
        return None
    if f.type == "json_object":
        return ResponseFormat.json_object()
    spec = f.json_schema
    if spec is None or spec.schema is None:
        raise BadRequest(
            "response_format of type json_schema needs `json_schema.schema`",
            param="response_format.json_schema",
        )
    return ResponseFormat(
        type="json_schema",
        name=spec.name,
        schema=spec.schema,
        strict=True if spec.strict is None else spec.strict,
        description=spec.description,
    )


def decode_embeddings(body: bytes) -> EmbeddingCall:
    """Read an embeddings body (text inputs only; ``encoding_format`` ``"float"`` or
    ``"base64"``, which the official SDKs ask for by default).

    Raises:
        BadRequest: what OpenAI would answer with a 400, naming the parameter.
    """
    b = decode_body(_EMBEDDINGS, body)
    inputs = [b.input] if isinstance(b.input, str) else b.input
    if not inputs:
        raise BadRequest("input must not be empty", param="input")
    return EmbeddingCall(
        model=b.model,
        inputs=inputs,
        dimensions=b.dimensions,
        base64=b.encoding_format == "base64",
    )


# --------------------------------------------------------------------------- outbound

_FINISH: dict[str, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}


def finish_reason(reason: FinishReason) -> str:
    """OpenAI's ``finish_reason`` for the router's (``error`` and ``other`` are ``stop``)."""
    return _FINISH.get(reason, "stop")


def _usage(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def _arguments(call: ToolCall) -> str:
    if call.raw_arguments is not None:
        return call.raw_arguments
    return msgspec.json.encode(call.arguments).decode()


def served_model(response: ChatResponse | EmbeddingResponse) -> str:
    """The ``model`` a reply names: ``provider:model``, a model string this gateway takes."""
    return f"{response.provider}:{response.model}"


def encode_completion(response: ChatResponse, completion_id: str) -> bytes:
    """``response`` as OpenAI's ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": response.text if response.text or not response.tool_calls else None,
        "refusal": None,
    }
    if response.reasoning:
        # Not OpenAI's (its chat API never shows reasoning): the name compatible
        # servers use, which the SDKs keep as an extra field.
        message["reasoning_content"] = response.reasoning
    if response.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments(c)},
            }
            for c in response.tool_calls
        ]
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_model(response),
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(response.finish_reason),
            }
        ],
        "usage": _usage(response.usage),
    }
    return msgspec.json.encode(body)


class ChunkEncoder:
    """The router's stream events as OpenAI ``chat.completion.chunk`` SSE events.

    Example::

        encoder = ChunkEncoder("chatcmpl-1", "openai:gpt-4o-mini", include_usage=False)
        head = encoder.start()                      # the role chunk
        for event in events:
            data = encoder.event(event)             # b"" when the event shows nothing
        # after Done: the finish chunk, [usage chunk,] and data: [DONE]
    """

    __slots__ = ("_base", "_calls", "_ids", "_include_usage", "_sent_args", "done")

    def __init__(self, completion_id: str, model: str, *, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        # the router's tool-call index -> OpenAI's (0, 1, ... in the order calls began)
        self._calls: dict[int, int] = {}
        self._sent_args: set[int] = set()
        self._ids: set[str] = set()
        self.done = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            **self._base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            chunk["usage"] = None
        return sse_data(msgspec.json.encode(chunk))

    def start(self) -> bytes:
        """The first chunk: the assistant's role, and empty content."""
        return self._chunk({"role": "assistant", "content": ""})

    def _begin(self, index: int, call_id: str, name: str, arguments: str = "") -> bytes:
        n = self._calls[index] = len(self._calls)
        self._ids.add(call_id)
        if arguments:
            self._sent_args.add(index)
        return self._chunk(
            {
                "tool_calls": [
                    {
                        "index": n,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ]
            }
        )

    def _fragment(self, index: int, arguments: str) -> bytes:
        self._sent_args.add(index)
        return self._chunk(
            {"tool_calls": [{"index": self._calls[index], "function": {"arguments": arguments}}]}
        )

    def event(self, event: StreamEvent) -> bytes:
        """The SSE bytes for one event (``b""`` for events the wire does not show)."""
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text}) if event.text else b""
        if isinstance(event, ToolCallDelta):
            if event.index not in self._calls or not event.arguments:
                return b""
            return self._fragment(event.index, event.arguments)
        if isinstance(event, ToolCallStart):
            return self._begin(event.index, event.id, event.name)
        if isinstance(event, ToolCallEnd):
            call = event.call
            if event.index not in self._calls:
                return self._begin(event.index, call.id, call.name, _arguments(call))
            if event.index not in self._sent_args and (call.arguments or call.raw_arguments):
                return self._fragment(event.index, _arguments(call))
            return b""
        if isinstance(event, ReasoningDelta):
            return self._chunk({"reasoning_content": event.text}) if event.text else b""
        if isinstance(event, UsageEvent):
            return b""
        return self.finish(event.response)

    def finish(self, response: ChatResponse) -> bytes:
        """After ``Done``: any call never streamed, the finish chunk, usage, ``[DONE]``."""
        self.done = True
        out = []
        for i, call in enumerate(response.tool_calls):
            # A call the stream never showed (an adapter that reports calls only at
            # the end): whole, under an index of its own.
            if call.id not in self._ids:
                out.append(self._begin(-1 - i, call.id, call.name, _arguments(call)))
        out.append(self._chunk({}, finish_reason(response.finish_reason)))
        if self._include_usage:
            usage = {**self._base, "choices": [], "usage": _usage(response.usage)}
            out.append(sse_data(msgspec.json.encode(usage)))
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)


def _base64_vector(vector: list[float]) -> str:
    """A vector as OpenAI's base64: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def encode_embeddings(response: EmbeddingResponse, *, as_base64: bool = False) -> bytes:
    """``response`` as OpenAI's embeddings list (vectors as base64 float32 if asked)."""
    body = {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": _base64_vector(vector) if as_base64 else vector,
            }
            for i, vector in enumerate(response.vectors)
        ],
        "model": served_model(response),
        "usage": {
            "prompt_tokens": response.usage.input_tokens,
            "total_tokens": response.usage.total_tokens,
        },
    }
    return msgspec.json.encode(body)


def error_body(
    message: str, type_: str, code: str | None, param: str | None, extra: Mapping[str, Any]
) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code", ...}}``."""
    return msgspec.json.encode(
        {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}
    )


def sse_error(message: str, type_: str, code: str | None) -> bytes:
    """An in-stream error event, as OpenAI sends after a 200 has begun."""
    payload = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return sse_data(msgspec.json.encode(payload))
