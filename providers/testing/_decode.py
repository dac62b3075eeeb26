"""Vendor request bodies back into :class:`ChatRequest`: the upstream's view of a request.

The adapters translate our requests into each vendor's body; these functions do the
reverse, as a server would read them.  A test can then say exactly what the fake
upstream received — ``decode_openai_request(body) == what the caller built`` — instead of
poking at JSON paths.
"""

from __future__ import annotations

from typing import Any

from .._types import (
    ChatRequest,
    ForceTool,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolSpec,
    parse_tool_arguments,
)

__all__ = ["decode_anthropic_request", "decode_openai_request"]

_OPENAI_KNOWN = {
    "model",
    "messages",
    "max_completion_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
    "stream_options",
}

_ANTHROPIC_KNOWN = {
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "tools",
    "tool_choice",
    "output_config",
    "thinking",
    "stream",
}


def _image_from_url(url: str, detail: Any = None) -> ImagePart:
    return ImagePart.from_url(url, detail=detail)


def decode_openai_request(body: dict[str, Any]) -> ChatRequest:
    """Read an OpenAI Chat Completions body as a :class:`ChatRequest`.

    Fields we do not model land in ``extra``.
    """
    messages: list[Message] = []
    for m in body.get("messages", []):
        role = m["role"]
        if role == "developer":
            role = "system"
        if role == "tool":
            messages.append(Message.tool(m["tool_call_id"], _openai_text(m.get("content"))))
            continue
        content: str | list[Part]
        raw = m.get("content")
        if isinstance(raw, list):
            parts: list[Part] = []
            for p in raw:
                if p.get("type") == "text":
                    parts.append(TextPart(text=p["text"]))
                elif p.get("type") == "image_url":
                    image = p["image_url"]
                    parts.append(_image_from_url(image["url"], image.get("detail")))
            content = parts
        else:
            content = raw or ""
        calls = []
        for c in m.get("tool_calls") or []:
            args, bad = parse_tool_arguments(c["function"].get("arguments") or "")
            calls.append(
                ToolCall(id=c["id"], name=c["function"]["name"], arguments=args, raw_arguments=bad)
            )
        messages.append(Message(role=role, content=content, tool_calls=calls, name=m.get("name")))

    choice: ToolChoice | None = None
    raw_choice = body.get("tool_choice")
    if isinstance(raw_choice, dict):
        choice = ForceTool(name=raw_choice["function"]["name"])
    elif raw_choice is not None:
        choice = raw_choice

    fmt: ResponseFormat | None = None
    raw_fmt = body.get("response_format")
    if raw_fmt is not None and raw_fmt.get("type") == "json_object":
        fmt = ResponseFormat.json_object()
    elif raw_fmt is not None and raw_fmt.get("type") == "json_schema":
        js = raw_fmt["json_schema"]
        fmt = ResponseFormat(
            type="json_schema",
            name=js.get("name", "response"),
            schema=js.get("schema"),
            strict=js.get("strict", True),
            description=js.get("description"),
        )

    stop = body.get("stop")
    return ChatRequest(
        model=body["model"],
        messages=messages,
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
        stop=[stop] if isinstance(stop, str) else stop,
        seed=body.get("seed"),
        tools=[
            ToolSpec(
                name=t["function"]["name"],
                description=t["function"].get("description", ""),
                parameters=t["function"].get("parameters", {"type": "object", "properties": {}}),
                strict=t["function"].get("strict"),
            )
            for t in body.get("tools") or []
        ],
        tool_choice=choice,
        response_format=fmt,
        extra={k: v for k, v in body.items() if k not in _OPENAI_KNOWN},
    )


def _openai_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content or ""


def decode_anthropic_request(body: dict[str, Any]) -> ChatRequest:
    """Read an Anthropic Messages body as a :class:`ChatRequest`.

    The top-level ``system`` becomes one system message; ``tool_result`` blocks become
    tool messages, in order.  Fields we do not model land in ``extra``.
    """
    messages: list[Message] = []
    system = body.get("system")
    if isinstance(system, list):
        system = "".join(b.get("text", "") for b in system)
    if system:
        messages.append(Message.system(system))
    for m in body.get("messages", []):
        raw = m["content"]
        if isinstance(raw, str):
            messages.append(Message(role=m["role"], content=raw))
            continue
        parts: list[Part] = []
        calls: list[ToolCall] = []
        for b in raw:
            kind = b.get("type")
            if kind == "text":
                parts.append(TextPart(text=b["text"]))
            elif kind == "image":
                src = b["source"]
                if src["type"] == "base64":
                    parts.append(ImagePart(data=src["data"], media_type=src["media_type"]))
                else:
                    parts.append(ImagePart(url=src["url"]))
            elif kind == "tool_use":
                calls.append(ToolCall(id=b["id"], name=b["name"], arguments=b.get("input") or {}))
            elif kind == "tool_result":
                content = b.get("content", "")
                if isinstance(content, list):
                    content = "".join(x.get("text", "") for x in content)
                messages.append(
                    Message.tool(b["tool_use_id"], content, is_error=bool(b.get("is_error")))
                )
        if m["role"] == "assistant":
            text = "".join(p.text for p in parts if isinstance(p, TextPart))
            messages.append(Message.assistant(text, tool_calls=calls))
        elif parts:
            messages.append(Message(role="user", content=parts))

    choice: ToolChoice | None = None
    raw_choice = body.get("tool_choice")
    if raw_choice is not None:
        kind = raw_choice["type"]
        choice = ForceTool(name=raw_choice["name"]) if kind == "tool" else _ANTHROPIC_CHOICE[kind]

    fmt: ResponseFormat | None = None
    output = body.get("output_config", {}).get("format")
    if output is not None:
        fmt = ResponseFormat.json_schema(output["schema"])

    thinking = body.get("thinking")
    return ChatRequest(
        model=body["model"],
        messages=messages,
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        max_tokens=body.get("max_tokens"),
        stop=body.get("stop_sequences"),
        tools=[
            ToolSpec(
                name=t["name"],
                description=t.get("description", ""),
                parameters=t.get("input_schema", {"type": "object", "properties": {}}),
                strict=t.get("strict"),
            )
            for t in body.get("tools") or []
        ],
        tool_choice=choice,
        response_format=fmt,
        thinking_budget=thinking.get("budget_tokens") if thinking else None,
        extra={k: v for k, v in body.items() if k not in _ANTHROPIC_KNOWN},
    )


_ANTHROPIC_CHOICE: dict[str, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}
