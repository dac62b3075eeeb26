"""Gemini's wire format (Generative Language API v1beta): camelCase JSON, ``google.rpc`` errors.

generateContent, streamGenerateContent (SSE with CRLF and no terminator, or one JSON
array), countTokens, embedContent, batchEmbedContents, models (paged).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, TypeAlias

import msgspec
from msgspec import UNSET

from .._records import ScenarioState
from .._scenario import (
    ChatView,
    OfferedTool,
    ReplyPlan,
    Scenario,
    estimate_input_tokens,
    estimate_text_tokens,
)
from ._base import (
    THOUGHT,
    ChatRead,
    Reply,
    RequestError,
    Route,
    Shape,
    StreamReply,
    VendorFormat,
    Wire,
    base64_ok,
    embedding,
    encode,
    format_seconds,
    json_reply,
    phrase,
    query_value,
    text_reply,
)

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
_THOUGHT_TOKENS = 5


def _camel(name: str) -> str:
    head, *tail = name.split("_")
    return head + "".join(t[:1].upper() + t[1:] for t in tail)


def _camel_keys(obj: Any) -> dict[str, Any]:
    """A proto-JSON object with its (top-level) field names in camelCase."""
    return {_camel(k): v for k, v in obj.items()} if isinstance(obj, dict) else {}


def _gemini_invalid(message: str, field: str = "") -> RequestError:
    violation = {"field": field, "description": message} if field else {"description": message}
    return RequestError(
        400,
        message,
        details=[{"@type": _GOOGLE_RPC + "BadRequest", "fieldViolations": [violation]}],
    )


def _gemini_unknown(name: str, where: str = "") -> RequestError:
    at = f" at '{where}'" if where else ""
    return _gemini_invalid(
        f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.', where
    )


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


# --------------------------------------------------------------------------- request Structs
# The one decoder of generateContent (and countTokens) bodies: the server reads a request
# through decode_generate, and so does decode_gemini_request
# (providers/testing/_decode.py).  Proto JSON takes field names in camelCase or
# snake_case: decode_generate renames the objects' keys to camelCase first (free-form
# values such as function args and schemas are left alone), then converts.  Where Gemini
# has its own words for a bad value, the field is ``Any`` and decode_generate checks it.


class _Proto(msgspec.Struct, rename="camel"):
    """A proto-JSON message: camelCase names, unknown fields ignored."""


class InlineData(_Proto):
    #: Required; checked by decode_generate.
    mime_type: Any = None
    #: Base64 (either alphabet, padded or not); checked by decode_generate.
    data: Any = None


class FunctionCall(_Proto):
    #: Required; checked by decode_generate.
    name: Any = None
    #: An object (not a JSON string); checked by decode_generate.
    args: Any = UNSET
    id: str | None = None


class FunctionResponse(_Proto):
    name: str = ""
    id: str | None = None
    #: An object; checked by decode_generate.
    response: Any = UNSET


class Part(_Proto):
    """One part: exactly one of text, inline data, file data, a call or a response."""

    text: str | None = None
    thought: bool | None = None
    inline_data: InlineData | None = None
    file_data: Any = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None


class Content(_Proto):
    role: str = "user"
    #: Required and non-empty; checked by decode_generate.
    parts: list[Part] | None = None


class FunctionDeclaration(_Proto):
    name: str = ""
    description: str = ""
    #: Gemini's OpenAPI subset ("OBJECT", "STRING"...).
    parameters: dict[str, Any] | None = None
    #: A JSON schema (wins over ``parameters``).
    parameters_json_schema: dict[str, Any] | None = None


class Tool(_Proto):
    function_declarations: list[FunctionDeclaration] | None = None


class FunctionCallingConfig(_Proto):
    mode: str = "AUTO"
    allowed_function_names: list[str] | None = None


class ToolConfig(_Proto):
    function_calling_config: FunctionCallingConfig | None = None


class ThinkingConfig(_Proto):
    include_thoughts: bool | None = None
    thinking_budget: int | None = None


class GenerationConfig(_Proto):
    stop_sequences: list[str] | None = None
    response_mime_type: str | None = None
    #: Gemini's OpenAPI-subset schema; checked by decode_generate.
    response_schema: Any = None
    response_json_schema: Any = None
    #: Proto JSON takes an int32 as a number or a string; only a number is read.
    max_output_tokens: Any = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    thinking_config: ThinkingConfig | None = None


class GenerateBody(_Proto):
    """A ``generateContent`` (or ``countTokens``) request body."""

    contents: list[Content]
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None


#: Which keys hold proto objects (whose own keys may be snake_case), level by level.
_Tree: TypeAlias = Mapping[str, "_Tree"]
_LEAF: _Tree = {}
_CONTENT_TREE: _Tree = {
    "parts": {
        "inlineData": _LEAF,
        "fileData": _LEAF,
        "functionCall": _LEAF,
        "functionResponse": _LEAF,
    }
}
_REQUEST_TREE: _Tree = {
    "contents": _CONTENT_TREE,
    "systemInstruction": _CONTENT_TREE,
    "tools": {"functionDeclarations": _LEAF},
    "toolConfig": {"functionCallingConfig": _LEAF},
    "generationConfig": {"thinkingConfig": _LEAF},
}


def _camel_tree(obj: Any, tree: _Tree) -> Any:
    """``obj`` with the keys of its proto objects (per ``tree``) in camelCase.

    A repeated field is one list of objects: a list inside it is left as it is (the
    conversion refuses it), so the depth of the walk is the depth of ``tree``.
    """
    if isinstance(obj, list):
        return [_camel_object(item, tree) for item in obj]
    return _camel_object(obj, tree)


def _camel_object(obj: Any, tree: _Tree) -> Any:
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _camel(key) if "_" in key else key
        sub = tree.get(name)
        out[name] = value if sub is None else _camel_tree(value, sub)
    return out


def decode_generate(body: Any) -> GenerateBody:
    """Decode and check a ``generateContent`` body the way Gemini does.

    The checks are the traps real adapters fall into: unknown (e.g. OpenAI-style)
    field names, roles other than ``user``/``model``, empty parts, arguments or
    responses that are not objects, ``data:`` URLs where base64 belongs, a schema
    without ``responseMimeType`` (or one Gemini's ``Schema`` cannot hold), and function
    responses that do not answer the previous turn's calls one for one.

    Raises:
        RequestError: what Gemini answers (a 400 ``INVALID_ARGUMENT``, in its words).
    """
    if not isinstance(body, dict):
        raise _gemini_invalid("Invalid JSON payload received. Expected an object.")
    for key in body:
        if _camel(key) not in _GEMINI_TOP:
            raise _gemini_unknown(key)
    raw_generation = body.get("generationConfig", body.get("generation_config")) or {}
    if not isinstance(raw_generation, dict):
        raise _gemini_invalid("Invalid value at 'generation_config'", "generation_config")
    for key in raw_generation:
        if _camel(key) not in _GEMINI_GENERATION:
            raise _gemini_unknown(key, "generation_config")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _gemini_invalid("* GenerateContentRequest.contents: contents is not specified\n")
    try:
        req = msgspec.convert(_camel_tree(body, _REQUEST_TREE), GenerateBody)
    except msgspec.ValidationError as exc:
        raise _gemini_invalid(f"Invalid JSON payload received. {exc}") from exc

    open_calls: int | None = None  # calls made by the previous (model) turn
    for i, content in enumerate(req.contents):
        if content.role not in ("user", "model", "function", "tool"):
            raise _gemini_invalid("Please use a valid role: user, model.")
        if not content.parts:
            raise _gemini_invalid(
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )
        calls = results = 0
        for j, part in enumerate(content.parts):
            where = f"contents[{i}].parts[{j}]"
            if part.text is not None:
                continue
            if part.inline_data is not None:
                inline = part.inline_data
                if not isinstance(inline.mime_type, str):
                    raise _gemini_invalid(
                        f"* GenerateContentRequest.{where}.inline_data.mime_type: "
                        "mime_type is not specified\n"
                    )
                if not base64_ok(inline.data, urlsafe=True):
                    shown = str(inline.data)[:40]
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), "
                        f'Base64 decoding failed for "{shown}"',
                        f"{where}.inline_data.data",
                    )
            elif part.function_call is not None:
                args = part.function_call.args
                if args is not UNSET and not isinstance(args, dict):
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.function_call.args' "
                        f"(type.googleapis.com/google.protobuf.Struct), {encode(args).decode()}",
                        f"{where}.function_call.args",
                    )
                if not part.function_call.name:
                    raise _gemini_invalid(
                        f"* GenerateContentRequest.{where}.function_call.name: "
                        "name is not specified\n"
                    )
                calls += 1
            elif part.function_response is not None:
                response = part.function_response.response
                if response is not UNSET and not isinstance(response, dict):
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.function_response.response' "
                        "(type.googleapis.com/google.protobuf.Struct)",
                        f"{where}.function_response.response",
                    )
                results += 1
            elif part.file_data is None:
                raise _gemini_invalid(
                    f"* GenerateContentRequest.{where}.data: required oneof field 'data' "
                    "must have one initialized field\n"
                )
        if open_calls is not None and results != open_calls:
            raise _gemini_invalid(
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn."
            )
        if open_calls is None and results:
            raise _gemini_invalid(
                "Please ensure that function response turn comes immediately after a "
                "function call turn."
            )
        open_calls = calls if content.role == "model" and calls else None

    calling = req.tool_config.function_calling_config if req.tool_config else None
    if (
        calling is not None
        and calling.allowed_function_names
        and calling.mode.upper() not in ("ANY", "VALIDATED")
    ):
        raise _gemini_invalid(
            "allowed_function_names should only be set when the function calling mode is ANY"
        )
    generation = req.generation_config or GenerationConfig()
    json_schema, legacy_schema = generation.response_json_schema, generation.response_schema
    if json_schema is not None and legacy_schema is not None:
        raise _gemini_invalid("response_schema and response_json_schema cannot both be set.")
    if (json_schema is not None or legacy_schema is not None) and _mime(generation) not in (
        "application/json",
        "text/x.enum",
    ):
        raise _gemini_invalid(
            "* GenerateContentRequest.generation_config.response_mime_type: "
            "response_mime_type must be application/json when a response schema is set.\n"
        )
    if legacy_schema is not None:
        _check_openapi_schema(legacy_schema, "generation_config.response_schema")
    return req


def max_output_tokens(generation: GenerationConfig) -> int | None:
    """``maxOutputTokens`` if it is a number."""
    value = generation.max_output_tokens
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mime(generation: GenerationConfig) -> str:
    return generation.response_mime_type or "text/plain"


def declared_schema(decl: FunctionDeclaration) -> dict[str, Any]:
    """A function declaration's parameters as a JSON schema (lower-case types)."""
    if decl.parameters_json_schema is not None:
        return decl.parameters_json_schema
    lowered: dict[str, Any] = _lower_types(decl.parameters or {})
    return lowered


def response_schema(generation: GenerationConfig) -> Any:
    """The response's JSON schema (lower-case types), or None."""
    if generation.response_json_schema is not None:
        return generation.response_json_schema
    return _lower_types(generation.response_schema)


def result_text(response: Any) -> str:
    """What a ``functionResponse``'s ``response`` says, as text."""
    if isinstance(response, dict):
        for key in ("output", "result", "content", "error"):
            value = response.get(key)
            if isinstance(value, str):
                return value
    return encode({} if response is UNSET else response).decode()


def _gemini_view(req: GenerateBody) -> ChatView:
    """What the planner needs from a decoded ``generateContent`` body."""
    chars = 0
    n_messages = 0
    system = req.system_instruction
    if system is not None:
        chars += len(" ".join(p.text for p in system.parts or () if p.text is not None))
        n_messages += 1
    last_user = ""
    tool_result: str | None = None
    mentions: str | None = None
    for content in req.contents:
        results: list[str] = []
        texts: list[str] = []
        for part in content.parts or ():
            if part.text is not None:
                if not part.thought:
                    texts.append(part.text)
            elif part.function_call is not None:
                args = part.function_call.args
                chars += len(encode({} if args is UNSET else args))
            elif part.function_response is not None:
                results.append(result_text(part.function_response.response))
        text = " ".join(texts)
        chars += len(text) + sum(len(r) for r in results)
        n_messages += 1
        if content.role == "model":
            tool_result = mentions = None
        else:
            if text or not results:
                last_user = text
            tool_result = " ".join(results) if results else None
            mentions = text if not results else None

    tools = [
        OfferedTool(decl.name, declared_schema(decl))
        for tool in req.tools or ()
        for decl in tool.function_declarations or ()
    ]
    calling = req.tool_config.function_calling_config if req.tool_config else None
    mode = calling.mode.upper() if calling is not None else "AUTO"
    allowed = (calling.allowed_function_names if calling is not None else None) or []
    choice = {"NONE": "none", "ANY": "required"}.get(mode, "auto")
    forced: str | None = None
    if mode == "ANY" and len(allowed) == 1:
        choice, forced = "tool", allowed[0]
    elif mode == "ANY" and allowed:
        tools = [t for t in tools if t.name in allowed]
    generation = req.generation_config or GenerationConfig()
    schema = response_schema(generation)
    mime = _mime(generation)
    return ChatView(
        last_user_text=last_user,
        tool_result=tool_result,
        mentions=mentions,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        schema=schema if isinstance(schema, dict) else None,
        json_mode=mime == "application/json" and schema is None,
        stop=list(generation.stop_sequences or ()),
        max_tokens=max_output_tokens(generation),
        input_tokens=estimate_input_tokens(chars, n_messages),
    )


def _include_thoughts(req: GenerateBody) -> bool:
    thinking = req.generation_config.thinking_config if req.generation_config else None
    return bool(thinking is not None and thinking.include_thoughts)


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
    return embedding(text.encode(), dimensions), estimate_text_tokens(len(text))


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


class GeminiFormat(VendorFormat):
    """The Generative Language API (v1beta): camelCase JSON, ``google.rpc`` errors."""

    name: Wire = "gemini"
    kinds: Mapping[str, str] = {"gemini": "/v1beta"}
    # Gemini says when to come back in a RetryInfo detail, not in a header.
    retry_after_header = False
    missing_auth_message = "API key not valid. Please pass a valid API key."
    bad_json_message = "Invalid JSON payload received. Unexpected token."

    def authorized(self, headers: Mapping[str, str], query: str, route: Route) -> bool:
        key = headers.get("x-goog-api-key") or query_value(query, "key") or ""
        return bool(key.strip())

    def auth_error(self) -> RequestError:
        # Not a 401: a bad (or missing) key is a 400 INVALID_ARGUMENT with this reason.
        return RequestError(
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

    def unknown_url_reply(self, method: str, path: str, request_id: str) -> Reply:
        # Google's front end answers an unknown path with an HTML page, not JSON.
        html = (
            "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
            "  <title>Error 404 (Not Found)!!1</title>\n"
            "  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n"
            f"  <p>The requested URL <code>{path}</code> was not found on this server.  "
            "<ins>That\u2019s all we know.</ins>\n"
        )
        return text_reply(404, "text/html; charset=UTF-8", html)

    def error_body(self, error: RequestError, request_id: str) -> Any:
        return {
            "error": {
                "code": error.status,
                "message": error.message,
                "status": _GRPC_STATUS.get(error.status, "UNKNOWN"),
                "details": error.details or [],
            }
        }

    def fault_error(
        self, status: int, state: ScenarioState, retry_after: float | None
    ) -> RequestError:
        if status != 429:
            return RequestError(status, _GEMINI_MESSAGES.get(status, phrase(status)))
        delay = retry_after if retry_after is not None else 1.0
        violation = {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global"},
            "quotaValue": str(state.scenario.ratelimit_requests),
        }
        return RequestError(
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
                {"@type": _GOOGLE_RPC + "RetryInfo", "retryDelay": f"{format_seconds(delay)}s"},
            ],
        )

    def context_error(self, limit: int, requested: int) -> RequestError:
        return RequestError(
            400,
            f"The input token count ({requested}) exceeds the maximum number of tokens "
            f"allowed ({limit}).",
        )

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> Reply:
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
                raise RequestError(
                    404,
                    f"models/{name} is not found for API version v1beta, or is not supported "
                    "for get. Call ListModels to see the list of available models and their "
                    "supported methods.",
                )
            return json_reply(200, entry(name), self, request_id)
        raw_size = query_value(query, "pageSize") or ""
        size = int(raw_size) if raw_size.isdigit() and int(raw_size) > 0 else 50
        size = min(size, 1000)
        token = query_value(query, "pageToken") or ""
        start = _page_offset(token) if token else 0
        obj: dict[str, Any] = {"models": [entry(m) for m in scenario.models[start : start + size]]}
        if start + size < len(scenario.models):
            obj["nextPageToken"] = _page_token(start + size)
        return json_reply(200, obj, self, request_id)

    def embeddings_reply(self, route: Route, body: Any, request_id: str) -> tuple[Reply, int]:
        if route.endpoint == "embed_content":
            vector, tokens = _gemini_embed_one(body, "EmbedContentRequest")
            return json_reply(200, {"embedding": {"values": vector}}, self, request_id), tokens
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
                    f"({model}), got {encode(named).decode()}\n"
                )
            vector, tokens = _gemini_embed_one(request, where)
            embeddings.append({"values": vector})
            total += tokens
        return json_reply(200, {"embeddings": embeddings}, self, request_id), total

    def read_chat(self, route: Route, body: Any, query: str) -> ChatRead:
        req = decode_generate(body)
        streaming = route.endpoint == "stream_generate"
        sse = query_value(query, "alt") == "sse"
        return ChatRead(
            view=_gemini_view(req),
            model=route.model_id.removeprefix("models/"),
            stream=streaming and sse,
            array=streaming and not sse,
            thinking=_include_thoughts(req),
        )

    def count_tokens_reply(self, tokens: int, request_id: str) -> Reply:
        details = [{"modality": "TEXT", "tokenCount": tokens}]
        obj = {"totalTokens": tokens, "promptTokensDetails": details}
        return json_reply(200, obj, self, request_id)

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
        self, plan: ReplyPlan, shape: Shape
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

        head = [response([{"text": THOUGHT, "thought": True}], 0)] if thoughts else []
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
    def _call_part(plan: ReplyPlan, shape: Shape) -> dict[str, Any]:
        # Gemini 3 signs its function calls; the signature must come back unchanged.
        signature = base64.b64encode(f"fake-signature-{shape.n}".encode()).decode()
        call = {"name": plan.tool_name, "args": plan.tool_input}
        return {"functionCall": call, "thoughtSignature": signature}

    def chat_reply(self, plan: ReplyPlan, shape: Shape) -> Reply:
        if shape.chat.array:
            head, content, tail = self._chunks(plan, shape)
            return json_reply(200, head + content + tail, self, shape.request_id)
        base = {"modelVersion": shape.model, "responseId": f"fake{shape.n:012d}"}
        if plan.prompt_blocked:
            feedback = {"blockReason": "SAFETY", "safetyRatings": _SAFETY_BLOCKED}
            usage = self._usage(plan, shape.cached, 0, 0)
            obj: dict[str, Any] = {"promptFeedback": feedback, "usageMetadata": usage, **base}
            return json_reply(200, obj, self, shape.request_id)
        thoughts = _THOUGHT_TOKENS if shape.chat.thinking else 0
        parts: list[dict[str, Any]] = [{"text": THOUGHT, "thought": True}] if thoughts else []
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
        return json_reply(200, obj, self, shape.request_id)

    def stream_reply(
        self, plan: ReplyPlan, shape: Shape, extra: list[tuple[str, str]]
    ) -> StreamReply:
        def event(obj: dict[str, Any]) -> bytes:
            # Gemini frames its SSE with CRLF line ends and sends no terminator.
            return b"data: " + encode(obj) + b"\r\n\r\n"

        head, content, tail = self._chunks(plan, shape)
        error = {"code": 500, "message": _GEMINI_MESSAGES[500], "status": "INTERNAL"}
        return StreamReply(
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
