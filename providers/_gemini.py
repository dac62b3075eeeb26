"""Google Gemini adapter (the Generative Language API, native REST).

Wire facts this follows (see the wire-format reference, section 3):

- The key goes in ``x-goog-api-key`` (never in the URL, where it would be logged); the
  model is in the path: ``models/{model}:generateContent``.
- No system role: system messages become the top-level ``systemInstruction``; the
  assistant role is ``model``; tool results are ``functionResponse`` parts in one
  ``user`` turn that answers the previous turn's calls one for one.
- Function calls arrive whole, with ``args`` as an object; their ``id`` is optional (we
  make one when it is missing).  Gemini 3 signs calls with a ``thoughtSignature`` that
  must come back unchanged next turn: the provider remembers the signatures of the
  calls it returned and puts them back on those calls when the history is sent again.
- Structured output and tool parameters are sent as real JSON Schema
  (``responseJsonSchema``, ``parametersJsonSchema``), so ``$ref``, ``anyOf`` and
  ``additionalProperties`` from e.g. ``msgspec.json.schema`` work; ``json_schema=False``
  sends the older OpenAPI-subset fields ``responseSchema``/``parameters`` instead; a
  response schema is then converted to that subset (:func:`openapi_schema`: references
  inlined, ``nullable`` for null branches, unknown keys dropped).
- Images must be inline (``inlineData``): a ``data:`` URL is split, any other URL is
  :class:`UnsupportedFeature`.
- Streams are ``:streamGenerateContent?alt=sse``: SSE with CRLF line ends and no
  terminator, so end of body ends the stream and a missing ``finishReason`` means it was
  cut short.  ``usageMetadata`` rides on several chunks; the last one wins.
- A blocked prompt is a 200 without candidates and with ``promptFeedback.blockReason``:
  :class:`ContentFiltered`.  An invalid key is a **400** whose ``ErrorInfo.reason`` is
  ``API_KEY_INVALID``: :class:`AuthenticationError`.  A 429's wait is in a
  ``google.rpc.RetryInfo`` detail (``"retryDelay": "37s"``), not a header.

Finish reasons:

=============================================================  ==================
``STOP``                                                       ``stop`` (``tool_calls``
                                                               when calls came back)
``MAX_TOKENS``                                                 ``length``
``SAFETY``, ``RECITATION``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``,  ``content_filter``
``SPII``, ``IMAGE_SAFETY``, ``IMAGE_PROHIBITED_CONTENT``,
``IMAGE_RECITATION``
``MALFORMED_FUNCTION_CALL``, ``UNEXPECTED_TOOL_CALL``,         ``error``
``TOO_MANY_TOOL_CALLS``
anything else (``LANGUAGE``, ``OTHER``, ``NO_IMAGE``...)         ``other``
=============================================================  ==================
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import quote

import msgspec

from ._errors import (
    AuthenticationError,
    ContentFiltered,
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
    UnsupportedFeature,
)
from ._http import (
    HTTPEventStream,
    HTTPProvider,
    body_snippet,
    decode_error_json,
    error_for_status,
    parse_retry_after,
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
    ImagePart,
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

__all__ = [
    "GeminiProvider",
    "GeminiStreamTranslator",
    "build_gemini_body",
    "gemini_finish_reason",
    "openapi_schema",
]


# --------------------------------------------------------------------------- wire structs
# Lenient on purpose: unknown fields are ignored, everything optional.


class _FunctionCall(msgspec.Struct):
    name: str | None = None
    args: Any = None
    id: str | None = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool | None = None
    function_call: _FunctionCall | None = None
    thought_signature: str | None = None


class _Content(msgspec.Struct):
    role: str | None = None
    parts: list[_Part] | None = None


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None
    finish_message: str | None = None
    index: int = 0


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None
    block_reason_message: str | None = None


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    cached_content_token_count: int | None = None
    thoughts_token_count: int | None = None
    tool_use_prompt_token_count: int | None = None

    def to_usage(self) -> Usage:
        # promptTokenCount already includes the cached part; thinking tokens are
        # counted apart from candidates, and billed as output.
        thoughts = self.thoughts_token_count or 0
        return Usage(
            input_tokens=(self.prompt_token_count or 0) + (self.tool_use_prompt_token_count or 0),
            output_tokens=(self.candidates_token_count or 0) + thoughts,
            cached_input_tokens=self.cached_content_token_count or 0,
            reasoning_tokens=thoughts,
        )


class _ErrorBody(msgspec.Struct):
    code: int | None = None
    message: str | None = None
    status: str | None = None
    details: list[Any] | None = None


class _Response(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] | None = None
    prompt_feedback: _PromptFeedback | None = None
    usage_metadata: _UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    error: _ErrorBody | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | None = None


class _Values(msgspec.Struct):
    values: list[float] = []


class _Embedding(msgspec.Struct):
    embedding: _Values


class _Embeddings(msgspec.Struct):
    embeddings: list[_Values]


class _Model(msgspec.Struct, rename="camel"):
    name: str
    input_token_limit: int | None = None


class _Models(msgspec.Struct, rename="camel"):
    models: list[_Model] = []
    next_page_token: str | None = None


_response_decoder = msgspec.json.Decoder(_Response)
_embedding_decoder = msgspec.json.Decoder(_Embedding)
_embeddings_decoder = msgspec.json.Decoder(_Embeddings)
_models_decoder = msgspec.json.Decoder(_Models)

_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
    "TOO_MANY_TOOL_CALLS": "error",
}
# The HTTP status each google.rpc status stands for (for errors inside a 200 stream).
_GRPC_HTTP = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "NOT_IMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_TOKEN_COUNTS = re.compile(
    r"input token count \(?(\d+)\)? exceeds the maximum number of tokens allowed \(?(\d+)\)?"
)
# A google.protobuf.Duration in JSON: "37s", "1.5s", "0.000001s".
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
#: Gemini takes at most this many requests in one ``batchEmbedContents``.
MAX_EMBED_BATCH = 100
_MAX_MODEL_PAGES = 100


def gemini_finish_reason(raw: str | None, *, has_tool_calls: bool) -> FinishReason:
    """Normalise a Gemini ``finishReason`` (calls come back with ``STOP``).

    Example::

        >>> gemini_finish_reason("SAFETY", has_tool_calls=False)
        'content_filter'
    """
    reason = _FINISH.get(raw or "STOP", "other")
    if has_tool_calls and reason == "stop":
        return "tool_calls"
    return reason


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _parts_of(candidate: _Candidate) -> list[_Part]:
    # A candidate stopped by the safety filter may have no content at all.
    if candidate.content is None:
        return []
    return candidate.content.parts or []


def _call_from_wire(fc: _FunctionCall) -> ToolCall:
    if isinstance(fc.args, dict) or fc.args is None:
        return ToolCall(id=fc.id or _new_call_id(), name=fc.name or "", arguments=fc.args or {})
    raw = msgspec.json.encode(fc.args).decode()
    return ToolCall(id=fc.id or _new_call_id(), name=fc.name or "", raw_arguments=raw)


# --------------------------------------------------------------------------- errors


def _retry_delay(details: list[Any] | None) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "37s"``)."""
    for detail in details or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith(".RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _reasons(details: list[Any] | None) -> set[str]:
    return {str(d["reason"]) for d in details or () if isinstance(d, dict) and d.get("reason")}


def _google_error(
    http_status: int | None,
    err: _ErrorBody,
    message: str,
    *,
    provider: str,
    headers: dict[str, str],
) -> LLMError:
    """Map a ``google.rpc`` error (an HTTP error body, or an error inside a stream)."""
    grpc = (err.status or "").upper()
    status = http_status or err.code or _GRPC_HTTP.get(grpc, 500)
    reasons = _reasons(err.details)
    retry_after = parse_retry_after(headers)
    if retry_after is None:
        retry_after = _retry_delay(err.details)
    default = error_for_status(status, message, provider=provider, headers=headers)
    kw: dict[str, Any] = {
        "provider": provider,
        "status_code": http_status,
        "request_id": default.request_id,
        "retry_after": retry_after,
        "headers": headers,
    }
    if "x-should-retry" in headers:
        kw["retryable"] = headers["x-should-retry"] == "true"
    lowered = message.lower()
    if (
        reasons & {"API_KEY_INVALID", "API_KEY_EXPIRED"}
        or grpc == "UNAUTHENTICATED"
        or status == 401
        or "api key not valid" in lowered
        or "api key expired" in lowered
    ):
        return AuthenticationError(message, **kw)
    if grpc == "RESOURCE_EXHAUSTED" or status == 429:
        return RateLimited(message, **kw)
    if status == 400 or grpc in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
        counts = _TOKEN_COUNTS.search(message)
        if counts:
            return ContextLengthExceeded(
                message, requested=int(counts.group(1)), limit=int(counts.group(2)), **kw
            )
    if grpc == "FAILED_PRECONDITION":
        # Billing needed, or the free tier is not offered where the key is used.
        if "billing" in lowered:
            return QuotaExceeded(message, **kw)
        return PermissionDenied(message, **kw)
    if grpc == "UNAVAILABLE" or status in (503, 529):
        return Overloaded(message, **kw)
    if grpc == "NOT_FOUND" or status == 404:
        return ModelNotFound(message, **kw)
    if grpc == "PERMISSION_DENIED" or status == 403:
        return PermissionDenied(message, **kw)
    if grpc in ("INTERNAL", "UNKNOWN", "DATA_LOSS", "DEADLINE_EXCEEDED") or status >= 500:
        return ServerError(message, **kw)
    if grpc == "INVALID_ARGUMENT":
        return InvalidRequest(message, **kw)
    if http_status is None:
        return ServerError(message, **kw)
    return default


def _in_body_error(err: _ErrorBody, provider: str) -> LLMError:
    return _google_error(
        None, err, err.message or "error in the response body", provider=provider, headers={}
    )


# --------------------------------------------------------------------------- translation


def _image_part(p: ImagePart, provider: str | None) -> dict[str, Any]:
    if p.url is not None:
        inline = ImagePart.from_url(p.url)
        if inline.data is None:
            raise UnsupportedFeature(
                "Gemini takes inline images only (base64 or a data: URL), not "
                f"{p.url[:60]!r}; use ImagePart.from_bytes",
                provider=provider,
            )
        p = inline
    return {"inlineData": {"mimeType": p.media_type, "data": p.data}}


def _parts(m: Message, provider: str | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for p in m.parts:
        if isinstance(p, TextPart):
            parts.append({"text": p.text})
        else:
            parts.append(_image_part(p, provider))
    return parts


#: The fields of Gemini's ``Schema`` (the OpenAPI subset ``responseSchema`` takes); any
#: other key is a 400 ("Unknown name ... Cannot find field").
_OPENAPI_FIELDS = frozenset(
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
_MAX_SCHEMA_DEPTH = 64


def openapi_schema(schema: Mapping[str, Any], *, provider: str | None = None) -> dict[str, Any]:
    """``schema`` (JSON Schema) as the OpenAPI-subset ``Schema`` of ``responseSchema``.

    ``$ref`` into ``$defs``/``definitions`` is inlined (the subset has no references),
    a ``type`` list or an ``anyOf`` with a ``null`` branch becomes ``nullable``,
    ``const`` becomes a one-value ``enum``, types are upper-case, and keys the subset
    does not have (``additionalProperties``, ``$defs``, ``$schema``...) are dropped.

    Raises:
        UnsupportedFeature: the schema is recursive (a type that contains itself), which
            no inlining can express; use ``responseJsonSchema`` (the default).

    Example::

        >>> openapi_schema({"type": ["string", "null"]})
        {'type': 'STRING', 'nullable': True}
    """
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        table = schema.get(key)
        if isinstance(table, Mapping):
            defs.update({f"#/{key}/{name}": value for name, value in table.items()})
    converted: dict[str, Any] = _openapi(schema, defs, (), provider)
    return converted


def _openapi(
    node: Any, defs: Mapping[str, Any], seen: tuple[str, ...], provider: str | None
) -> Any:
    # ``seen``: the references being inlined on this path ("" for a plain level), so a
    # reference met again is recursion, and the path's length is the depth.
    if not isinstance(node, Mapping):
        return node
    if len(seen) > _MAX_SCHEMA_DEPTH:
        raise UnsupportedFeature(
            f"the response schema nests deeper than {_MAX_SCHEMA_DEPTH} levels",
            provider=provider,
        )
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            raise UnsupportedFeature(
                f"the response schema is recursive ({ref} contains itself), which Gemini's "
                "responseSchema cannot express; use responseJsonSchema (json_schema=True)",
                provider=provider,
            )
        target = defs.get(ref)
        if target is None:
            raise UnsupportedFeature(
                f"the response schema refers to {ref!r}, which it does not define",
                provider=provider,
            )
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _openapi(merged, defs, (*seen, ref), provider)
    out: dict[str, Any] = {}
    nullable = node.get("nullable") is True
    kind = node.get("type")
    if isinstance(kind, list):
        nullable = nullable or "null" in kind
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
        if len(kinds) > 1:
            out["anyOf"] = [{"type": k.upper()} for k in kinds if isinstance(k, str)]
    if isinstance(kind, str):
        out["type"] = kind.upper()
    branches = node.get("anyOf", node.get("oneOf"))
    if isinstance(branches, list):
        rest = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
        nullable = nullable or len(rest) < len(branches)
        if len(rest) == 1:
            out.update(_openapi(rest[0], defs, (*seen, ""), provider))
        elif rest:
            out["anyOf"] = [_openapi(b, defs, (*seen, ""), provider) for b in rest]
    if "const" in node:
        out["enum"] = [node["const"]]
    for key, value in node.items():
        if key not in _OPENAPI_FIELDS or key in ("type", "anyOf", "nullable"):
            continue
        if key == "properties" and isinstance(value, Mapping):
            out[key] = {k: _openapi(v, defs, (*seen, ""), provider) for k, v in value.items()}
        elif key == "items":
            out[key] = _openapi(value, defs, (*seen, ""), provider)
        else:
            out[key] = value
    if nullable:
        out["nullable"] = True
    return out


def build_gemini_body(
    request: ChatRequest,
    *,
    signatures: Mapping[str, str] | None = None,
    json_schema: bool = True,
    provider: str | None = None,
) -> dict[str, Any]:
    """The ``generateContent`` body for ``request`` (the model goes in the URL).

    Args:
        request: What to send.
        signatures: Thought signatures by tool-call id, put back on those calls.
        json_schema: Send ``responseJsonSchema``/``parametersJsonSchema`` (real JSON
            Schema); ``False`` sends the OpenAPI-subset ``responseSchema``/``parameters``.
        provider: The provider name for errors.

    Raises:
        UnsupportedFeature: an image is a URL that is not a ``data:`` URL.

    Example::

        >>> build_gemini_body(ChatRequest(model="gemini-2.5-flash",
        ...                               messages=[Message.user("hi")]))
        {'contents': [{'role': 'user', 'parts': [{'text': 'hi'}]}]}
    """
    signatures = signatures or {}
    names = {c.id: c.name for m in request.messages for c in m.tool_calls}
    body: dict[str, Any] = {}
    system = [{"text": m.text} for m in request.messages if m.role == "system"]
    contents: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            key = "error" if m.is_error else "output"
            result = {
                "id": m.tool_call_id,
                "name": m.name or names.get(m.tool_call_id or "", ""),
                "response": {key: m.text},
            }
            last = contents[-1] if contents else None
            # All results for one turn's calls go back together, in one user turn.
            if last is not None and last.get("_results"):
                last["parts"].append({"functionResponse": result})
            else:
                contents.append(
                    {"role": "user", "parts": [{"functionResponse": result}], "_results": True}
                )
            continue
        if m.role == "assistant":
            parts = [{"text": m.text}] if m.text or not m.tool_calls else []
            for c in m.tool_calls:
                call: dict[str, Any] = {"id": c.id, "name": c.name, "args": c.arguments}
                part: dict[str, Any] = {"functionCall": call}
                if c.id in signatures:
                    part["thoughtSignature"] = signatures[c.id]
                parts.append(part)
            contents.append({"role": "model", "parts": parts})
            continue
        contents.append({"role": "user", "parts": _parts(m, provider) or [{"text": ""}]})
    for content in contents:
        content.pop("_results", None)
    if system:
        body["systemInstruction"] = {"parts": system}
    body["contents"] = contents

    if request.tools:
        schema_key = "parametersJsonSchema" if json_schema else "parameters"
        declarations = [
            {
                "name": t.name,
                **({"description": t.description} if t.description else {}),
                schema_key: t.parameters,
            }
            for t in request.tools
        ]
        body["tools"] = [{"functionDeclarations": declarations}]
    choice = request.tool_choice
    if isinstance(choice, ForceTool):
        body["toolConfig"] = {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice.name]}
        }
    elif choice is not None:
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]
        body["toolConfig"] = {"functionCallingConfig": {"mode": mode}}

    generation: dict[str, Any] = {}
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    if request.top_p is not None:
        generation["topP"] = request.top_p
    if request.max_tokens is not None:
        generation["maxOutputTokens"] = request.max_tokens
    if request.stop:
        generation["stopSequences"] = request.stop
    if request.seed is not None:
        generation["seed"] = request.seed
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        generation["responseMimeType"] = "application/json"
        if fmt.type == "json_schema":
            if json_schema:
                generation["responseJsonSchema"] = fmt.schema
            else:
                generation["responseSchema"] = openapi_schema(fmt.schema or {}, provider=provider)
    if request.thinking_budget is not None:
        generation["thinkingConfig"] = {
            "thinkingBudget": request.thinking_budget,
            "includeThoughts": True,
        }
    if generation:
        body["generationConfig"] = generation
    body.update(request.extra)
    return body


class GeminiStreamTranslator:
    """Pure translation of Gemini's SSE chunks (whole responses each) into our events.

    ``on_signature(call_id, signature)`` is told each function call's thought
    signature, for the next turn.
    """

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        headers: dict[str, str],
        on_signature: Callable[[str, str], None] | None = None,
    ) -> None:
        self._acc = StreamAccumulator(provider=provider, model=model)
        self._provider = provider
        self._headers = headers
        self._on_signature = on_signature
        self._raw_finish: str | None = None
        self._calls = 0
        self._content = False

    @property
    def terminated(self) -> bool:
        # Gemini sends no terminator: only the end of the body ends the stream.
        return False

    def feed(self, item: ServerSentEvent) -> list[StreamEvent]:
        data = item.data
        if not data.strip():
            return []
        try:
            chunk = _response_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(
                f"malformed stream chunk ({exc}): {data[:120]!r}", provider=self._provider
            ) from exc
        if chunk.error is not None:
            raise _in_body_error(chunk.error, self._provider)
        if chunk.response_id and not self._acc.id:
            self._acc.id = chunk.response_id
        if chunk.model_version:
            self._acc.model = chunk.model_version
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason and not chunk.candidates:
            raise _blocked(feedback, self._provider)
        out: list[StreamEvent] = []
        for candidate in chunk.candidates or ():
            if candidate.index != 0:
                continue
            for part in _parts_of(candidate):
                out.extend(self._part(part))
            if candidate.finish_reason:
                self._raw_finish = candidate.finish_reason
        if chunk.usage_metadata is not None:
            out.append(UsageEvent(usage=chunk.usage_metadata.to_usage()))
        for event in out:
            self._acc.add(event)
        return out

    def _part(self, part: _Part) -> list[StreamEvent]:
        if part.function_call is not None:
            call = _call_from_wire(part.function_call)
            if part.thought_signature and self._on_signature is not None:
                self._on_signature(call.id, part.thought_signature)
            index = self._calls
            self._calls += 1
            self._content = True
            arguments = call.raw_arguments or msgspec.json.encode(call.arguments).decode()
            return [
                ToolCallStart(index=index, id=call.id, name=call.name),
                ToolCallDelta(index=index, arguments=arguments),
                ToolCallEnd(index=index, call=call),
            ]
        if part.text:
            self._content = True
            if part.thought:
                return [ReasoningDelta(text=part.text)]
            return [TextDelta(text=part.text)]
        return []

    def finish(self) -> list[StreamEvent]:
        if self._raw_finish is None:
            raise ProtocolError(
                "the stream ended before a chunk with a finishReason", provider=self._provider
            )
        reason = gemini_finish_reason(self._raw_finish, has_tool_calls=self._calls > 0)
        if reason == "content_filter" and not self._content:
            raise ContentFiltered(
                f"the provider's safety filter blocked the output ({self._raw_finish})",
                provider=self._provider,
            )
        response = self._acc.response(
            finish_reason=reason, raw_finish_reason=self._raw_finish, headers=self._headers
        )
        return [Done(response=response)]


def _blocked(feedback: _PromptFeedback, provider: str) -> ContentFiltered:
    detail = feedback.block_reason_message or feedback.block_reason
    return ContentFiltered(f"the provider blocked the prompt ({detail})", provider=provider)


# --------------------------------------------------------------------------- the adapter


class GeminiProvider(HTTPProvider):
    """Gemini (Generative Language API): chat, streams, embeddings and models over httpx.

    Args:
        json_schema: Send schemas as real JSON Schema (``responseJsonSchema``,
            ``parametersJsonSchema``); ``False`` for the OpenAPI-subset fields.
        embedding_task_type: ``taskType`` for embeddings (``"RETRIEVAL_DOCUMENT"``...).
        **kw: ``name``, ``api_key``, ``base_url``, ``client``, ``capabilities``,
            ``headers``, as for every HTTP provider.

    Example::

        gemini = GeminiProvider(api_key=Secret(os.environ["GEMINI_API_KEY"]))
        resp = await gemini.complete(ChatRequest(model="gemini-2.5-flash",
                                                 messages=[Message.user("hi")]))
    """

    kind = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"
    #: Inline images only (a ``data:`` URL is fine, it is inline).
    default_capabilities = Capabilities(image_urls=False)
    #: How many tool calls' thought signatures are remembered for the next turn.
    max_signatures = 4096

    def __init__(
        self, *, json_schema: bool = True, embedding_task_type: str | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self._json_schema = json_schema
        self._task_type = embedding_task_type
        self._signatures: OrderedDict[str, str] = OrderedDict()

    def _auth_headers(self) -> dict[str, str]:
        if self._api_key:
            return {"x-goog-api-key": self._api_key.reveal()}
        return {}

    def _model_url(self, model: str, method: str = "") -> str:
        # "gemini-2.5-flash", "models/gemini-2.5-flash" and "tunedModels/x" all work.
        path = model if "/" in model else f"models/{model}"
        return f"{self._base_url}/{quote(path, safe='/')}{':' + method if method else ''}"

    def _remember(self, call_id: str, signature: str) -> None:
        self._signatures[call_id] = signature
        self._signatures.move_to_end(call_id)
        while len(self._signatures) > self.max_signatures:
            self._signatures.popitem(last=False)

    def _check(self, request: ChatRequest) -> None:
        # Data URLs are inline images, so only the body builder can refuse real URLs.
        caps = msgspec.structs.replace(self._capabilities, image_urls=True)
        validate_request(request, caps)

    # -- requests ---------------------------------------------------------------------

    def build_body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """The vendor request body for ``request`` (public so tests can check translation).

        Streaming uses the same body at a different URL, so ``stream`` changes nothing.
        """
        return build_gemini_body(
            request,
            signatures=self._signatures,
            json_schema=self._json_schema,
            provider=self._name,
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` to ``:generateContent`` and return the whole answer."""
        self._check(request)
        return await self._send_json(  # type: ignore[no-any-return]
            "POST",
            self._model_url(request.model, "generateContent"),
            self.build_body(request),
            _response_decoder.decode,
            lambda data, headers: self._to_response(data, request, headers),
        )

    def _to_response(
        self, data: _Response, request: ChatRequest, headers: dict[str, str]
    ) -> ChatResponse:
        if data.error is not None:
            raise _in_body_error(data.error, self._name)
        candidates = [c for c in data.candidates or () if c.index == 0]
        if not candidates:
            if data.prompt_feedback is not None and data.prompt_feedback.block_reason:
                raise _blocked(data.prompt_feedback, self._name)
            raise ProtocolError("the response has no candidates", provider=self._name)
        candidate = candidates[0]
        text: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        for part in _parts_of(candidate):
            if part.function_call is not None:
                call = _call_from_wire(part.function_call)
                if part.thought_signature:
                    self._remember(call.id, part.thought_signature)
                calls.append(call)
            elif part.text:
                (thoughts if part.thought else text).append(part.text)
        reason = gemini_finish_reason(candidate.finish_reason, has_tool_calls=bool(calls))
        if reason == "content_filter" and not text and not calls:
            raise ContentFiltered(
                f"the provider's safety filter blocked the output ({candidate.finish_reason})",
                provider=self._name,
            )
        usage = data.usage_metadata.to_usage() if data.usage_metadata else Usage()
        return ChatResponse(
            id=data.response_id or "",
            model=data.model_version or request.model,
            provider=self._name,
            text="".join(text),
            tool_calls=calls,
            finish_reason=reason,
            raw_finish_reason=candidate.finish_reason,
            usage=usage,
            reasoning="".join(thoughts) or None,
            headers=headers,
        )

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[HTTPEventStream]:
        """Stream the answer from ``:streamGenerateContent?alt=sse``.

        Example::

            async with gemini.stream(request) as events:
                async for event in events: ...
        """
        self._check(request)

        def translator(headers: dict[str, str]) -> GeminiStreamTranslator:
            return GeminiStreamTranslator(
                provider=self._name,
                model=request.model,
                headers=headers,
                on_signature=self._remember,
            )

        return self._open_stream(
            self._model_url(request.model, "streamGenerateContent"),
            self.build_body(request),
            translator,
            params={"alt": "sse"},
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed with ``:embedContent`` (one input) or ``:batchEmbedContents``.

        Batches larger than :data:`MAX_EMBED_BATCH` are split.  Gemini reports no token
        usage for embeddings, so ``usage`` is zero.
        """
        model = request.model if "/" in request.model else f"models/{request.model}"

        def one(text: str) -> dict[str, Any]:
            item: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
            if self._task_type:
                item["taskType"] = self._task_type
            if request.dimensions is not None:
                item["outputDimensionality"] = request.dimensions
            return item

        vectors: list[list[float]] = []
        if len(request.inputs) == 1:
            data = await self._send_json(
                "POST",
                self._model_url(request.model, "embedContent"),
                one(request.inputs[0]),
                _embedding_decoder.decode,
            )
            vectors.append(data.embedding.values)
        else:
            for start in range(0, len(request.inputs), MAX_EMBED_BATCH):
                batch = request.inputs[start : start + MAX_EMBED_BATCH]
                body = {"requests": [{"model": model, **one(text)} for text in batch]}
                data = await self._send_json(
                    "POST",
                    self._model_url(request.model, "batchEmbedContents"),
                    body,
                    _embeddings_decoder.decode,
                )
                if len(data.embeddings) != len(batch):
                    raise ProtocolError(
                        f"asked for {len(batch)} embeddings, got {len(data.embeddings)}",
                        provider=self._name,
                    )
                vectors.extend(e.values for e in data.embeddings)
        return EmbeddingResponse(model=request.model, provider=self._name, vectors=vectors)

    async def list_models(self) -> list[ModelInfo]:
        """Every model at ``/models``, following ``nextPageToken`` across pages."""
        out: list[ModelInfo] = []
        token: str | None = None
        for _ in range(_MAX_MODEL_PAGES):
            params = {"pageSize": "1000", **({"pageToken": token} if token else {})}
            data = await self._send_json(
                "GET", f"{self._base_url}/models", None, _models_decoder.decode, params=params
            )
            out.extend(
                ModelInfo(
                    id=self._scrub(m.name.removeprefix("models/")),
                    provider=self._name,
                    context_window=m.input_token_limit,
                )
                for m in data.models
            )
            token = data.next_page_token
            if not token:
                return out
        raise ProtocolError(
            f"the model list did not end after {_MAX_MODEL_PAGES} pages", provider=self._name
        )

    # -- errors: the one mapping place ------------------------------------------------

    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        message = body_snippet(body)
        err = _ErrorBody()
        parsed = decode_error_json(body)
        if isinstance(parsed, dict):
            try:
                envelope = msgspec.convert(parsed, _ErrorEnvelope)
            except msgspec.ValidationError:
                envelope = _ErrorEnvelope()
            if envelope.error is not None:
                err = envelope.error
                message = err.message or message
        if status == 404 and err.status is None:
            # Google's HTML "404. That's an error." page: a wrong URL, not a missing model.
            return NotFound(message, provider=self._name, status_code=status, headers=headers)
        return _google_error(status, err, message, provider=self._name, headers=headers)
