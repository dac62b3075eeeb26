"""OpenAI's wire format: chat completions (JSON and SSE), embeddings, models.

Also what OpenRouter, Groq and Together speak (their quirks are scenario switches:
``openrouter_processing``, ``usage_location="x_groq"``, ``azure_filter_chunks``).  The
request Structs here (:class:`ChatBody`, :class:`EmbeddingBody`) are the one decoder of
OpenAI request bodies: :func:`providers.testing.decode_openai_request` reads them too.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

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
    ChatRead,
    Reply,
    RequestError,
    Route,
    Shape,
    StreamReply,
    VendorFormat,
    Wire,
    bearer,
    convert_body,
    embedding,
    encode,
    go_duration,
    json_reply,
    phrase,
)

_FINGERPRINT = "fp_fakeupstream"


# status -> (type, code, message)
OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", None, "The requested resource does not exist."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Another request is in progress; try again."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", ""),  # message built per response
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: (
        "service_unavailable_error",
        "server_is_overloaded",
        "The server is overloaded or not ready yet.",
    ),
    504: ("server_error", None, "Gateway timeout."),
}

# --------------------------------------------------------------------------- request Structs
# The one decoder of OpenAI request bodies: the server reads a request through them, and
# so does decode_openai_request (providers/testing/_decode.py).  Lenient: vendors add
# fields all the time, so unknown ones are ignored.  UNSET marks "absent", where a reader
# supplies its own default.


class FunctionDef(msgspec.Struct):
    name: str = ""
    description: str = ""
    parameters: dict[str, Any] | UnsetType = UNSET
    strict: bool | None = None


class ToolDef(msgspec.Struct):
    type: str = "function"
    function: FunctionDef | None = None


class CallFunction(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class ToolCallBody(msgspec.Struct):
    id: str = ""
    function: CallFunction | None = None


class TextContent(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageURL(msgspec.Struct):
    url: str
    detail: str | None = None


class ImageContent(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: ImageURL


class AudioContent(msgspec.Struct, tag="input_audio", tag_field="type"):
    input_audio: dict[str, Any] = {}


class FileContent(msgspec.Struct, tag="file", tag_field="type"):
    file: dict[str, Any] = {}


class RefusalContent(msgspec.Struct, tag="refusal", tag_field="type"):
    refusal: str = ""


#: One content part; any other ``type`` is refused, as OpenAI does.
ContentPart = TextContent | ImageContent | AudioContent | FileContent | RefusalContent


def content_text(content: str | list[ContentPart] | None, sep: str = " ") -> str:
    """The text of a message's content: the string, or its text parts joined by ``sep``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return sep.join(part.text for part in content if isinstance(part, TextContent))


class MessageBody(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    """``{"type": "function", "function": {"name": ...}}``: call this tool."""

    function: NamedFunction
    type: str = "function"


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class JsonSchemaBody(msgspec.Struct):
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormatBody(msgspec.Struct):
    type: str
    json_schema: JsonSchemaBody | None = None


class ChatBody(msgspec.Struct):
    """A Chat Completions request body."""

    model: str
    messages: list[MessageBody]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormatBody | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


class EmbeddingBody(msgspec.Struct):
    """An embeddings request body."""

    model: str
    input: Any
    dimensions: int | None = None
    encoding_format: str | None = None


def decode_chat(body: Any) -> ChatBody:
    """Decode and check a Chat Completions body as OpenAI does.

    Raises:
        RequestError: what OpenAI answers (a 400 naming the parameter).
    """
    req: ChatBody = convert_body(body, ChatBody)
    if not req.messages:
        raise RequestError(400, "messages: must not be empty", param="messages")
    return req


def _or_empty(schema: dict[str, Any] | UnsetType) -> dict[str, Any]:
    return {} if isinstance(schema, UnsetType) else schema


def _openai_view(req: ChatBody) -> ChatView:
    chars = 0
    last_user = ""
    for message in req.messages:
        text = content_text(message.content)
        chars += len(text)
        for call in message.tool_calls or ():
            if call.function is not None:
                chars += len(call.function.arguments)
        if message.role == "user":
            last_user = text
    last = req.messages[-1] if req.messages else None
    tools = [
        OfferedTool(t.function.name, _or_empty(t.function.parameters))
        for t in req.tools or ()
        if t.type == "function" and t.function is not None
    ]
    choice: str | None
    forced: str | None = None
    if isinstance(req.tool_choice, NamedToolChoice):
        choice, forced = "tool", req.tool_choice.function.name
    else:
        choice = req.tool_choice
    schema: dict[str, Any] | None = None
    json_mode = False
    if req.response_format is not None:
        if req.response_format.type == "json_schema" and req.response_format.json_schema:
            schema = req.response_format.json_schema.schema or {}
        json_mode = req.response_format.type == "json_object"
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    return ChatView(
        last_user_text=last_user,
        tool_result=content_text(last.content) if last and last.role == "tool" else None,
        mentions=content_text(last.content) if last and last.role == "user" else None,
        tools=tools,
        tool_choice=choice or "auto",
        forced_tool=forced,
        schema=schema,
        json_mode=json_mode,
        stop=stop,
        max_tokens=req.max_completion_tokens
        if req.max_completion_tokens is not None
        else req.max_tokens,
        input_tokens=estimate_input_tokens(chars, len(req.messages)),
    )


def _openai_embeddings(
    req: EmbeddingBody, request_id: str, vendor: VendorFormat
) -> tuple[Reply, int]:
    inputs = req.input
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and all(isinstance(x, int) for x in inputs)
    ):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "input: must be a non-empty string or array", param="input")
    dimensions = req.dimensions if req.dimensions is not None else 8
    if dimensions < 1:
        raise RequestError(400, "dimensions: must be at least 1", param="dimensions")
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            key = item.encode()
            tokens += estimate_text_tokens(len(item))
        elif isinstance(item, list) and all(isinstance(x, int) for x in item):
            key = encode(item)
            tokens += len(item)
        else:
            raise RequestError(400, f"input[{index}]: expected a string or tokens", param="input")
        vector = embedding(key, dimensions)
        shown: Any = vector
        if req.encoding_format == "base64":
            shown = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": shown})
    obj = {
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json_reply(200, obj, vendor, request_id), tokens


_OPENAI_FINISH = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
}
AZURE_SAFE = {
    category: {"filtered": False, "severity": "safe"}
    for category in ("hate", "self_harm", "sexual", "violence")
}
AZURE_FILTERED = {**AZURE_SAFE, "violence": {"filtered": True, "severity": "high"}}


class OpenAIFormat(VendorFormat):
    name: Wire = "openai"
    kinds: Mapping[str, str] = {
        "openai": "/v1",
        "openrouter": "/v1",
        "groq": "/v1",
        "together": "/v1",
        "openai-compatible": "/v1",
    }
    request_id_header = "x-request-id"
    retry_after_ms_header = True
    missing_auth_message = (
        "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    bad_json_message = (
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
        "but what was sent was not valid JSON.)"
    )

    def authorized(self, headers: Mapping[str, str], query: str, route: Route) -> bool:
        return bearer(headers)

    def not_found_message(self, method: str, path: str) -> str:
        return f"Invalid URL ({method} {path})"

    def error_body(self, error: RequestError, request_id: str) -> Any:
        default = "server_error" if error.status >= 500 else "invalid_request_error"
        kind = OPENAI_ERRORS.get(error.status, (default,))[0]
        return {
            "error": {
                "message": error.message,
                "type": kind,
                "param": error.param,
                "code": error.code,
            }
        }

    def fault_error(
        self, status: int, state: ScenarioState, retry_after: float | None
    ) -> RequestError:
        _, code, message = OPENAI_ERRORS.get(status, ("", None, phrase(status)))
        if status == 429:
            limit = state.scenario.ratelimit_requests
            message = (
                f"Rate limit reached for requests per min (RPM): Limit {limit}, Used {limit}, "
                f"Requested 1. Please try again in {go_duration(retry_after or 0.0)}. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
        return RequestError(status, message, code=code)

    def context_error(self, limit: int, requested: int) -> RequestError:
        return RequestError(
            400,
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {requested} tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )

    def ratelimit_headers(
        self, state: ScenarioState, wall: float, retry_after: float | None
    ) -> list[tuple[str, str]]:
        requests, tokens = state.request_bucket, state.token_bucket
        remaining_requests = 0 if retry_after is not None else requests.remaining()
        reset_requests = retry_after if retry_after is not None else requests.reset_after()
        return [
            ("x-ratelimit-limit-requests", str(int(requests.limit))),
            ("x-ratelimit-limit-tokens", str(int(tokens.limit))),
            ("x-ratelimit-remaining-requests", str(remaining_requests)),
            ("x-ratelimit-remaining-tokens", str(tokens.remaining())),
            ("x-ratelimit-reset-requests", go_duration(reset_requests)),
            ("x-ratelimit-reset-tokens", go_duration(tokens.reset_after())),
        ]

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> Reply:
        def entry(model: str) -> dict[str, Any]:
            return {"id": model, "object": "model", "created": 1700000000, "owned_by": "system"}

        if model_id:
            if model_id not in scenario.models:
                raise RequestError(
                    404,
                    f"The model '{model_id}' does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
            return json_reply(200, entry(model_id), self, request_id)
        obj = {"object": "list", "data": [entry(m) for m in scenario.models]}
        return json_reply(200, obj, self, request_id)

    def _with_model(self, route: Route, body: Any) -> Any:
        return body

    def embeddings_reply(self, route: Route, body: Any, request_id: str) -> tuple[Reply, int]:
        req = convert_body(self._with_model(route, body), EmbeddingBody)
        return _openai_embeddings(req, request_id, self)

    def read_chat(self, route: Route, body: Any, query: str) -> ChatRead:
        oa = decode_chat(self._with_model(route, body))
        return ChatRead(
            view=_openai_view(oa),
            model=oa.model,
            stream=bool(oa.stream),
            include_usage=bool(oa.stream_options and oa.stream_options.include_usage),
        )

    @staticmethod
    def _usage(plan: ReplyPlan, cached: int) -> dict[str, Any]:
        return {
            "prompt_tokens": plan.input_tokens,
            "completion_tokens": plan.output_tokens,
            "total_tokens": plan.input_tokens + plan.output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def chat_reply(self, plan: ReplyPlan, shape: Shape) -> Reply:
        n, scenario = shape.n, shape.scenario
        message: dict[str, Any] = {
            "role": "assistant",
            "content": plan.text if plan.text or plan.finish != "content_filter" else None,
            "refusal": None,
            "annotations": [],
        }
        if plan.tool_name is not None:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_fake{n:012d}",
                    "type": "function",
                    "function": {"name": plan.tool_name, "arguments": plan.text},
                }
            ]
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": _OPENAI_FINISH[plan.finish],
        }
        obj: dict[str, Any] = {
            "id": f"chatcmpl-fake{n:012d}",
            "object": "chat.completion",
            "created": shape.created,
            "model": shape.model,
            "choices": [choice],
            "usage": self._usage(plan, shape.cached),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        if scenario.azure_filter_chunks:
            filtered = plan.finish == "content_filter"
            choice["content_filter_results"] = AZURE_FILTERED if filtered else AZURE_SAFE
            obj["prompt_filter_results"] = [
                {"prompt_index": 0, "content_filter_results": AZURE_SAFE}
            ]
        if scenario.usage_location == "x_groq":
            obj["x_groq"] = {"id": shape.request_id}
        return json_reply(200, obj, self, shape.request_id)

    def stream_reply(
        self, plan: ReplyPlan, shape: Shape, extra: list[tuple[str, str]]
    ) -> StreamReply:
        n, scenario = shape.n, shape.scenario
        # Groq's shape: usage rides on the finish chunk, never in a separate chunk.
        groq = scenario.usage_location == "x_groq"
        include_usage = shape.chat.include_usage and not groq
        azure = scenario.azure_filter_chunks
        base: dict[str, Any] = {
            "id": f"chatcmpl-fake{n:012d}",
            "object": "chat.completion.chunk",
            "created": shape.created,
            "model": shape.model,
            "system_fingerprint": _FINGERPRINT,
        }
        if include_usage:
            base["usage"] = None

        def data(obj: dict[str, Any]) -> bytes:
            return b"data: " + encode(obj) + b"\n\n"

        def event(delta: dict[str, Any], finish: str | None = None, **top: Any) -> bytes:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            if azure:
                filtered = finish == "content_filter"
                choice["content_filter_results"] = AZURE_FILTERED if filtered else AZURE_SAFE
            return data({**base, "choices": [choice], **top})

        if plan.tool_name is not None:
            call = {
                "index": 0,
                "id": f"call_fake{n:012d}",
                "type": "function",
                "function": {"name": plan.tool_name, "arguments": ""},
            }
            head = [
                event({"role": "assistant", "content": None, "tool_calls": [call], "refusal": None})
            ]
            content = [
                event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in plan.chunks
            ]
        else:
            head = [event({"role": "assistant", "content": "", "refusal": None})]
            content = [event({"content": piece}) for piece in plan.chunks]
        if azure:
            # Azure's first chunk: no choices, empty id and model, the prompt's filter.
            head.insert(
                0,
                data(
                    {
                        "choices": [],
                        "created": 0,
                        "id": "",
                        "model": "",
                        "object": "",
                        "prompt_filter_results": [
                            {"prompt_index": 0, "content_filter_results": AZURE_SAFE}
                        ],
                    }
                ),
            )
        head[:0] = [b": OPENROUTER PROCESSING\n\n"] * scenario.openrouter_processing
        usage = self._usage(plan, shape.cached)
        finish = _OPENAI_FINISH[plan.finish]
        if groq:
            x_groq = {"id": shape.request_id, "usage": {**usage, "queue_time": 0.001}}
            tail = [event({}, finish, x_groq=x_groq)]
        else:
            tail = [event({}, finish)]
        if include_usage:
            tail.append(data({**base, "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        error = {
            "error": {
                "message": OPENAI_ERRORS[500][2],
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }

        def error_chunk(status: int) -> bytes:
            # OpenRouter: an error during generation arrives as a 200 chunk with a
            # numeric code and a choice that finished with "error".
            message = OPENAI_ERRORS.get(status, ("", None, phrase(status)))[2]
            choice = {
                "index": 0,
                "delta": {"content": ""},
                "logprobs": None,
                "finish_reason": "error",
            }
            obj = {
                **base,
                "error": {"code": status, "message": message or phrase(status)},
                "choices": [choice],
            }
            return data(obj) + b"data: [DONE]\n\n"

        return StreamReply(
            headers=self.stream_headers(shape.request_id, extra),
            head=head,
            content=content,
            tail=tail,
            error_event=data(error),
            malformed_event=(
                b'data: {"id":"' + base["id"].encode() + b'","object":"chat.completion.chunk",'
                b'"choices":[{"index":0,"delta":{"content":"\n\n'
            ),
            error_chunk=error_chunk,
        )
