"""Ollama adapter (the native API: ``/api/chat``, ``/api/embed``, ``/api/tags``).

Wire facts this follows (see the wire-format reference, section 4):

- No key locally (``Authorization: Bearer`` is sent only when a key is given, as
  ollama.com needs).  ``/api/chat`` **streams by default**: ``complete`` sends
  ``"stream": false``.
- Streams are NDJSON, split on ``\\n`` only (:class:`NDJSONDecoder`); the last object has
  ``"done": true``, ``done_reason`` and the counts (``prompt_eval_count`` in,
  ``eval_count`` out, each left out when zero).  An error after the 200 is a line
  ``{"error": "..."}``; a stream that ends without the ``done`` object was cut short.
- Message ``content`` is a plain string; images are a list of bare base64 strings on
  the message (a ``data:`` URL is split, any other URL is :class:`UnsupportedFeature`);
  tool-call ``arguments`` are objects, and calls arrive whole.
- Sampling goes in ``options`` (``num_predict`` is the output cap); ``format`` takes a
  JSON Schema (or ``"json"``); ``think`` turns thinking on.
- There is no ``tool_choice``: ``"none"`` is honoured by not offering the tools, a
  forced tool by offering only that one; ``"required"`` cannot be enforced and is sent
  as plain tools.
- Errors are ``{"error": "<message>"}`` with a plain string; 404 is a model that was
  never pulled (:class:`ModelNotFound`).
- Ollama silently truncates a prompt longer than its context (``num_ctx``, small by
  default): set ``num_ctx`` on the provider for long conversations.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from ._errors import (
    ContextLengthExceeded,
    LLMError,
    ModelNotFound,
    NotFound,
    Overloaded,
    ProtocolError,
    ServerError,
    UnsupportedFeature,
)
from ._http import (
    HTTPEventStream,
    HTTPProvider,
    body_snippet,
    decode_error_json,
    error_for_status,
)
from ._types import (
    Capabilities,
    ChatRequest,
    ChatResponse,
    Done,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    ForceTool,
    ImagePart,
    ModelInfo,
    ReasoningDelta,
    StreamAccumulator,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
    validate_request,
)

__all__ = ["OllamaProvider", "OllamaStreamTranslator", "build_ollama_body", "ollama_finish_reason"]


# --------------------------------------------------------------------------- wire structs


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: Any = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    thinking: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Chunk(msgspec.Struct):
    model: str | None = None
    message: _Message | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    # A plain string from Ollama; anything else from a proxy in front of it.
    error: Any = None

    def usage(self) -> Usage:
        return Usage(input_tokens=self.prompt_eval_count or 0, output_tokens=self.eval_count or 0)


class _Embeddings(msgspec.Struct):
    embeddings: list[list[float]]
    model: str | None = None
    prompt_eval_count: int | None = None


class _Model(msgspec.Struct):
    name: str
    model: str | None = None


class _Tags(msgspec.Struct):
    models: list[_Model] = []


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_embeddings_decoder = msgspec.json.Decoder(_Embeddings)
_tags_decoder = msgspec.json.Decoder(_Tags)

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


def ollama_finish_reason(raw: str | None, *, has_tool_calls: bool) -> FinishReason:
    """Normalise an Ollama ``done_reason`` (``load``/``unload`` are ``other``).

    Example::

        >>> ollama_finish_reason("stop", has_tool_calls=True)
        'tool_calls'
    """
    reason = _FINISH.get(raw or "stop", "other")
    if has_tool_calls and reason == "stop":
        return "tool_calls"
    return reason


def _calls(message: _Message | None) -> list[ToolCall]:
    out: list[ToolCall] = []
    if message is None:
        return out
    for tc in message.tool_calls or ():
        fn = tc.function or _Function()
        call_id = tc.id or f"call_{uuid.uuid4().hex[:24]}"
        if isinstance(fn.arguments, dict) or fn.arguments is None:
            out.append(ToolCall(id=call_id, name=fn.name or "", arguments=fn.arguments or {}))
        else:
            raw = fn.arguments if isinstance(fn.arguments, str) else None
            raw = raw or msgspec.json.encode(fn.arguments).decode()
            out.append(ToolCall(id=call_id, name=fn.name or "", raw_arguments=raw))
    return out


def _error_message(error: Any) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return msgspec.json.encode(error).decode()


def _stream_error(message: str, provider: str) -> LLMError:
    """An ``{"error": ...}`` line inside a 200 stream."""
    lowered = message.lower()
    if "context length" in lowered:
        return ContextLengthExceeded(message, provider=provider)
    if "not found" in lowered and "model" in lowered:
        return ModelNotFound(message, provider=provider)
    if "server busy" in lowered:
        return Overloaded(message, provider=provider)
    return ServerError(message, provider=provider)


# --------------------------------------------------------------------------- translation


def _image(p: ImagePart, provider: str | None) -> str:
    if p.url is not None:
        inline = ImagePart.from_url(p.url)
        if inline.data is None:
            raise UnsupportedFeature(
                "Ollama takes inline images only (base64 or a data: URL), not "
                f"{p.url[:60]!r}; use ImagePart.from_bytes",
                provider=provider,
            )
        p = inline
    assert p.data is not None
    return p.data


def build_ollama_body(
    request: ChatRequest,
    *,
    stream: bool,
    keep_alive: str | float | None = None,
    num_ctx: int | None = None,
    provider: str | None = None,
) -> dict[str, Any]:
    """The ``/api/chat`` body for ``request``.

    ``request.extra`` is merged into the body; an ``"options"`` dict in it is merged
    into the options rather than replacing them.

    Raises:
        UnsupportedFeature: an image is a URL that is not a ``data:`` URL.

    Example::

        >>> from providers import ChatRequest, Message
        >>> build_ollama_body(ChatRequest(model="llama3.2", messages=[Message.user("hi")]),
        ...                   stream=False)
        {'model': 'llama3.2', 'messages': [{'role': 'user', 'content': 'hi'}], 'stream': False}
    """
    names = {c.id: c.name for m in request.messages for c in m.tool_calls}
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "tool":
            messages.append(
                {
                    "role": "tool",
                    "content": m.text,
                    "tool_call_id": m.tool_call_id,
                    "tool_name": m.name or names.get(m.tool_call_id or "", ""),
                }
            )
            continue
        out: dict[str, Any] = {"role": m.role, "content": m.text}
        images = [_image(p, provider) for p in m.images]
        if images:
            out["images"] = images
        if m.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        messages.append(out)
    body: dict[str, Any] = {"model": request.model, "messages": messages}

    tools = request.tools
    choice = request.tool_choice
    if choice == "none":
        tools = []  # no tool_choice in Ollama: not offering them is the only "none"
    elif isinstance(choice, ForceTool):
        tools = [t for t in tools if t.name == choice.name]
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.parameters,
                },
            }
            for t in tools
        ]
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema":
        body["format"] = fmt.schema
    elif fmt is not None and fmt.type == "json_object":
        body["format"] = "json"

    options: dict[str, Any] = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = request.stop
    if request.seed is not None:
        options["seed"] = request.seed
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    extra = dict(request.extra)
    if isinstance(extra.get("options"), dict):
        options.update(extra.pop("options"))
    if options:
        body["options"] = options
    if request.thinking_budget is not None:
        body["think"] = True
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    body["stream"] = stream
    body.update(extra)
    return body


class OllamaStreamTranslator:
    """Pure translation of Ollama's NDJSON stream lines into our events."""

    def __init__(self, *, provider: str, model: str, headers: dict[str, str]) -> None:
        self._acc = StreamAccumulator(provider=provider, model=model)
        self._provider = provider
        self._headers = headers
        self._raw_finish: str | None = None
        self._terminated = False
        self._calls = 0

    @property
    def terminated(self) -> bool:
        return self._terminated

    def feed(self, line: bytes) -> list[StreamEvent]:
        try:
            chunk = _chunk_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(
                f"malformed stream line ({exc}): {line[:120]!r}", provider=self._provider
            ) from exc
        if chunk.error is not None:
            raise _stream_error(_error_message(chunk.error), self._provider)
        if chunk.model:
            self._acc.model = chunk.model
        out: list[StreamEvent] = []
        message = chunk.message
        if message is not None:
            if message.thinking:
                out.append(ReasoningDelta(text=message.thinking))
            if message.content:
                out.append(TextDelta(text=message.content))
            for call in _calls(message):
                index = self._calls
                self._calls += 1
                arguments = call.raw_arguments or msgspec.json.encode(call.arguments).decode()
                out += [
                    ToolCallStart(index=index, id=call.id, name=call.name),
                    ToolCallDelta(index=index, arguments=arguments),
                    ToolCallEnd(index=index, call=call),
                ]
        if chunk.done:
            self._terminated = True
            self._raw_finish = chunk.done_reason or "stop"
            out.append(UsageEvent(usage=chunk.usage()))
        for event in out:
            self._acc.add(event)
        return out

    def finish(self) -> list[StreamEvent]:
        if not self._terminated:
            raise ProtocolError(
                'the stream ended before its "done": true object', provider=self._provider
            )
        response = self._acc.response(
            finish_reason=ollama_finish_reason(self._raw_finish, has_tool_calls=self._calls > 0),
            raw_finish_reason=self._raw_finish,
            headers=self._headers,
        )
        return [Done(response=response)]


# --------------------------------------------------------------------------- the adapter


class OllamaProvider(HTTPProvider):
    """A local (or ollama.com) Ollama server over its native API.

    Args:
        keep_alive: How long Ollama keeps the model loaded after a request (``"10m"``,
            seconds, ``0`` to unload at once); the server's default when ``None``.
        num_ctx: The context window to load the model with.  Ollama's default is small
            and longer prompts are silently truncated.
        **kw: ``name``, ``api_key`` (only for ollama.com), ``base_url``, ``client``,
            ``capabilities``, ``headers``, as for every HTTP provider.

    Example::

        ollama = OllamaProvider(num_ctx=16384)
        resp = await ollama.complete(ChatRequest(model="llama3.2",
                                                 messages=[Message.user("hi")]))
    """

    kind = "ollama"
    default_base_url = "http://localhost:11434"
    #: Inline images only (a ``data:`` URL is fine, it is inline).
    default_capabilities = Capabilities(image_urls=False)

    def __init__(
        self, *, keep_alive: str | float | None = None, num_ctx: int | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self._keep_alive = keep_alive
        self._num_ctx = num_ctx

    def _auth_headers(self) -> dict[str, str]:
        if self._api_key:
            return {"authorization": f"Bearer {self._api_key.reveal()}"}
        return {}

    def _check(self, request: ChatRequest) -> None:
        # Data URLs are inline images, so only the body builder can refuse real URLs.
        caps = msgspec.structs.replace(self._capabilities, image_urls=True)
        validate_request(request, caps)

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The vendor request body for ``request`` (public so tests can check translation)."""
        return build_ollama_body(
            request,
            stream=stream,
            keep_alive=self._keep_alive,
            num_ctx=self._num_ctx,
            provider=self._name,
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` to ``/api/chat`` with ``"stream": false``; the whole answer."""
        self._check(request)
        return await self._send_json(  # type: ignore[no-any-return]
            "POST",
            f"{self._base_url}/api/chat",
            self.build_body(request, stream=False),
            _chunk_decoder.decode,
            lambda chunk, headers: self._to_response(chunk, request, headers),
        )

    def _to_response(
        self, chunk: _Chunk, request: ChatRequest, headers: dict[str, str]
    ) -> ChatResponse:
        if chunk.error is not None:
            raise _stream_error(_error_message(chunk.error), self._name)
        if chunk.message is None:
            raise ProtocolError("the response has no message", provider=self._name)
        calls = _calls(chunk.message)
        return ChatResponse(
            id="",
            model=chunk.model or request.model,
            provider=self._name,
            text=chunk.message.content or "",
            tool_calls=calls,
            finish_reason=ollama_finish_reason(chunk.done_reason, has_tool_calls=bool(calls)),
            raw_finish_reason=chunk.done_reason,
            usage=chunk.usage(),
            reasoning=chunk.message.thinking or None,
            headers=headers,
        )

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[HTTPEventStream]:
        """Stream the answer (NDJSON): ``async with ollama.stream(req) as events``."""
        self._check(request)

        def translator(headers: dict[str, str]) -> OllamaStreamTranslator:
            return OllamaStreamTranslator(provider=self._name, model=request.model, headers=headers)

        return self._open_stream(
            f"{self._base_url}/api/chat",
            self.build_body(request, stream=True),
            translator,
            framing="ndjson",
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed ``request.inputs`` with ``/api/embed`` (Ollama normalises the vectors)."""
        body: dict[str, Any] = {"model": request.model, "input": request.inputs}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if self._keep_alive is not None:
            body["keep_alive"] = self._keep_alive
        data = await self._send_json(
            "POST", f"{self._base_url}/api/embed", body, _embeddings_decoder.decode
        )
        if len(data.embeddings) != len(request.inputs):
            raise ProtocolError(
                f"asked for {len(request.inputs)} embeddings, got {len(data.embeddings)}",
                provider=self._name,
            )
        return EmbeddingResponse(
            model=self._scrub(data.model or request.model),
            provider=self._name,
            vectors=data.embeddings,
            usage=Usage(input_tokens=data.prompt_eval_count or 0),
        )

    async def list_models(self) -> list[ModelInfo]:
        """The models pulled to this server (``/api/tags``)."""
        data = await self._send_json(
            "GET", f"{self._base_url}/api/tags", None, _tags_decoder.decode
        )
        scrub = self._scrub  # names are the upstream's text: they may echo the key
        return [ModelInfo(id=scrub(m.name), provider=self._name) for m in data.models]

    # -- errors: the one mapping place ------------------------------------------------

    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        message = body_snippet(body)
        parsed = decode_error_json(body)
        if isinstance(parsed, dict) and parsed.get("error") is not None:
            message = _error_message(parsed["error"])
        error = error_for_status(status, message, provider=self._name, headers=headers)
        kw: dict[str, Any] = {
            "provider": self._name,
            "status_code": status,
            "retry_after": error.retry_after,
            "headers": headers,
        }
        lowered = message.lower()
        if status == 404:
            # A model never pulled; any other 404 means the base URL is wrong.
            cls = ModelNotFound if "model" in lowered else NotFound
            return cls(message, **kw)
        if status == 400 and "context length" in lowered:
            return ContextLengthExceeded(message, **kw)
        return error
