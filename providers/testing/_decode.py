"""Vendor request bodies back into :class:`ChatRequest`: the upstream's view of a request.

The adapters translate our requests into each vendor's body; these functions do the
reverse, as a server would read them.  A test can then say exactly what the fake
upstream received — ``decode_openai_request(body) == what the caller built`` — instead of
poking at JSON paths.

Where a format cannot carry something (Gemini and Ollama have no image ``detail``,
Ollama no ``tool_choice`` and no image order among text), the decoders return what the
server could know; the round-trip tests compare against the request as that format can
carry it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

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

__all__ = [
    "decode_anthropic_request",
    "decode_gemini_request",
    "decode_ollama_request",
    "decode_openai_request",
    "sniff_image_type",
]

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


# --------------------------------------------------------------------------- Gemini

_GEMINI_GENERATION = {
    "temperature": "temperature",
    "topP": "top_p",
    "maxOutputTokens": "max_tokens",
    "stopSequences": "stop",
    "seed": "seed",
}
_GEMINI_KNOWN = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
_GEMINI_CHOICE: dict[str, ToolChoice] = {"AUTO": "auto", "NONE": "none", "ANY": "required"}


def decode_gemini_request(body: dict[str, Any], *, model: str) -> ChatRequest:
    """Read a Gemini ``generateContent`` body (camelCase) as a :class:`ChatRequest`.

    ``model`` comes from the URL (``models/{model}:generateContent``), not the body.
    Each ``systemInstruction`` part becomes a system message; ``functionResponse`` parts
    become tool messages (their ``id`` the call id, ``response.output`` or
    ``response.error`` the content).  A user turn of one text part is a plain string.
    Fields we do not model land in ``extra``.

    Example::

        body = GeminiProvider(api_key="k").build_body(request)
        assert decode_gemini_request(body, model=request.model) == request
    """
    messages: list[Message] = []
    system = body.get("systemInstruction") or {}
    for part in system.get("parts") or []:
        messages.append(Message.system(part.get("text", "")))
    for content in body.get("contents") or []:
        parts: list[Part] = []
        calls: list[ToolCall] = []
        for part in content.get("parts") or []:
            if "text" in part and not part.get("thought"):
                parts.append(TextPart(text=part["text"]))
            elif "inlineData" in part:
                inline = part["inlineData"]
                parts.append(ImagePart(data=inline["data"], media_type=inline["mimeType"]))
            elif "functionCall" in part:
                call = part["functionCall"]
                calls.append(
                    ToolCall(
                        id=call.get("id") or f"call_{len(calls)}",
                        name=call["name"],
                        arguments=call.get("args") or {},
                    )
                )
            elif "functionResponse" in part:
                result = part["functionResponse"]
                response = result.get("response") or {}
                is_error = "error" in response and "output" not in response
                text = response.get("error" if is_error else "output", "")
                if not isinstance(text, str):
                    text = msgspec.json.encode(text).decode()
                messages.append(
                    Message.tool(result.get("id") or result["name"], text, is_error=is_error)
                )
        if content.get("role") == "model":
            text = "".join(p.text for p in parts if isinstance(p, TextPart))
            messages.append(Message.assistant(text, tool_calls=calls))
        elif len(parts) == 1 and isinstance(parts[0], TextPart):
            messages.append(Message.user(parts[0].text))
        elif parts:
            messages.append(Message(role="user", content=parts))

    tools: list[ToolSpec] = []
    for tool in body.get("tools") or []:
        for decl in tool.get("functionDeclarations") or []:
            parameters = decl.get("parametersJsonSchema", decl.get("parameters"))
            tools.append(
                ToolSpec(
                    name=decl["name"],
                    description=decl.get("description", ""),
                    parameters=parameters or {"type": "object", "properties": {}},
                )
            )
    choice: ToolChoice | None = None
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig")
    if calling is not None:
        mode = calling.get("mode", "AUTO")
        allowed = calling.get("allowedFunctionNames") or []
        if mode == "ANY" and len(allowed) == 1:
            choice = ForceTool(name=allowed[0])
        else:
            choice = _GEMINI_CHOICE.get(mode, "auto")

    generation = dict(body.get("generationConfig") or {})
    fields: dict[str, Any] = {
        ours: generation[theirs]
        for theirs, ours in _GEMINI_GENERATION.items()
        if theirs in generation
    }
    if generation.get("responseMimeType") == "application/json":
        schema = generation.get("responseJsonSchema", generation.get("responseSchema"))
        fields["response_format"] = (
            ResponseFormat.json_schema(schema)
            if schema is not None
            else ResponseFormat.json_object()
        )
    thinking = generation.get("thinkingConfig") or {}
    if "thinkingBudget" in thinking:
        fields["thinking_budget"] = thinking["thinkingBudget"]
    return ChatRequest(
        model=model,
        messages=messages,
        tools=tools,
        tool_choice=choice,
        extra={k: v for k, v in body.items() if k not in _GEMINI_KNOWN},
        **fields,
    )


# --------------------------------------------------------------------------- Ollama

_OLLAMA_KNOWN = {"model", "messages", "tools", "format", "options", "stream", "think"}
_OLLAMA_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
}
_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
)


def sniff_image_type(data: str) -> str:
    """The media type of base64 image ``data`` from its first bytes (PNG if unknown).

    Ollama takes images as bare base64, without a type; this is how a server tells.

    Example::

        >>> sniff_image_type("R0lGODlhAQABAAAAACw=")
        'image/gif'
    """
    try:
        head = base64.b64decode(data[:16] + "=" * (-len(data[:16]) % 4))
    except (binascii.Error, ValueError):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), "image/png")


def decode_ollama_request(body: dict[str, Any]) -> ChatRequest:
    """Read an Ollama ``/api/chat`` body as a :class:`ChatRequest`.

    A message with ``images`` becomes its text part followed by the images (media
    types sniffed with :func:`sniff_image_type`); ``think`` is only a switch, so no
    thinking budget comes back.  Unknown top-level fields land in ``extra``; unknown
    ``options`` (``num_ctx``...) are dropped.

    Example::

        body = OllamaProvider().build_body(request, stream=False)
        assert decode_ollama_request(body).messages == request.messages
    """
    messages: list[Message] = []
    for m in body.get("messages") or []:
        role = m["role"]
        text = m.get("content") or ""
        if role == "tool":
            messages.append(Message.tool(m.get("tool_call_id") or "", text))
            continue
        images = m.get("images") or []
        content: str | list[Part] = text
        if images:
            parts: list[Part] = [TextPart(text=text)] if text else []
            parts += [ImagePart(data=i, media_type=sniff_image_type(i)) for i in images]
            content = parts
        calls = [
            ToolCall(
                id=c.get("id") or f"call_{i}",
                name=c["function"]["name"],
                arguments=c["function"].get("arguments") or {},
            )
            for i, c in enumerate(m.get("tool_calls") or [])
        ]
        messages.append(Message(role=role, content=content, tool_calls=calls))
    options = body.get("options") or {}
    fields: dict[str, Any] = {
        ours: options[theirs] for theirs, ours in _OLLAMA_OPTIONS.items() if theirs in options
    }
    fmt = body.get("format")
    if isinstance(fmt, dict):
        fields["response_format"] = ResponseFormat.json_schema(fmt)
    elif fmt == "json":
        fields["response_format"] = ResponseFormat.json_object()
    return ChatRequest(
        model=body["model"],
        messages=messages,
        tools=[
            ToolSpec(
                name=t["function"]["name"],
                description=t["function"].get("description", ""),
                parameters=t["function"].get("parameters", {"type": "object", "properties": {}}),
            )
            for t in body.get("tools") or []
        ],
        extra={k: v for k, v in body.items() if k not in _OLLAMA_KNOWN},
        **fields,
    )
