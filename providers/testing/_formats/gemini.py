"""Gemini's wire format (Generative Language API v1beta): camelCase JSON, ``google.rpc`` errors.

generateContent, streamGenerateContent (SSE with CRLF and no terminator, or one JSON
array), countTokens, embedContent, batchEmbedContents, models (paged).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

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


def _gemini_result_text(response: Any) -> str:
    if isinstance(response, dict):
        for key in ("output", "result", "content", "error"):
            value = response.get(key)
            if isinstance(value, str):
                return value
    return encode(response).decode()


def _gemini_text(parts: Any) -> str:
    if not isinstance(parts, list):
        return ""
    return " ".join(
        str(p["text"]) for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _gemini_view(body: Any) -> tuple[ChatView, bool]:
    """Read and check a ``generateContent`` body the way Gemini does; (view, thinking).

    The checks are the traps real adapters fall into: unknown (e.g. OpenAI-style)
    field names, roles other than ``user``/``model``, empty parts, arguments or
    responses that are not objects, ``data:`` URLs where base64 belongs, a schema
    without ``responseMimeType``, and function responses that do not answer the
    previous turn's calls one for one.
    """
    if not isinstance(body, dict):
        raise _gemini_invalid("Invalid JSON payload received. Expected an object.")
    for key in body:
        if _camel(key) not in _GEMINI_TOP:
            raise _gemini_unknown(key)
    top = _camel_keys(body)
    raw_generation = top.get("generationConfig") or {}
    if not isinstance(raw_generation, dict):
        raise _gemini_invalid("Invalid value at 'generation_config'", "generation_config")
    for key in raw_generation:
        if _camel(key) not in _GEMINI_GENERATION:
            raise _gemini_unknown(key, "generation_config")
    generation = _camel_keys(raw_generation)
    contents = top.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _gemini_invalid("* GenerateContentRequest.contents: contents is not specified\n")

    chars = 0
    n_messages = 0
    system = _camel_keys(top.get("systemInstruction"))
    if system:
        chars += len(_gemini_text(system.get("parts")))
        n_messages += 1
    last_user = ""
    tool_result: str | None = None
    mentions: str | None = None
    open_calls: int | None = None  # calls made by the previous (model) turn
    for i, raw_content in enumerate(contents):
        content = _camel_keys(raw_content)
        role = content.get("role", "user")
        if role not in ("user", "model", "function", "tool"):
            raise _gemini_invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _gemini_invalid(
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )
        calls = 0
        results: list[str] = []
        texts: list[str] = []
        for j, raw_part in enumerate(parts):
            part = _camel_keys(raw_part)
            where = f"contents[{i}].parts[{j}]"
            if isinstance(part.get("text"), str):
                if not part.get("thought"):
                    texts.append(part["text"])
            elif "inlineData" in part:
                inline = _camel_keys(part["inlineData"])
                if not isinstance(inline.get("mimeType"), str):
                    raise _gemini_invalid(
                        f"* GenerateContentRequest.{where}.inline_data.mime_type: "
                        "mime_type is not specified\n"
                    )
                if not base64_ok(inline.get("data"), urlsafe=True):
                    shown = str(inline.get("data"))[:40]
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), "
                        f'Base64 decoding failed for "{shown}"',
                        f"{where}.inline_data.data",
                    )
            elif "functionCall" in part:
                call = _camel_keys(part["functionCall"])
                args = call.get("args", {})
                if not isinstance(args, dict):
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.function_call.args' "
                        f"(type.googleapis.com/google.protobuf.Struct), {encode(args).decode()}",
                        f"{where}.function_call.args",
                    )
                if not call.get("name"):
                    raise _gemini_invalid(
                        f"* GenerateContentRequest.{where}.function_call.name: "
                        "name is not specified\n"
                    )
                calls += 1
                chars += len(encode(args))
            elif "functionResponse" in part:
                response = _camel_keys(part["functionResponse"]).get("response", {})
                if not isinstance(response, dict):
                    raise _gemini_invalid(
                        f"Invalid value at '{where}.function_response.response' "
                        "(type.googleapis.com/google.protobuf.Struct)",
                        f"{where}.function_response.response",
                    )
                results.append(_gemini_result_text(response))
            elif "fileData" not in part:
                raise _gemini_invalid(
                    f"* GenerateContentRequest.{where}.data: required oneof field 'data' "
                    "must have one initialized field\n"
                )
        if open_calls is not None and len(results) != open_calls:
            raise _gemini_invalid(
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn."
            )
        if open_calls is None and results:
            raise _gemini_invalid(
                "Please ensure that function response turn comes immediately after a "
                "function call turn."
            )
        open_calls = calls if role == "model" and calls else None
        text = " ".join(texts)
        chars += len(text) + sum(len(r) for r in results)
        n_messages += 1
        if role == "model":
            tool_result = mentions = None
        else:
            if text or not results:
                last_user = text
            tool_result = " ".join(results) if results else None
            mentions = text if not results else None

    tools: list[OfferedTool] = []
    for raw_tool in top.get("tools") or ():
        for raw_decl in _camel_keys(raw_tool).get("functionDeclarations") or ():
            decl = _camel_keys(raw_decl)
            schema = decl.get("parametersJsonSchema")
            if schema is None:
                schema = _lower_types(decl.get("parameters") or {})
            tools.append(OfferedTool(str(decl.get("name", "")), schema))
    calling = _camel_keys(_camel_keys(top.get("toolConfig")).get("functionCallingConfig"))
    mode = str(calling.get("mode", "AUTO")).upper()
    allowed = calling.get("allowedFunctionNames") or []
    if allowed and mode not in ("ANY", "VALIDATED"):
        raise _gemini_invalid(
            "allowed_function_names should only be set when the function calling mode is ANY"
        )
    choice = {"NONE": "none", "ANY": "required"}.get(mode, "auto")
    forced: str | None = None
    if mode == "ANY" and len(allowed) == 1:
        choice, forced = "tool", str(allowed[0])
    elif mode == "ANY" and allowed:
        tools = [t for t in tools if t.name in allowed]

    mime = generation.get("responseMimeType", "text/plain")
    json_schema = generation.get("responseJsonSchema")
    legacy_schema = generation.get("responseSchema")
    if json_schema is not None and legacy_schema is not None:
        raise _gemini_invalid("response_schema and response_json_schema cannot both be set.")
    if (json_schema is not None or legacy_schema is not None) and mime not in (
        "application/json",
        "text/x.enum",
    ):
        raise _gemini_invalid(
            "* GenerateContentRequest.generation_config.response_mime_type: "
            "response_mime_type must be application/json when a response schema is set.\n"
        )
    if legacy_schema is not None:
        _check_openapi_schema(legacy_schema, "generation_config.response_schema")
    schema = json_schema if json_schema is not None else _lower_types(legacy_schema)
    thinking = _camel_keys(generation.get("thinkingConfig"))
    max_tokens = generation.get("maxOutputTokens")
    view = ChatView(
        last_user_text=last_user,
        tool_result=tool_result,
        mentions=mentions,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        schema=schema if isinstance(schema, dict) else None,
        json_mode=mime == "application/json" and schema is None,
        stop=[str(s) for s in generation.get("stopSequences") or ()],
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        input_tokens=estimate_input_tokens(chars, n_messages),
    )
    return view, bool(thinking.get("includeThoughts"))


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
        view, thinking = _gemini_view(body)
        streaming = route.endpoint == "stream_generate"
        sse = query_value(query, "alt") == "sse"
        return ChatRead(
            view=view,
            model=route.model_id.removeprefix("models/"),
            stream=streaming and sse,
            array=streaming and not sse,
            thinking=thinking,
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
