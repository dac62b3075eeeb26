"""Anthropic's wire format: messages (JSON and named SSE events), count_tokens, models.

The request Structs here (:class:`MessagesBody`) are the one decoder of Anthropic
request bodies: :func:`providers.testing.decode_anthropic_request` reads them too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from .._records import ScenarioState
from .._scenario import ChatView, OfferedTool, ReplyPlan, Scenario, estimate_input_tokens
from ._base import (
    ANTHROPIC_VERSION_HEADER,
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
    encode,
    json_reply,
    phrase,
    rfc3339,
)

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization. "
        "Please reduce the prompt length or the maximum tokens requested, or try again later.",
    ),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}


# --------------------------------------------------------------------------- request Structs
# The one decoder of Anthropic request bodies: the server reads a request through them,
# and so does decode_anthropic_request (providers/testing/_decode.py).  Lenient: unknown
# fields are ignored; a content block of an unknown ``type`` is refused, as Anthropic does.


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class Base64Source(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: str
    data: str


class URLSource(msgspec.Struct, tag="url", tag_field="type"):
    url: str


class FileSource(msgspec.Struct, tag="file", tag_field="type"):
    file_id: str


class ImageBlock(msgspec.Struct, tag="image", tag_field="type"):
    source: Base64Source | URLSource | FileSource


class DocumentBlock(msgspec.Struct, tag="document", tag_field="type"):
    source: dict[str, Any] = {}


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any] = {}


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] = ""
    is_error: bool | None = None


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type"):
    thinking: str = ""
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    data: str = ""


Block = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


def blocks_text(blocks: str | Sequence[Block], sep: str = " ") -> str:
    """The text of a content (or ``system``) value: the string, or its text blocks."""
    if isinstance(blocks, str):
        return blocks
    return sep.join(b.text for b in blocks if isinstance(b, TextBlock))


class MessageBody(msgspec.Struct):
    role: str
    content: str | list[Block]


class ToolDef(msgspec.Struct):
    name: str = ""
    description: str = ""
    input_schema: dict[str, Any] | UnsetType = UNSET
    strict: bool | None = None


class ToolChoiceBody(msgspec.Struct):
    type: Literal["auto", "any", "tool", "none"] = "auto"
    name: str | None = None


class FormatBody(msgspec.Struct):
    type: str = ""
    schema: dict[str, Any] | None = None


class OutputConfig(msgspec.Struct):
    format: FormatBody | None = None


class ThinkingBody(msgspec.Struct):
    type: str = ""
    budget_tokens: int | None = None


class MessagesBody(msgspec.Struct):
    """A Messages (or count_tokens) request body."""

    model: str
    messages: list[MessageBody]
    max_tokens: int | None = None
    system: str | list[TextBlock] | None = None
    stream: bool | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceBody | None = None
    output_config: OutputConfig | None = None
    #: The older name of ``output_config.format``, still accepted.
    output_format: FormatBody | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    thinking: ThinkingBody | None = None


def decode_messages(body: Any, *, count_tokens: bool = False) -> MessagesBody:
    """Decode and check a Messages body (or a count_tokens one) as Anthropic does.

    Raises:
        RequestError: what Anthropic answers (a 400 ``invalid_request_error``).
    """
    req: MessagesBody = convert_body(body, MessagesBody)
    if not count_tokens and req.max_tokens is None:
        raise RequestError(400, "max_tokens: Field required", param="max_tokens")
    return req


def _or_empty(schema: dict[str, Any] | UnsetType) -> dict[str, Any]:
    return {} if isinstance(schema, UnsetType) else schema


def _anthropic_view(req: MessagesBody) -> ChatView:
    chars = len(blocks_text(req.system)) if req.system is not None else 0
    last_user = ""
    tool_result: str | None = None
    mentions: str | None = None
    for message in req.messages:
        content = message.content
        text = blocks_text(content)
        results: list[str] = []
        if isinstance(content, list):
            for block in content:
                if isinstance(block, ToolResultBlock):
                    results.append(blocks_text(block.content))
                elif isinstance(block, ToolUseBlock):
                    chars += len(encode(block.input))
        chars += len(text) + sum(len(r) for r in results)
        if message.role == "user":
            if text or not results:
                last_user = text
            tool_result = " ".join(results) if results else None
            mentions = text if not results else None
        else:
            tool_result = mentions = None
    tools = [OfferedTool(t.name, _or_empty(t.input_schema)) for t in req.tools or ()]
    choice = req.tool_choice.type if req.tool_choice else "auto"
    forced = req.tool_choice.name if req.tool_choice else None
    fmt = req.output_config.format if req.output_config else None
    fmt = fmt or req.output_format
    schema = (fmt.schema or {}) if fmt is not None and fmt.type == "json_schema" else None
    n_messages = len(req.messages) + (1 if req.system else 0)
    return ChatView(
        last_user_text=last_user,
        tool_result=tool_result,
        mentions=mentions,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        schema=schema,
        stop=req.stop_sequences or (),
        max_tokens=req.max_tokens,
        input_tokens=estimate_input_tokens(chars, n_messages),
    )


_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_use": "tool_use",
    "content_filter": "refusal",
}


class AnthropicFormat(VendorFormat):
    name: Wire = "anthropic"
    kinds: Mapping[str, str] = {"anthropic": ""}
    request_id_header = "request-id"
    missing_auth_message = "x-api-key header is required"
    bad_json_message = "There was an error parsing the body of your request: invalid JSON"

    def authorized(self, headers: Mapping[str, str], query: str, route: Route) -> bool:
        return bool(headers.get("x-api-key", "").strip()) or bearer(headers)

    def check_request(self, headers: Mapping[str, str], query: str, route: Route) -> None:
        if ANTHROPIC_VERSION_HEADER not in headers:
            raise RequestError(400, "anthropic-version: header is required")

    def not_found_message(self, method: str, path: str) -> str:
        return "Not Found"

    def error_body(self, error: RequestError, request_id: str) -> Any:
        kind, _ = _ANTHROPIC_ERRORS.get(
            error.status, ("api_error" if error.status >= 500 else "invalid_request_error", "")
        )
        return {
            "type": "error",
            "error": {"type": kind, "message": error.message},
            "request_id": request_id,
        }

    def fault_error(
        self, status: int, state: ScenarioState, retry_after: float | None
    ) -> RequestError:
        return RequestError(status, _ANTHROPIC_ERRORS.get(status, ("", phrase(status)))[1])

    def context_error(self, limit: int, requested: int) -> RequestError:
        return RequestError(400, f"prompt is too long: {requested} tokens > {limit} maximum")

    def ratelimit_headers(
        self, state: ScenarioState, wall: float, retry_after: float | None
    ) -> list[tuple[str, str]]:
        requests, tokens = state.request_bucket, state.token_bucket
        remaining_requests = 0 if retry_after is not None else requests.remaining()
        reset_requests = retry_after if retry_after is not None else requests.reset_after()
        return [
            ("anthropic-ratelimit-requests-limit", str(int(requests.limit))),
            ("anthropic-ratelimit-requests-remaining", str(remaining_requests)),
            ("anthropic-ratelimit-requests-reset", rfc3339(wall + reset_requests)),
            ("anthropic-ratelimit-tokens-limit", str(int(tokens.limit))),
            ("anthropic-ratelimit-tokens-remaining", str(tokens.remaining())),
            ("anthropic-ratelimit-tokens-reset", rfc3339(wall + tokens.reset_after())),
        ]

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> Reply:
        def entry(model: str) -> dict[str, Any]:
            return {
                "type": "model",
                "id": model,
                "display_name": model,
                "created_at": "2024-01-01T00:00:00Z",
            }

        if model_id:
            if model_id not in scenario.models:
                raise RequestError(404, f"model: {model_id}")
            return json_reply(200, entry(model_id), self, request_id)
        models = scenario.models
        obj = {
            "data": [entry(m) for m in models],
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
        return json_reply(200, obj, self, request_id)

    def read_chat(self, route: Route, body: Any, query: str) -> ChatRead:
        an = decode_messages(body, count_tokens=route.endpoint == "count_tokens")
        return ChatRead(view=_anthropic_view(an), model=an.model, stream=bool(an.stream))

    def count_tokens_reply(self, tokens: int, request_id: str) -> Reply:
        return json_reply(200, {"input_tokens": tokens}, self, request_id)

    @staticmethod
    def _usage(plan: ReplyPlan, cached: int, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": plan.input_tokens - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": output_tokens,
        }

    def chat_reply(self, plan: ReplyPlan, shape: Shape) -> Reply:
        n, cached = shape.n, shape.cached
        blocks: list[dict[str, Any]]
        if plan.tool_name is not None:
            blocks = [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{n:012d}",
                    "name": plan.tool_name,
                    "input": plan.tool_input,
                }
            ]
        elif plan.text or plan.finish != "content_filter":
            blocks = [{"type": "text", "text": plan.text}]
        else:
            blocks = []
        obj = {
            "id": f"msg_fake{n:012d}",
            "type": "message",
            "role": "assistant",
            "model": shape.model,
            "content": blocks,
            "stop_reason": _ANTHROPIC_STOP[plan.finish],
            "stop_sequence": plan.stop_sequence,
            "usage": {**self._usage(plan, cached, plan.output_tokens), "service_tier": "standard"},
        }
        return json_reply(200, obj, self, shape.request_id)

    def stream_reply(
        self, plan: ReplyPlan, shape: Shape, extra: list[tuple[str, str]]
    ) -> StreamReply:
        n, cached = shape.n, shape.cached

        def event(name: bytes, obj: dict[str, Any]) -> bytes:
            return b"event: " + name + b"\ndata: " + encode(obj) + b"\n\n"

        message: dict[str, Any] = {
            "id": f"msg_fake{n:012d}",
            "type": "message",
            "role": "assistant",
            "model": shape.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self._usage(plan, cached, 1), "service_tier": "standard"},
        }
        block: dict[str, Any]
        if plan.tool_name is not None:
            block = {
                "type": "tool_use",
                "id": f"toolu_fake{n:012d}",
                "name": plan.tool_name,
                "input": {},
            }

            def delta(piece: str) -> dict[str, Any]:
                return {"type": "input_json_delta", "partial_json": piece}
        else:
            block = {"type": "text", "text": ""}

            def delta(piece: str) -> dict[str, Any]:
                return {"type": "text_delta", "text": piece}

        head = [
            event(b"message_start", {"type": "message_start", "message": message}),
            event(b"ping", {"type": "ping"}),
            event(
                b"content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
        ]
        content = [
            event(
                b"content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": delta(piece)},
            )
            for piece in plan.chunks
        ]
        tail = [
            event(b"content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": _ANTHROPIC_STOP[plan.finish],
                        "stop_sequence": plan.stop_sequence,
                    },
                    "usage": self._usage(plan, cached, plan.output_tokens),
                },
            ),
            event(b"message_stop", {"type": "message_stop"}),
        ]
        error = {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": shape.request_id,
        }
        return StreamReply(
            headers=self.stream_headers(shape.request_id, extra),
            head=head,
            content=content,
            tail=tail,
            error_event=event(b"error", error),
            malformed_event=(
                b"event: content_block_delta\n"
                b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
                b'"text":"\n\n'
            ),
        )
