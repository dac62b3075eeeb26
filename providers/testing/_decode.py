"""Vendor request bodies back into :class:`ChatRequest`: the upstream's view of a request.

The adapters translate our requests into each vendor's body; these functions do the
reverse, as a server would read them.  A test can then say exactly what the fake
upstream received — ``decode_openai_request(body) == what the caller built`` — instead of
poking at JSON paths.

Each function reads the body through the fake upstream's own decoder for that format
(``decode_chat``, ``decode_messages``, ``decode_generate`` in
:mod:`providers.testing._formats`): the same msgspec Structs, the same checks.  So a
body the fake upstream refuses is a ``ValueError`` here, with the vendor's message, and
what these functions read is what the server planned its answer from.

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
from ._formats import anthropic, gemini, ollama, openai

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

    The body is decoded and checked by the fake upstream's own OpenAI decoder
    (:func:`~._formats.openai.decode_chat`).  Fields we do not model land in ``extra``.

    Raises:
        ValueError: a body OpenAI would refuse, in OpenAI's words (naming the field).
    """
    req = openai.decode_chat(body)
    messages: list[Message] = []
    for m in req.messages:
        role = m.role
        if role == "developer":
            role = "system"
        if role == "tool":
            messages.append(Message.tool(m.tool_call_id or "", openai.content_text(m.content, "")))
            continue
        content: str | list[Part]
        if isinstance(m.content, list):
            parts: list[Part] = []
            for p in m.content:
                if isinstance(p, openai.TextContent):
                    parts.append(TextPart(text=p.text))
                elif isinstance(p, openai.ImageContent):
                    parts.append(_image_from_url(p.image_url.url, p.image_url.detail))
            content = parts
        else:
            content = m.content or ""
        calls = []
        for c in m.tool_calls or []:
            function = c.function or openai.CallFunction()
            args, bad = parse_tool_arguments(function.arguments)
            calls.append(ToolCall(id=c.id, name=function.name, arguments=args, raw_arguments=bad))
        messages.append(Message(role=role, content=content, tool_calls=calls, name=m.name))  # type: ignore[arg-type]

    choice: ToolChoice | None = None
    if isinstance(req.tool_choice, openai.NamedToolChoice):
        choice = ForceTool(name=req.tool_choice.function.name)
    elif req.tool_choice is not None:
        choice = req.tool_choice

    fmt: ResponseFormat | None = None
    raw_fmt = req.response_format
    if raw_fmt is not None and raw_fmt.type == "json_object":
        fmt = ResponseFormat.json_object()
    elif raw_fmt is not None and raw_fmt.type == "json_schema":
        js = raw_fmt.json_schema or openai.JsonSchemaBody()
        fmt = ResponseFormat(
            type="json_schema",
            name=js.name if js.name is not None else "response",
            schema=js.schema,
            strict=js.strict if js.strict is not None else True,
            description=js.description,
        )

    tools: list[ToolSpec] = []
    for t in req.tools or []:
        function_def = t.function or openai.FunctionDef()
        tools.append(
            ToolSpec(
                name=function_def.name,
                description=function_def.description,
                parameters=_schema_or_empty(function_def.parameters),
                strict=function_def.strict,
            )
        )
    max_tokens = req.max_completion_tokens
    if max_tokens is None and "max_completion_tokens" not in body:
        max_tokens = req.max_tokens
    return ChatRequest(
        model=req.model,
        messages=messages,
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=max_tokens,
        stop=[req.stop] if isinstance(req.stop, str) else req.stop,
        seed=req.seed,
        tools=tools,
        tool_choice=choice,
        response_format=fmt,
        extra={k: v for k, v in body.items() if k not in _OPENAI_KNOWN},
    )


def _empty_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


def _schema_or_empty(schema: dict[str, Any] | msgspec.UnsetType) -> dict[str, Any]:
    """A tool's parameter schema; an absent one is an object without properties."""
    if isinstance(schema, msgspec.UnsetType):
        return _empty_schema()
    return schema


def decode_anthropic_request(body: dict[str, Any]) -> ChatRequest:
    """Read an Anthropic Messages body as a :class:`ChatRequest`.

    The body is decoded and checked by the fake upstream's own Anthropic decoder
    (:func:`~._formats.anthropic.decode_messages`).  The top-level ``system`` becomes one
    system message; ``tool_result`` blocks become tool messages, in order.  Fields we do
    not model land in ``extra``.

    Raises:
        ValueError: a body Anthropic would refuse, in Anthropic's words.
    """
    req = anthropic.decode_messages(body)
    messages: list[Message] = []
    system = anthropic.blocks_text(req.system, "") if req.system is not None else ""
    if system:
        messages.append(Message.system(system))
    for m in req.messages:
        raw = m.content
        if isinstance(raw, str):
            messages.append(Message(role=m.role, content=raw))  # type: ignore[arg-type]
            continue
        parts: list[Part] = []
        calls: list[ToolCall] = []
        for b in raw:
            if isinstance(b, anthropic.TextBlock):
                parts.append(TextPart(text=b.text))
            elif isinstance(b, anthropic.ImageBlock):
                parts.append(_anthropic_image(b.source))
            elif isinstance(b, anthropic.ToolUseBlock):
                calls.append(ToolCall(id=b.id, name=b.name, arguments=b.input))
            elif isinstance(b, anthropic.ToolResultBlock):
                content = anthropic.blocks_text(b.content, "")
                messages.append(Message.tool(b.tool_use_id, content, is_error=bool(b.is_error)))
        if m.role == "assistant":
            text = "".join(p.text for p in parts if isinstance(p, TextPart))
            messages.append(Message.assistant(text, tool_calls=calls))
        elif parts:
            messages.append(Message(role="user", content=parts))

    choice: ToolChoice | None = None
    if req.tool_choice is not None:
        kind = req.tool_choice.type
        if kind == "tool":
            choice = ForceTool(name=req.tool_choice.name or "")
        else:
            choice = _ANTHROPIC_CHOICE[kind]

    fmt: ResponseFormat | None = None
    output = req.output_config.format if req.output_config is not None else None
    if output is not None:
        fmt = ResponseFormat.json_schema(output.schema)  # type: ignore[arg-type]

    return ChatRequest(
        model=req.model,
        messages=messages,
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens,
        stop=req.stop_sequences,
        tools=[
            ToolSpec(
                name=t.name,
                description=t.description,
                parameters=_schema_or_empty(t.input_schema),
                strict=t.strict,
            )
            for t in req.tools or []
        ],
        tool_choice=choice,
        response_format=fmt,
        thinking_budget=req.thinking.budget_tokens if req.thinking else None,
        extra={k: v for k, v in body.items() if k not in _ANTHROPIC_KNOWN},
    )


def _anthropic_image(
    source: anthropic.Base64Source | anthropic.URLSource | anthropic.FileSource,
) -> ImagePart:
    if isinstance(source, anthropic.Base64Source):
        return ImagePart(data=source.data, media_type=source.media_type)
    if isinstance(source, anthropic.URLSource):
        return ImagePart(url=source.url)
    raise ValueError("an image from the Files API has no ImagePart form")


_ANTHROPIC_CHOICE: dict[str, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}


# --------------------------------------------------------------------------- Gemini

#: GenerationConfig attribute -> ChatRequest field.
_GEMINI_GENERATION = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_output_tokens": "max_tokens",
    "stop_sequences": "stop",
    "seed": "seed",
}
_GEMINI_KNOWN = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
_GEMINI_CHOICE: dict[str, ToolChoice] = {"AUTO": "auto", "NONE": "none", "ANY": "required"}


def decode_gemini_request(body: dict[str, Any], *, model: str) -> ChatRequest:
    """Read a Gemini ``generateContent`` body as a :class:`ChatRequest`.

    The body is decoded and checked by the fake upstream's own Gemini decoder
    (:func:`~._formats.gemini.decode_generate`; camelCase or snake_case names).
    ``model`` comes from the URL (``models/{model}:generateContent``), not the body.
    Each ``systemInstruction`` part becomes a system message; ``functionResponse`` parts
    become tool messages (their ``id`` the call id, ``response.output`` or
    ``response.error`` the content).  A user turn of one text part is a plain string.
    Fields we do not model land in ``extra``.

    Raises:
        ValueError: a body Gemini would refuse, in Gemini's words.

    Example::

        body = GeminiProvider(api_key="k").build_body(request)
        assert decode_gemini_request(body, model=request.model) == request
    """
    req = gemini.decode_generate(body)
    messages: list[Message] = []
    if req.system_instruction is not None:
        for part in req.system_instruction.parts or []:
            messages.append(Message.system(part.text or ""))
    for content in req.contents:
        parts: list[Part] = []
        calls: list[ToolCall] = []
        for part in content.parts or []:
            if part.text is not None and not part.thought:
                parts.append(TextPart(text=part.text))
            elif part.inline_data is not None:
                inline = part.inline_data
                parts.append(ImagePart(data=inline.data, media_type=inline.mime_type))
            elif part.function_call is not None:
                call = part.function_call
                args = call.args if isinstance(call.args, dict) else {}
                calls.append(
                    ToolCall(id=call.id or f"call_{len(calls)}", name=call.name, arguments=args)
                )
            elif part.function_response is not None:
                result = part.function_response
                response = result.response if isinstance(result.response, dict) else {}
                is_error = "error" in response and "output" not in response
                text = response.get("error" if is_error else "output", "")
                if not isinstance(text, str):
                    text = msgspec.json.encode(text).decode()
                messages.append(Message.tool(result.id or result.name, text, is_error=is_error))
        if content.role == "model":
            text = "".join(p.text for p in parts if isinstance(p, TextPart))
            messages.append(Message.assistant(text, tool_calls=calls))
        elif len(parts) == 1 and isinstance(parts[0], TextPart):
            messages.append(Message.user(parts[0].text))
        elif parts:
            messages.append(Message(role="user", content=parts))

    tools = [
        ToolSpec(
            name=decl.name,
            description=decl.description,
            parameters=_gemini_parameters(decl),
        )
        for tool in req.tools or []
        for decl in tool.function_declarations or []
    ]
    choice: ToolChoice | None = None
    calling = req.tool_config.function_calling_config if req.tool_config else None
    if calling is not None:
        mode = calling.mode
        allowed = calling.allowed_function_names or []
        if mode == "ANY" and len(allowed) == 1:
            choice = ForceTool(name=allowed[0])
        else:
            choice = _GEMINI_CHOICE.get(mode, "auto")

    generation = req.generation_config or gemini.GenerationConfig()
    fields: dict[str, Any] = {}
    for theirs, ours in _GEMINI_GENERATION.items():
        value = getattr(generation, theirs)
        if value is not None:
            fields[ours] = value
    if generation.response_mime_type == "application/json":
        schema = generation.response_json_schema
        if schema is None:
            schema = generation.response_schema
        fields["response_format"] = (
            ResponseFormat.json_schema(schema)
            if schema is not None
            else ResponseFormat.json_object()
        )
    thinking = generation.thinking_config
    if thinking is not None and thinking.thinking_budget is not None:
        fields["thinking_budget"] = thinking.thinking_budget
    return ChatRequest(
        model=model,
        messages=messages,
        tools=tools,
        tool_choice=choice,
        extra={k: v for k, v in body.items() if k not in _GEMINI_KNOWN},
        **fields,
    )


def _gemini_parameters(decl: gemini.FunctionDeclaration) -> dict[str, Any]:
    """The declaration's schema as sent (JSON schema first), or an empty object schema."""
    if decl.parameters_json_schema is not None:
        return decl.parameters_json_schema
    return decl.parameters or _empty_schema()


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

    The body is decoded and checked by the fake upstream's own Ollama decoder
    (:func:`~._formats.ollama.decode_chat`).  A message with ``images`` becomes its text
    part followed by the images (media types sniffed with :func:`sniff_image_type`);
    ``think`` is only a switch, so no thinking budget comes back.  Unknown top-level
    fields land in ``extra``; unknown ``options`` (``num_ctx``...) are dropped.

    Raises:
        ValueError: a body Ollama would refuse, in Ollama's words.

    Example::

        body = OllamaProvider().build_body(request, stream=False)
        assert decode_ollama_request(body).messages == request.messages
    """
    req = ollama.decode_chat(body)
    messages: list[Message] = []
    for m in req.messages or []:
        role = m.role
        text = m.content or ""
        if role == "tool":
            messages.append(Message.tool(m.tool_call_id or "", text))
            continue
        images = m.images or []
        content: str | list[Part] = text
        if images:
            parts: list[Part] = [TextPart(text=text)] if text else []
            parts += [ImagePart(data=i, media_type=sniff_image_type(i)) for i in images]
            content = parts
        calls = [
            ToolCall(
                id=c.id or f"call_{i}",
                name=c.function.name if c.function is not None else "",
                arguments=ollama.call_arguments(c),
            )
            for i, c in enumerate(m.tool_calls or [])
        ]
        messages.append(Message(role=role, content=content, tool_calls=calls))  # type: ignore[arg-type]
    fields: dict[str, Any] = {}
    if req.options is not None:
        for theirs, ours in _OLLAMA_OPTIONS.items():
            value = getattr(req.options, theirs)
            if value is not None:
                fields[ours] = value
    if isinstance(req.format, dict):
        fields["response_format"] = ResponseFormat.json_schema(req.format)
    elif req.format == "json":
        fields["response_format"] = ResponseFormat.json_object()
    tools: list[ToolSpec] = []
    for t in req.tools or []:
        function = t.function or ollama.FunctionDef()
        parameters = function.parameters
        tools.append(
            ToolSpec(
                name=function.name,
                description=function.description,
                parameters=parameters if isinstance(parameters, dict) else _empty_schema(),
            )
        )
    return ChatRequest(
        model=req.model,
        messages=messages,
        tools=tools,
        extra={k: v for k, v in body.items() if k not in _OLLAMA_KNOWN},
        **fields,
    )
