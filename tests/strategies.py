"""hypothesis strategies for the shared vocabulary."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st

from providers import (
    AnthropicProvider,
    ChatRequest,
    ForceTool,
    ImagePart,
    Message,
    ResponseFormat,
    TextPart,
    ToolCall,
    ToolSpec,
)
from providers._anthropic import structured_tool

# Text that survives JSON either way: any unicode except lone surrogates.
text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30)
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,15}", fullmatch=True)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
arguments = st.dictionaries(names, json_values, max_size=3)

images = st.one_of(
    st.builds(
        ImagePart,
        url=st.sampled_from(["https://example.com/a.png", "https://example.com/b.jpg"]),
    ),
    st.builds(
        ImagePart,
        data=st.sampled_from(["iVBORw0KGgo=", "R0lGODlhAQABAAAAACw="]),
        media_type=st.sampled_from(["image/png", "image/gif", "image/jpeg", "image/webp"]),
    ),
)


@st.composite
def user_messages(draw: st.DrawFn) -> Message:
    if draw(st.booleans()):
        return Message.user(draw(text))
    parts: list[Any] = [TextPart(text=draw(text))]
    parts += draw(st.lists(images, min_size=1, max_size=2))
    return Message(role="user", content=parts)


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(Message.system(draw(text)))
    for turn in range(draw(st.integers(1, 3))):
        messages.append(draw(user_messages()))
        if turn == 0 and draw(st.booleans()):
            continue
        if draw(st.booleans()):
            n = draw(st.integers(1, 2))
            calls = [
                ToolCall(id=f"call_{turn}_{i}", name=draw(names), arguments=draw(arguments))
                for i in range(n)
            ]
            messages.append(Message.assistant(draw(st.just("") | text), tool_calls=calls))
            messages += [Message.tool(c.id, draw(text)) for c in calls]
            messages.append(Message.assistant(draw(text)))
        else:
            messages.append(Message.assistant(draw(text)))
    return messages


tool_specs = st.builds(
    ToolSpec,
    name=names,
    description=st.just("") | text,
    parameters=st.just({"type": "object", "properties": {"city": {"type": "string"}}}),
)


@st.composite
def chat_requests(draw: st.DrawFn, *, seed: bool = True) -> ChatRequest:
    """Valid requests; temperatures in 0..1 so every vendor takes them."""
    tools = draw(st.lists(tool_specs, max_size=2, unique_by=lambda t: t.name))
    choices: list[Any] = [None, "auto", "none"]
    if tools:
        choices += ["required", ForceTool(name=tools[0].name)]
    return ChatRequest(
        model=draw(st.sampled_from(["gpt-4o-mini", "claude-3-5-haiku-latest", "m"])),
        messages=draw(conversations()),
        temperature=draw(st.none() | st.floats(0, 1)),
        top_p=draw(st.none() | st.floats(0.01, 1)),
        max_tokens=draw(st.none() | st.integers(1, 4096)),
        stop=draw(st.none() | st.lists(text, min_size=1, max_size=3)),
        seed=draw(st.none() | st.integers(0, 2**31)) if seed else None,
        tools=tools,
        tool_choice=draw(st.sampled_from(choices)),
        response_format=draw(
            st.sampled_from(
                [None, ResponseFormat.json_schema({"type": "object", "properties": {}})]
            )
        ),
    )


def anthropic_view(request: ChatRequest) -> ChatRequest:
    """What Anthropic can carry: no seed, no image detail, max_tokens always set, a
    structured-output format as a forced tool."""

    def strip(m: Message) -> Message:
        if isinstance(m.content, list):
            parts = [
                ImagePart(url=p.url, data=p.data, media_type=p.media_type)
                if isinstance(p, ImagePart)
                else p
                for p in m.content
            ]
            return msgspec.structs.replace(m, content=parts)
        return m

    view = msgspec.structs.replace(
        request,
        messages=[strip(m) for m in request.messages],
        seed=None,
        max_tokens=request.max_tokens or AnthropicProvider.default_max_tokens,
    )
    fmt = request.response_format
    tool = structured_tool(request)
    if tool is not None and fmt is not None and fmt.schema is not None:
        # Structured output goes as a forced tool whose input schema is the format's.
        view = msgspec.structs.replace(
            view,
            tools=[ToolSpec(name=tool, description=fmt.description or "", parameters=fmt.schema)],
            tool_choice=ForceTool(name=tool),
            response_format=None,
        )
    return view
