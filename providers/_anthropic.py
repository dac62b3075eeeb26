"""Anthropic Messages adapter.

Wire facts this follows (see the wire-format reference, section 2):

- No system role: system messages become the top-level ``system``; tool results are
  ``tool_result`` blocks inside a **user** turn (consecutive results share one turn).
- ``max_tokens`` is required: :attr:`AnthropicProvider.default_max_tokens` fills it in.
- ``temperature`` is 0..1 here (0..2 elsewhere): a larger one is refused before sending.
- Usage: ``input_tokens`` excludes cache reads and writes; we add them back so that
  :attr:`Usage.input_tokens` is the whole prompt everywhere.  ``message_delta`` usage is
  cumulative.
- Streams are SSE with ``event:`` names; we dispatch on the name, ignore ``ping`` and
  unknown events, treat ``event: error`` as the in-stream form of an HTTP error, and end
  at ``message_stop``.
"""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from ._errors import (
    AuthenticationError,
    ContextLengthExceeded,
    InvalidRequest,
    LLMError,
    ModelNotFound,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    ServerError,
    Timeout,
    UnsupportedFeature,
)
from ._http import (
    HTTPEventStream,
    HTTPProvider,
    body_snippet,
    decode_error_json,
    error_for_status,
)
from ._sse import ServerSentEvent
from ._types import (
    Capabilities,
    ChatRequest,
    ChatResponse,
    Done,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    ForceTool,
    Message,
    ModelInfo,
    ReasoningDelta,
    StreamAccumulator,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
    validate_request,
)

__all__ = ["AnthropicProvider", "AnthropicStreamTranslator", "anthropic_finish_reason"]

API_VERSION = "2023-06-01"


# --------------------------------------------------------------------------- wire structs


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Message(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    content: list[_Block] | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class _ErrorBody(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _Event(msgspec.Struct):
    type: str | None = None
    message: _Message | None = None
    index: int = 0
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _ErrorBody | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | None = None
    request_id: str | None = None


class _Model(msgspec.Struct):
    id: str
    max_input_tokens: int | None = None


class _Models(msgspec.Struct):
    data: list[_Model]


_message_decoder = msgspec.json.Decoder(_Message)
_event_decoder = msgspec.json.Decoder(_Event)
_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)
_models_decoder = msgspec.json.Decoder(_Models)

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_PROMPT_TOO_LONG = re.compile(r"prompt is too long:\s*(\d+)\s*tokens\s*>\s*(\d+)")


def anthropic_finish_reason(raw: str | None, *, structured: bool = False) -> FinishReason:
    """Normalise an Anthropic ``stop_reason`` (a forced structured tool's ``tool_use`` is
    the natural end of the answer: ``"stop"``)."""
    if structured and raw == "tool_use":
        return "stop"
    return _FINISH.get(raw or "end_turn", "other")


_TOOL_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def structured_tool(request: ChatRequest) -> str | None:
    """The name of the tool that carries ``request``'s structured output, if one does.

    A ``json_schema`` response format whose schema is an object goes to Anthropic as one
    tool with that schema as its ``input_schema``, forced with ``tool_choice``; the tool
    call's input is the answer, returned as the response's text (JSON).  This works on
    every Claude model that takes tools.  A request that has tools of its own, or asks
    for thinking (which forced tool choice excludes), or whose schema's root is not an
    object, uses ``output_config.format`` (structured outputs, on the models that have
    it) instead.
    """
    fmt = request.response_format
    if fmt is None or fmt.type != "json_schema" or request.tools:
        return None
    if request.thinking_budget is not None:
        return None
    schema = fmt.schema or {}
    if schema.get("type") != "object":
        return None
    return _TOOL_NAME_CHARS.sub("_", fmt.name)[:64] or "response"


def _usage(u: _Usage | None, previous: Usage | None = None) -> Usage:
    """Our usage from Anthropic's; fields missing from ``u`` keep ``previous`` values."""
    prev = previous or Usage()
    if u is None:
        return prev
    read = u.cache_read_input_tokens
    write = u.cache_creation_input_tokens
    base = u.input_tokens
    cached = prev.cached_input_tokens if read is None else read
    written = prev.cache_write_tokens if write is None else write
    input_tokens = prev.input_tokens if base is None else base + cached + written
    return Usage(
        input_tokens=input_tokens,
        output_tokens=prev.output_tokens if u.output_tokens is None else u.output_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=written,
    )


def _error_from_type(
    err_type: str | None, message: str, *, provider: str, status: int | None, **kw: Any
) -> LLMError | None:
    cls: type[LLMError] | None = {
        "authentication_error": AuthenticationError,
        "permission_error": PermissionDenied,
        "billing_error": QuotaExceeded,
        "rate_limit_error": RateLimited,
        "overloaded_error": Overloaded,
        "api_error": ServerError,
        "timeout_error": Timeout,
        "request_too_large": InvalidRequest,
    }.get(err_type or "")
    if err_type == "not_found_error":
        cls = ModelNotFound if "model" in message.lower() else NotFound
    if err_type == "invalid_request_error":
        m = _PROMPT_TOO_LONG.search(message)
        if m:
            return ContextLengthExceeded(
                message,
                requested=int(m.group(1)),
                limit=int(m.group(2)),
                provider=provider,
                status_code=status,
                **kw,
            )
        cls = InvalidRequest
    if cls is RateLimited and "spend" in message.lower():
        cls = QuotaExceeded  # a spend-cap 429 is not fixed by waiting
    if cls is None:
        return None
    return cls(message, provider=provider, status_code=status, **kw)


# --------------------------------------------------------------------------- translation


def _content_blocks(m: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for p in m.parts:
        if isinstance(p, TextPart):
            if p.text:
                blocks.append({"type": "text", "text": p.text})
        elif p.data is not None:
            source = {"type": "base64", "media_type": p.media_type, "data": p.data}
            blocks.append({"type": "image", "source": source})
        else:
            blocks.append({"type": "image", "source": {"type": "url", "url": p.url}})
    return blocks


def build_messages(messages: list[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """Split ``messages`` into Anthropic's top-level system and its user/assistant turns."""
    system = "\n\n".join(m.text for m in messages if m.role == "system") or None
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": m.text,
            }
            if m.is_error:
                result["is_error"] = True
            last = turns[-1] if turns else None
            if last is not None and last["role"] == "user" and last.get("_tool_results"):
                last["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result], "_tool_results": True})
            continue
        if m.role == "assistant":
            blocks = _content_blocks(m)
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            )
            turns.append({"role": "assistant", "content": blocks})
            continue
        if isinstance(m.content, str):
            turns.append({"role": "user", "content": m.content})
        else:
            turns.append({"role": "user", "content": _content_blocks(m)})
    for t in turns:
        t.pop("_tool_results", None)
    return system, turns


class AnthropicStreamTranslator:
    """Pure translation of Anthropic's named SSE events into our events."""

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        headers: dict[str, str],
        structured_tool: str | None = None,
    ) -> None:
        self._acc = StreamAccumulator(provider=provider, model=model)
        # The forced tool carrying structured output (see structured_tool): its input
        # streams as the answer's text.
        self._structured_tool = structured_tool
        self._structured_blocks: set[int] = set()
        self._provider = provider
        self._headers = headers
        self._usage: Usage | None = None
        self._raw_finish: str | None = None
        self._terminated = False
        self._tool_blocks: set[int] = set()

    @property
    def terminated(self) -> bool:
        return self._terminated

    def feed(self, item: ServerSentEvent) -> list[StreamEvent]:
        name = item.event
        if name == "ping":
            return []
        try:
            ev = _event_decoder.decode(item.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(
                f"malformed stream event {name!r} ({exc}): {item.data[:120]!r}",
                provider=self._provider,
            ) from exc
        if name == "message":  # no event: line; fall back to the payload's type
            name = ev.type or ""
        out: list[StreamEvent] = []
        if name == "message_start" and ev.message is not None:
            self._acc.id = ev.message.id or self._acc.id
            self._acc.model = ev.message.model or self._acc.model
            self._usage = _usage(ev.message.usage, self._usage)
            out.append(UsageEvent(usage=self._usage))
        elif name == "content_block_start" and ev.content_block is not None:
            block = ev.content_block
            structured = self._structured_tool
            if block.type == "tool_use" and structured is not None and block.name == structured:
                self._structured_blocks.add(ev.index)
            elif block.type == "tool_use":
                self._tool_blocks.add(ev.index)
                out.append(ToolCallStart(index=ev.index, id=block.id or "", name=block.name or ""))
            elif block.type == "text" and block.text:
                out.append(TextDelta(text=block.text))
            elif block.type == "thinking" and block.thinking:
                out.append(ReasoningDelta(text=block.thinking))
        elif name == "content_block_delta" and ev.delta is not None:
            d = ev.delta
            if d.type == "text_delta" and d.text:
                out.append(TextDelta(text=d.text))
            elif d.type == "input_json_delta" and d.partial_json:
                if ev.index in self._structured_blocks:
                    out.append(TextDelta(text=d.partial_json))
                else:
                    out.append(ToolCallDelta(index=ev.index, arguments=d.partial_json))
            elif d.type == "thinking_delta" and d.thinking:
                out.append(ReasoningDelta(text=d.thinking))
        elif name == "content_block_stop":
            if ev.index in self._tool_blocks:
                self._tool_blocks.discard(ev.index)
                for e in out:
                    self._acc.add(e)
                call = self._acc.finish_call(ev.index)
                if call is not None:
                    end = ToolCallEnd(index=ev.index, call=call)
                    self._acc.add(end)
                    return [end]
        elif name == "message_delta":
            if ev.delta is not None and ev.delta.stop_reason is not None:
                self._raw_finish = ev.delta.stop_reason
            if ev.usage is not None:
                self._usage = _usage(ev.usage, self._usage)
                out.append(UsageEvent(usage=self._usage))
        elif name == "message_stop":
            self._terminated = True
        elif name == "error":
            err = ev.error or _ErrorBody()
            message = err.message or "error in stream"
            raise _error_from_type(
                err.type, message, provider=self._provider, status=None
            ) or ServerError(message, provider=self._provider)
        for e in out:
            self._acc.add(e)
        return out

    def finish(self) -> list[StreamEvent]:
        if not self._terminated:
            raise ProtocolError("the stream ended before message_stop", provider=self._provider)
        out: list[StreamEvent] = []
        for index in self._acc.open_calls():
            call = self._acc.finish_call(index)
            if call is not None:
                end = ToolCallEnd(index=index, call=call)
                self._acc.add(end)
                out.append(end)
        response = self._acc.response(
            finish_reason=anthropic_finish_reason(
                self._raw_finish, structured=self._structured_tool is not None
            ),
            raw_finish_reason=self._raw_finish,
            request_id=self._headers.get("request-id"),
            headers=self._headers,
        )
        out.append(Done(response=response))
        return out


# --------------------------------------------------------------------------- the adapter


class AnthropicProvider(HTTPProvider):
    """Anthropic Messages over httpx.

    Example::

        anthropic = AnthropicProvider(api_key=Secret(os.environ["ANTHROPIC_API_KEY"]))
        resp = await anthropic.complete(ChatRequest(model="claude-3-5-haiku-latest",
                                                    messages=[Message.user("hi")]))
    """

    kind = "anthropic"
    default_base_url = "https://api.anthropic.com"
    default_capabilities = Capabilities(embeddings=False)
    #: ``max_tokens`` is required by the API; used when the request sets none.
    default_max_tokens = 4096

    def __init__(self, *, beta: list[str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._beta = list(beta or [])

    def _auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key.reveal()
        if self._beta:
            headers["anthropic-beta"] = ",".join(self._beta)
        return headers

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The vendor request body for ``request`` (public so tests can check translation)."""
        if request.temperature is not None and request.temperature > 1.0:
            raise InvalidRequest(
                f"Anthropic takes temperature between 0 and 1, got {request.temperature}",
                provider=self._name,
            )
        system, turns = build_messages(request.messages)
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or self.default_max_tokens,
            "messages": turns,
        }
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.tools:
            body["tools"] = [
                {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "input_schema": t.parameters,
                    **({"strict": t.strict} if t.strict is not None else {}),
                }
                for t in request.tools
            ]
        choice = request.tool_choice
        if isinstance(choice, ForceTool):
            body["tool_choice"] = {"type": "tool", "name": choice.name}
        elif choice is not None:
            body["tool_choice"] = {"type": {"required": "any"}.get(choice, choice)}
        fmt = request.response_format
        tool = structured_tool(request)
        if tool is not None and fmt is not None:
            # Structured output as a forced tool: every Claude model with tools takes it.
            spec: dict[str, Any] = {"name": tool, "input_schema": fmt.schema}
            if fmt.description:
                spec["description"] = fmt.description
            body["tools"] = [spec]
            body["tool_choice"] = {"type": "tool", "name": tool}
        elif fmt is not None and fmt.type != "text":
            schema = fmt.schema if fmt.type == "json_schema" else {"type": "object"}
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if request.thinking_budget is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": request.thinking_budget}
        if stream:
            body["stream"] = True
        body.update(request.extra)
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` and return the whole answer."""
        validate_request(request, self._capabilities)
        return await self._send_json(  # type: ignore[no-any-return]
            "POST",
            f"{self._base_url}/v1/messages",
            self.build_body(request, stream=False),
            _message_decoder.decode,
            lambda msg, headers: self._to_response(msg, request, headers),
        )

    def _to_response(
        self, msg: _Message, request: ChatRequest, headers: dict[str, str]
    ) -> ChatResponse:
        tool = structured_tool(request)
        text: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCall] = []
        for block in msg.content or ():
            if tool is not None and block.type == "tool_use" and block.name == tool:
                text.append(msgspec.json.encode(block.input).decode())
            elif block.type == "text" and block.text and tool is None:
                text.append(block.text)
            elif block.type == "thinking" and block.thinking:
                thinking.append(block.thinking)
            elif block.type == "tool_use":
                args = block.input if isinstance(block.input, dict) else {}
                bad = None if isinstance(block.input, dict) else msgspec.json.encode(block.input)
                calls.append(
                    ToolCall(
                        id=block.id or "",
                        name=block.name or "",
                        arguments=args,
                        raw_arguments=bad.decode() if bad is not None else None,
                    )
                )
        if msg.id is None and msg.content is None:
            raise ProtocolError("the response is not a message", provider=self._name)
        return ChatResponse(
            id=msg.id or "",
            model=msg.model or request.model,
            provider=self._name,
            text="".join(text),
            tool_calls=calls,
            finish_reason=anthropic_finish_reason(msg.stop_reason, structured=tool is not None),
            raw_finish_reason=msg.stop_reason,
            usage=_usage(msg.usage),
            reasoning="".join(thinking) or None,
            request_id=headers.get("request-id"),
            headers=headers,
        )

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[HTTPEventStream]:
        """Stream the answer: ``async with provider.stream(req) as events``."""
        validate_request(request, self._capabilities)

        tool = structured_tool(request)

        def translator(headers: dict[str, str]) -> AnthropicStreamTranslator:
            return AnthropicStreamTranslator(
                provider=self._name,
                model=request.model,
                headers=headers,
                structured_tool=tool,
            )

        return self._open_stream(
            f"{self._base_url}/v1/messages", self.build_body(request, stream=True), translator
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Anthropic has no embeddings endpoint."""
        raise UnsupportedFeature(
            "Anthropic has no embeddings API; route embeddings to another provider",
            provider=self._name,
        )

    async def list_models(self) -> list[ModelInfo]:
        """The models at ``/v1/models``."""
        data = await self._send_json(
            "GET", f"{self._base_url}/v1/models", None, _models_decoder.decode
        )
        return [
            ModelInfo(id=self._scrub(m.id), provider=self._name, context_window=m.max_input_tokens)
            for m in data.data
        ]

    # -- errors: the one mapping place ------------------------------------------------

    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        message = body_snippet(body)
        err_type: str | None = None
        parsed = decode_error_json(body)
        request_id = headers.get("request-id")
        if isinstance(parsed, dict):
            try:
                env = msgspec.convert(parsed, _ErrorEnvelope)
            except msgspec.ValidationError:
                env = _ErrorEnvelope()
            if env.error is not None:
                message = env.error.message or message
                err_type = env.error.type
            request_id = env.request_id or request_id
        default = error_for_status(status, message, provider=self._name, headers=headers)
        if status in (503, 529):
            err_type = "overloaded_error"  # overloaded, whatever type the body names
        typed = _error_from_type(
            err_type,
            message,
            provider=self._name,
            status=status,
            request_id=request_id,
            retry_after=default.retry_after,
            headers=headers,
        )
        if typed is None:
            return default
        if "x-should-retry" in headers:
            typed.retryable = headers["x-should-retry"] == "true"  # type: ignore[misc]
        return typed
