"""OpenAI Chat Completions adapter (and the base of every OpenAI-compatible one).

Wire facts this follows (see the wire-format reference, section 1):

- ``max_completion_tokens`` (``max_tokens`` is deprecated and refused by o-series models);
  compatible servers that only know ``max_tokens`` set :attr:`max_tokens_field`.
- Streams are SSE ``data:`` lines ending with ``data: [DONE]``; usage arrives in an extra
  chunk with ``choices: []`` when ``stream_options.include_usage`` is on.
- Tool-call arguments stream as string fragments per ``index``; the first fragment has
  the id and name.  Tool calls are detected by their presence, not the finish reason.
- Vendors add fields all the time (Azure filter results, ``x_groq``, ``obfuscation``):
  the wire structs here ignore unknown fields, and guard every ``choices[0].delta``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias

import msgspec

from ._errors import (
    AuthenticationError,
    ContentFiltered,
    ContextLengthExceeded,
    LLMError,
    ModelNotFound,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    ServerError,
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
    parse_tool_arguments,
    validate_request,
)

__all__ = [
    "OpenAIProvider",
    "OpenAIStreamTranslator",
    "StreamErrorMapper",
    "openai_finish_reason",
]

#: Maps an error object found inside a 200 response (``code``, ``type``, ``message``) to
#: our tree; adapters for OpenAI-compatible vendors refine it (OpenRouter's numeric codes).
StreamErrorMapper: TypeAlias = Callable[[str | int | None, str | None, str], LLMError]


# --------------------------------------------------------------------------- wire structs
# Lenient on purpose: unknown fields are ignored, nulls accepted everywhere.


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Function | None = None
    index: int = 0


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None
    reasoning_content: str | None = None  # vLLM, DeepSeek
    reasoning: str | None = None  # OpenRouter


class _ErrorBody(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None
    param: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None
    error: _ErrorBody | None = None  # OpenRouter: errors during generation arrive here


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None

    def to_usage(self) -> Usage:
        pd, cd = self.prompt_tokens_details, self.completion_tokens_details
        return Usage(
            input_tokens=self.prompt_tokens or 0,
            output_tokens=self.completion_tokens or 0,
            cached_input_tokens=(pd.cached_tokens or 0) if pd else 0,
            cache_write_tokens=(pd.cache_write_tokens or 0) if pd else 0,
            reasoning_tokens=(cd.reasoning_tokens or 0) if cd else 0,
        )


class _XGroq(msgspec.Struct):
    usage: _Usage | None = None


class _Completion(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: _ErrorBody | None = None
    x_groq: _XGroq | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | str | None = None


class _Embedding(msgspec.Struct):
    index: int = 0
    embedding: list[float] = []


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]
    model: str | None = None
    usage: _Usage | None = None


class _Model(msgspec.Struct):
    id: str
    owned_by: str | None = None
    context_length: int | None = None  # OpenRouter, vLLM (max_model_len) differ; best effort


class _Models(msgspec.Struct):
    data: list[_Model]


_completion_decoder = msgspec.json.Decoder(_Completion)
_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)
_embeddings_decoder = msgspec.json.Decoder(_Embeddings)
_models_decoder = msgspec.json.Decoder(_Models)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
}

_CONTEXT_NUMBERS = re.compile(
    r"maximum context length is (\d+) tokens.*?(?:resulted in|requested) (\d+) tokens", re.S
)


def openai_finish_reason(raw: str | None, *, has_tool_calls: bool) -> FinishReason:
    """Normalise an OpenAI finish reason; tool calls are detected by their presence."""
    reason = _FINISH.get(raw or "stop", "other")
    if has_tool_calls and reason == "stop":
        return "tool_calls"
    return reason


# --------------------------------------------------------------------------- translation


def _message_to_wire(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text}
    out: dict[str, Any] = {"role": m.role}
    if isinstance(m.content, str) or m.role != "user":
        out["content"] = m.text if (m.text or not m.tool_calls) else None
    else:
        parts: list[dict[str, Any]] = []
        for p in m.content:
            if isinstance(p, TextPart):
                parts.append({"type": "text", "text": p.text})
            else:
                image: dict[str, Any] = {"url": p.data_url}
                if p.detail:
                    image["detail"] = p.detail
                parts.append({"type": "image_url", "image_url": image})
        out["content"] = parts
    if m.name and m.role == "user":
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.raw_arguments
                    if c.raw_arguments is not None
                    else msgspec.json.encode(c.arguments).decode(),
                },
            }
            for c in m.tool_calls
        ]
    return out


class OpenAIStreamTranslator:
    """Pure translation of OpenAI ``chat.completion.chunk`` SSE events into our events."""

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        headers: dict[str, str],
        map_error: StreamErrorMapper | None = None,
    ) -> None:
        self._acc = StreamAccumulator(provider=provider, model=model)
        self._provider = provider
        self._map_error = map_error
        self._headers = headers
        self._raw_finish: str | None = None
        self._seen_finish = False
        self._terminated = False
        self._started: set[int] = set()
        self._ended: set[int] = set()
        self._events: list[StreamEvent] = []

    @property
    def terminated(self) -> bool:
        return self._terminated

    def _emit(self, event: StreamEvent) -> None:
        self._acc.add(event)
        self._events.append(event)

    def feed(self, item: ServerSentEvent) -> list[StreamEvent]:
        data = item.data
        if data.startswith("[DONE]"):
            self._terminated = True
            return []
        if not data.strip():
            return []
        try:
            chunk = _completion_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(
                f"malformed stream chunk ({exc}): {data[:120]!r}", provider=self._provider
            ) from exc
        if chunk.error is not None:
            raise self._error(chunk.error)
        self._events = []
        if chunk.id and not self._acc.id:
            self._acc.id = chunk.id
        if chunk.model:
            self._acc.model = chunk.model
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            if choice.error is not None:
                raise self._error(choice.error)
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    self._emit(ReasoningDelta(text=reasoning))
                if delta.content:
                    self._emit(TextDelta(text=delta.content))
                for tc in delta.tool_calls or ():
                    self._tool_fragment(tc)
            if choice.finish_reason is not None:
                self._seen_finish = True
                self._raw_finish = choice.finish_reason
                if choice.finish_reason == "error":
                    raise ServerError(
                        "the provider reported an error during generation",
                        provider=self._provider,
                    )
                self._end_calls()
        usage = chunk.usage or (chunk.x_groq.usage if chunk.x_groq else None)
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            self._emit(UsageEvent(usage=usage.to_usage()))
        return self._events

    def _error(self, err: _ErrorBody) -> LLMError:
        message = err.message or "error in stream"
        if self._map_error is not None:
            return self._map_error(err.code, err.type, message)
        return _stream_error(err, self._provider)

    def _tool_fragment(self, tc: _ToolCall) -> None:
        index = tc.index
        fn = tc.function
        if index not in self._started:
            self._started.add(index)
            self._emit(
                ToolCallStart(
                    index=index, id=tc.id or f"call_{index}", name=(fn.name if fn else None) or ""
                )
            )
        if fn is not None and fn.arguments:
            self._emit(ToolCallDelta(index=index, arguments=fn.arguments))

    def _end_calls(self) -> None:
        for index in sorted(self._started - self._ended):
            call = self._acc.finish_call(index)
            if call is not None:
                self._ended.add(index)
                self._emit(ToolCallEnd(index=index, call=call))

    def finish(self) -> list[StreamEvent]:
        if not self._terminated and not self._seen_finish:
            raise ProtocolError(
                "the stream ended before its finish reason or [DONE]", provider=self._provider
            )
        self._events = []
        self._end_calls()
        has_calls = bool(self._started)
        response = self._acc.response(
            finish_reason=openai_finish_reason(self._raw_finish, has_tool_calls=has_calls),
            raw_finish_reason=self._raw_finish,
            request_id=self._headers.get("x-request-id"),
            headers=self._headers,
        )
        self._events.append(Done(response=response))
        return self._events


def _stream_error(err: _ErrorBody, provider: str) -> LLMError:
    message = err.message or "error in stream"
    code = str(err.code) if err.code is not None else (err.type or "")
    if "rate_limit" in code:
        return RateLimited(message, provider=provider)
    if code in {"invalid_api_key", "authentication_error"}:
        return AuthenticationError(message, provider=provider)
    return ServerError(message, provider=provider)


# --------------------------------------------------------------------------- the adapter


class OpenAIProvider(HTTPProvider):
    """OpenAI Chat Completions, embeddings and model listing over httpx.

    Example::

        async with httpx.AsyncClient() as client:
            openai = OpenAIProvider(api_key=Secret(os.environ["OPENAI_API_KEY"]), client=client)
            resp = await openai.complete(ChatRequest(model="gpt-4o-mini",
                                                     messages=[Message.user("hi")]))
    """

    kind = "openai"
    default_base_url = "https://api.openai.com/v1"
    #: The body field for the output token cap (a class default an instance may override).
    max_tokens_field: str = "max_completion_tokens"

    def __init__(
        self,
        *,
        organization: str | None = None,
        project: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self._organization = organization
        self._project = project

    def _auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key.reveal()}"
        if self._organization:
            headers["openai-organization"] = self._organization
        if self._project:
            headers["openai-project"] = self._project
        return headers

    # -- requests ---------------------------------------------------------------------

    def _chat_url(self, request: ChatRequest) -> str:
        return f"{self._base_url}/chat/completions"

    def _embeddings_url(self, request: EmbeddingRequest) -> str:
        return f"{self._base_url}/embeddings"

    def _models_url(self) -> str:
        return f"{self._base_url}/models"

    def _in_band_error(
        self, code: str | int | None, err_type: str | None, message: str
    ) -> LLMError:
        """The error for an error object inside a 200 response (stream chunk or choice).

        Subclasses refine it per vendor; the adapter's boundary scrubs the message of the
        key like any other (:func:`~providers._http.seal_error`).
        """
        return _stream_error(_ErrorBody(message=message, type=err_type, code=code), self._name)

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The vendor request body for ``request`` (public so tests can check translation)."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [_message_to_wire(m) for m in request.messages],
        }
        if request.max_tokens is not None:
            body[self.max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        **({"description": t.description} if t.description else {}),
                        "parameters": t.parameters,
                        **({"strict": t.strict} if t.strict is not None else {}),
                    },
                }
                for t in request.tools
            ]
        choice = request.tool_choice
        if isinstance(choice, ForceTool):
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice is not None:
            body["tool_choice"] = choice
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema, "strict": fmt.strict}
            if fmt.description:
                schema["description"] = fmt.description
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(request.extra)
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` and return the whole answer."""
        validate_request(request, self._capabilities)
        return await self._send_json(  # type: ignore[no-any-return]
            "POST",
            self._chat_url(request),
            self.build_body(request, stream=False),
            _completion_decoder.decode,
            lambda completion, headers: self._to_response(completion, request, headers),
        )

    def _to_response(
        self, c: _Completion, request: ChatRequest, headers: dict[str, str]
    ) -> ChatResponse:
        if c.error is not None:
            raise self._in_band_error(
                c.error.code, c.error.type, c.error.message or "error in stream"
            )
        choices = c.choices or []
        if not choices or choices[0].message is None:
            raise ProtocolError("the response has no choices", provider=self._name)
        choice = choices[0]
        if choice.error is not None:
            err = choice.error
            raise self._in_band_error(err.code, err.type, err.message or "error in stream")
        msg = choice.message
        assert msg is not None
        calls: list[ToolCall] = []
        for i, tc in enumerate(msg.tool_calls or ()):
            fn = tc.function or _Function()
            args, bad = parse_tool_arguments(fn.arguments or "")
            calls.append(
                ToolCall(
                    id=tc.id or f"call_{i}", name=fn.name or "", arguments=args, raw_arguments=bad
                )
            )
        if choice.finish_reason == "content_filter" and not msg.content and not calls:
            raise ContentFiltered(
                "the provider's content filter blocked the output", provider=self._name
            )
        usage = c.usage or (c.x_groq.usage if c.x_groq else None)
        return ChatResponse(
            id=c.id or "",
            model=c.model or request.model,
            provider=self._name,
            text=msg.content or msg.refusal or "",
            tool_calls=calls,
            finish_reason=openai_finish_reason(choice.finish_reason, has_tool_calls=bool(calls)),
            raw_finish_reason=choice.finish_reason,
            usage=usage.to_usage() if usage else Usage(),
            reasoning=msg.reasoning_content or msg.reasoning,
            request_id=headers.get("x-request-id"),
            headers=headers,
        )

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[HTTPEventStream]:
        """Stream the answer: ``async with provider.stream(req) as events``."""
        validate_request(request, self._capabilities)

        def translator(headers: dict[str, str]) -> OpenAIStreamTranslator:
            return OpenAIStreamTranslator(
                provider=self._name,
                model=request.model,
                headers=headers,
                map_error=self._in_band_error,
            )

        return self._open_stream(
            self._chat_url(request), self.build_body(request, stream=True), translator
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed ``request.inputs`` with ``/embeddings``."""
        body: dict[str, Any] = {
            "model": request.model,
            "input": request.inputs,
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        data = await self._send_json(
            "POST", self._embeddings_url(request), body, _embeddings_decoder.decode
        )
        if len(data.data) != len(request.inputs):
            raise ProtocolError(
                f"asked for {len(request.inputs)} embeddings, got {len(data.data)}",
                provider=self._name,
            )
        vectors = [e.embedding for e in sorted(data.data, key=lambda e: e.index)]
        usage = data.usage.to_usage() if data.usage else Usage()
        return EmbeddingResponse(
            model=self._scrub(data.model or request.model),
            provider=self._name,
            vectors=vectors,
            usage=usage,
        )

    async def list_models(self) -> list[ModelInfo]:
        """The models at ``/models``."""
        data = await self._send_json("GET", self._models_url(), None, _models_decoder.decode)
        scrub = self._scrub  # ids are the upstream's text: they may echo the key
        return [
            ModelInfo(
                id=scrub(m.id),
                provider=self._name,
                owned_by=None if m.owned_by is None else scrub(m.owned_by),
                context_window=m.context_length,
            )
            for m in data.data
        ]

    # -- errors: the one mapping place ------------------------------------------------

    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        message = body_snippet(body)
        code: str | None = None
        err_type: str | None = None
        parsed = decode_error_json(body)
        if parsed is not None:
            try:
                env = msgspec.convert(parsed, _ErrorEnvelope)
            except msgspec.ValidationError:
                env = _ErrorEnvelope()
            if isinstance(env.error, _ErrorBody):
                message = env.error.message or message
                code = str(env.error.code) if isinstance(env.error.code, str) else None
                err_type = env.error.type
            elif isinstance(env.error, str):
                message = env.error
        kind = code or err_type
        error = error_for_status(status, message, provider=self._name, headers=headers, code=kind)
        kw: dict[str, Any] = {
            "provider": self._name,
            "status_code": status,
            "request_id": error.request_id,
            "retry_after": error.retry_after,
            "headers": headers,
        }
        if code == "context_length_exceeded" or (
            status == 400 and "maximum context length" in message
        ):
            m = _CONTEXT_NUMBERS.search(message)
            return ContextLengthExceeded(
                message,
                limit=int(m.group(1)) if m else None,
                requested=int(m.group(2)) if m else None,
                **kw,
            )
        if "insufficient_quota" in (code, err_type):
            return QuotaExceeded(message, **kw)
        if code == "invalid_api_key":
            return AuthenticationError(message, **kw)
        if code == "content_filter":
            return ContentFiltered(message, **kw)
        if status == 404 and (
            code in {"model_not_found", "DeploymentNotFound"} or "model" in message
        ):
            return ModelNotFound(message, **kw)
        return error
