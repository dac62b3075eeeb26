"""Ollama's native wire format: /api/chat, /api/embed, /api/tags.

``/api/chat`` streams NDJSON unless the body says ``"stream": false``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

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
    json_reply,
    phrase,
    text_reply,
)

_OLLAMA_ERRORS = {
    400: "invalid request",
    429: "too many requests",
    500: "an error was encountered while running the model",
    502: "bad gateway",
    503: "server busy, please try again.  maximum pending requests exceeded",
}
_OLLAMA_DONE = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_use": "stop",
    "content_filter": "stop",
}
_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _go_base64_error(data: Any) -> int | None:
    """Where Go's strict standard base64 decoder fails on ``data`` (None if it does not)."""
    if not isinstance(data, str):
        return 0
    for index, char in enumerate(data):
        if char not in _B64_ALPHABET:
            return index
    return None if base64_ok(data, urlsafe=False) else len(data)


def _rfc3339_nano(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


# --------------------------------------------------------------------------- request Structs
# The one decoder of /api/chat bodies: the server reads a request through decode_chat,
# and so does decode_ollama_request (providers/testing/_decode.py).  Where Ollama's Go
# decoder has its own words for a type error (content parts, string arguments), the
# field is ``Any`` and decode_chat checks it, saying what Ollama says.


class ToolFunctionBody(msgspec.Struct):
    name: str = ""
    #: Must be an object (Ollama refuses OpenAI's JSON string); checked by decode_chat.
    arguments: Any = UNSET


class ToolCallBody(msgspec.Struct):
    id: str | None = None
    function: ToolFunctionBody | None = None


class MessageBody(msgspec.Struct):
    role: str = ""
    #: Must be a string (no content parts); checked by decode_chat.
    content: Any = None
    #: Bare base64 (a ``data:`` URL fails to decode); checked by decode_chat.
    images: list[Any] | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: str | None = None


class FunctionDef(msgspec.Struct):
    name: str = ""
    description: str = ""
    parameters: dict[str, Any] | UnsetType | None = UNSET


class ToolDef(msgspec.Struct):
    type: str = "function"
    function: FunctionDef | None = None


class Options(msgspec.Struct):
    """The ``options`` Ollama's adapters send (others, like ``num_ctx``, are ignored)."""

    num_predict: int | None = None
    stop: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


class ChatBody(msgspec.Struct):
    """An ``/api/chat`` request body."""

    model: Any = None
    messages: list[MessageBody] | None = None
    tools: list[ToolDef] | None = None
    #: ``"json"``, or a JSON schema.
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    #: Ollama streams unless this is ``false``.
    stream: bool | None = None
    think: Any = None


def decode_chat(body: Any) -> ChatBody:
    """Decode and check an ``/api/chat`` body as Ollama does.

    The traps: ``content`` must be a string (no content parts: images go in ``images``
    as bare base64, a ``data:`` URL fails to decode); tool-call ``arguments`` must be an
    object, not a JSON string; ``model`` is required.

    Raises:
        RequestError: what Ollama answers (a 400 with its own wording).
    """
    if not isinstance(body, dict):
        raise RequestError(400, "json: cannot unmarshal into Go value of type api.ChatRequest")
    try:
        req = msgspec.convert(body, ChatBody)
    except msgspec.ValidationError as exc:
        raise RequestError(400, f"json: cannot unmarshal into api.ChatRequest: {exc}") from exc
    if not isinstance(req.model, str) or not req.model:
        raise RequestError(400, "model is required")
    for message in req.messages or ():
        if not isinstance(message.content or "", str):
            raise RequestError(
                400,
                "json: cannot unmarshal array into Go struct field Message.messages.content "
                "of type string",
            )
        for image in message.images or ():
            at = _go_base64_error(image)
            if at is not None:
                raise RequestError(400, f"illegal base64 data at input byte {at}")
        for call in message.tool_calls or ():
            arguments = call.function.arguments if call.function is not None else None
            if arguments is not UNSET and not isinstance(arguments, dict):
                raise RequestError(
                    400,
                    "json: cannot unmarshal string into Go struct field "
                    "ToolCallFunction.messages.tool_calls.function.arguments of type "
                    "api.ToolCallFunctionArguments",
                )
    return req


def call_arguments(call: ToolCallBody) -> dict[str, Any]:
    """A tool call's arguments (checked by :func:`decode_chat` to be an object)."""
    arguments = call.function.arguments if call.function is not None else UNSET
    return arguments if isinstance(arguments, dict) else {}


def _ollama_view(req: ChatBody) -> ChatView:
    """What the planner needs from a decoded ``/api/chat`` body."""
    messages = req.messages or []
    chars = 0
    last_user = ""
    for message in messages:
        content = message.content or ""
        for call in message.tool_calls or ():
            chars += len(encode(call_arguments(call)))
        chars += len(content)
        if message.role == "user":
            last_user = content
    last = messages[-1] if messages else None
    tools = [
        OfferedTool(
            t.function.name,
            t.function.parameters or {},
        )
        for t in req.tools or ()
        if t.function is not None
    ]
    fmt = req.format
    options = req.options or Options()
    max_tokens = options.num_predict
    return ChatView(
        last_user_text=last_user,
        tool_result=str(last.content or "") if last and last.role == "tool" else None,
        mentions=str(last.content or "") if last and last.role == "user" else None,
        tools=tools,
        schema=fmt if isinstance(fmt, dict) else None,
        json_mode=fmt == "json",
        stop=list(options.stop or ()),
        max_tokens=max_tokens if max_tokens is not None and max_tokens > 0 else None,
        input_tokens=estimate_input_tokens(chars, len(messages)),
    )


class OllamaFormat(VendorFormat):
    """Ollama's native API: NDJSON streams by default, ``{"error": "..."}`` bodies."""

    name: Wire = "ollama"
    kinds: Mapping[str, str] = {"ollama": ""}
    has_filter = False
    bad_json_message = "invalid character looking for beginning of value"

    def authorized(self, headers: Mapping[str, str], query: str, route: Route) -> bool:
        return True  # a local Ollama asks for no key

    def not_found_message(self, method: str, path: str) -> str:
        return "404 page not found"

    def unknown_url_reply(self, method: str, path: str, request_id: str) -> Reply:
        return text_reply(404, "text/plain", "404 page not found")

    def error_body(self, error: RequestError, request_id: str) -> Any:
        return {"error": error.message}

    def fault_error(
        self, status: int, state: ScenarioState, retry_after: float | None
    ) -> RequestError:
        if status == 404:
            model = state.scenario.models[0] if state.scenario.models else "fake-model"
            return RequestError(404, f'model "{model}" not found, try pulling it first')
        return RequestError(status, _OLLAMA_ERRORS.get(status, phrase(status).lower()))

    def context_error(self, limit: int, requested: int) -> RequestError:
        return RequestError(400, "the input length exceeds the context length")

    def models_reply(
        self, scenario: Scenario, model_id: str, request_id: str, wall: float, query: str
    ) -> Reply:
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }
        models = [
            {
                "name": model,
                "model": model,
                "modified_at": "2025-01-01T00:00:00.000000000Z",
                "size": 2_019_393_189,
                "digest": hashlib.sha256(model.encode()).hexdigest(),
                "details": details,
            }
            for model in scenario.models
        ]
        return json_reply(200, {"models": models}, self, request_id)

    def embeddings_reply(self, route: Route, body: Any, request_id: str) -> tuple[Reply, int]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise RequestError(400, "model is required")
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise RequestError(400, "invalid input type")
        dimensions = body.get("dimensions") or 8
        if not isinstance(dimensions, int) or dimensions < 1:
            raise RequestError(400, "dimensions must be a positive integer")
        tokens = sum(estimate_text_tokens(len(text)) for text in inputs)
        obj = {
            "model": body["model"],
            "embeddings": [embedding(text.encode(), dimensions) for text in inputs],
            "total_duration": 14_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": tokens,
        }
        return json_reply(200, obj, self, request_id), tokens

    def read_chat(self, route: Route, body: Any, query: str) -> ChatRead:
        req = decode_chat(body)
        return ChatRead(
            view=_ollama_view(req),
            model=req.model,
            stream=req.stream is not False,
            thinking=bool(req.think),
        )

    @staticmethod
    def _metrics(plan: ReplyPlan, cached: int) -> dict[str, Any]:
        # Only the evaluated (uncached) prompt is counted; zero counts are left out.
        evaluated = plan.input_tokens - cached
        metrics: dict[str, Any] = {
            "total_duration": 1_000_000 * (5 + plan.output_tokens),
            "load_duration": 1_000_000,
        }
        if evaluated:
            metrics["prompt_eval_count"] = evaluated
        metrics["prompt_eval_duration"] = 100_000 * max(1, evaluated)
        if plan.output_tokens:
            metrics["eval_count"] = plan.output_tokens
        metrics["eval_duration"] = 1_000_000 * plan.output_tokens
        return metrics

    @staticmethod
    def _tool_calls(plan: ReplyPlan) -> list[dict[str, Any]]:
        function = {"index": 0, "name": plan.tool_name, "arguments": plan.tool_input}
        return [{"function": function}]

    def chat_reply(self, plan: ReplyPlan, shape: Shape) -> Reply:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if shape.chat.thinking:
            message["thinking"] = THOUGHT
        if plan.tool_name is not None:
            message["content"] = ""
            message["tool_calls"] = self._tool_calls(plan)
        obj = {
            "model": shape.model,
            "created_at": _rfc3339_nano(shape.wall),
            "message": message,
            "done_reason": _OLLAMA_DONE[plan.finish],
            "done": True,
            **self._metrics(plan, shape.cached),
        }
        return json_reply(200, obj, self, shape.request_id)

    def stream_reply(
        self, plan: ReplyPlan, shape: Shape, extra: list[tuple[str, str]]
    ) -> StreamReply:
        created_at = _rfc3339_nano(shape.wall)

        def line(obj: dict[str, Any]) -> bytes:
            return encode(obj) + b"\n"

        def chunk(message: dict[str, Any]) -> bytes:
            return line(
                {
                    "model": shape.model,
                    "created_at": created_at,
                    "message": {"role": "assistant", **message},
                    "done": False,
                }
            )

        head = [chunk({"content": "", "thinking": THOUGHT})] if shape.chat.thinking else []
        if plan.tool_name is not None:
            content = [chunk({"content": "", "tool_calls": self._tool_calls(plan)})]
        else:
            content = [chunk({"content": piece}) for piece in plan.chunks]
        done = {
            "model": shape.model,
            "created_at": created_at,
            "message": {"role": "assistant", "content": ""},
            "done_reason": _OLLAMA_DONE[plan.finish],
            "done": True,
            **self._metrics(plan, shape.cached),
        }
        return StreamReply(
            headers=self.stream_headers(shape.request_id, extra),
            head=head,
            content=content,
            tail=[line(done)],
            error_event=line(
                {"error": "an error was encountered while running the model: unexpected EOF"}
            ),
            malformed_event=(
                b'{"model":"'
                + shape.model.encode()
                + b'","created_at":"'
                + created_at.encode()
                + b'","message":{"role":"assistant","content":"\n'
            ),
        )

    def stream_headers(
        self, request_id: str, extra: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        return [("content-type", "application/x-ndjson"), ("transfer-encoding", "chunked"), *extra]
