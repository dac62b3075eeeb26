"""Ollama's native wire format: /api/chat, /api/embed, /api/tags.

``/api/chat`` streams NDJSON unless the body says ``"stream": false``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
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


def _ollama_view(body: Any) -> tuple[ChatView, str, bool, bool]:
    """Read and check an ``/api/chat`` body as Ollama does; (view, model, stream, think).

    The traps: ``stream`` defaults to true; ``content`` must be a string (no content
    parts: images go in ``images`` as bare base64, a ``data:`` URL fails to decode);
    tool-call ``arguments`` must be an object, not a JSON string.
    """
    if not isinstance(body, dict):
        raise RequestError(400, "json: cannot unmarshal into Go value of type api.ChatRequest")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model is required")
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise RequestError(
            400, "json: cannot unmarshal object into Go struct field ChatRequest.messages"
        )
    chars = 0
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            raise RequestError(400, "json: cannot unmarshal into Go value of type api.Message")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise RequestError(
                400,
                "json: cannot unmarshal array into Go struct field Message.messages.content "
                "of type string",
            )
        for image in message.get("images") or ():
            at = _go_base64_error(image)
            if at is not None:
                raise RequestError(400, f"illegal base64 data at input byte {at}")
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments", {}) if isinstance(function, dict) else None
            if not isinstance(arguments, dict):
                raise RequestError(
                    400,
                    "json: cannot unmarshal string into Go struct field "
                    "ToolCallFunction.messages.tool_calls.function.arguments of type "
                    "api.ToolCallFunctionArguments",
                )
            chars += len(encode(arguments))
        chars += len(content)
        if message.get("role") == "user":
            last_user = content
    last = messages[-1] if messages else {}
    tools: list[OfferedTool] = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            tools.append(
                OfferedTool(str(function.get("name", "")), function.get("parameters") or {})
            )
    fmt = body.get("format")
    options = body.get("options") or {}
    max_tokens = options.get("num_predict") if isinstance(options, dict) else None
    stop = options.get("stop") if isinstance(options, dict) else None
    view = ChatView(
        last_user_text=last_user,
        tool_result=str(last.get("content") or "") if last.get("role") == "tool" else None,
        mentions=str(last.get("content") or "") if last.get("role") == "user" else None,
        tools=tools,
        schema=fmt if isinstance(fmt, dict) else None,
        json_mode=fmt == "json",
        stop=[str(s) for s in stop or ()],
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
        input_tokens=estimate_input_tokens(chars, len(messages)),
    )
    return view, model, body.get("stream", True) is not False, bool(body.get("think"))


class OllamaFormat(VendorFormat):
    """Ollama's native API: NDJSON streams by default, ``{"error": "..."}`` bodies."""

    name: Wire = "ollama"
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
        view, model, stream, think = _ollama_view(body)
        return ChatRead(view=view, model=model, stream=stream, thinking=think)

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
