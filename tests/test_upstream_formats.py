"""The fake upstream's wire formats: one request decoder per format, shared with _decode.

The server reads each vendor's request through its format module's decoder
(``decode_chat``, ``decode_messages``, ``decode_generate``), and so do the public
``decode_*_request`` functions.  These tests pin that they cannot drift apart: a body is
refused by the fake upstream is refused by the decoder too (with a ValueError, never
another exception), and what the decoder reads is what the server planned from.  (The
decoder may refuse more: a body the server answers can still hold something a
``ChatRequest`` cannot, such as a tool without a name.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import ChatRequest
from providers.testing import (
    FakeUpstream,
    decode_anthropic_request,
    decode_gemini_request,
    decode_ollama_request,
    decode_openai_request,
)
from providers.testing._formats import FORMATS, UPSTREAM_KINDS
from providers.testing._formats._base import RequestError, Route, VendorFormat

USER = {"role": "user", "content": "hello there"}
PNG = "iVBORw0KGgo="
PNG_URL = f"data:image/png;base64,{PNG}"

#: wire -> (route endpoint, a valid chat body, the public decoder, the body's mutable paths)
CASES: dict[str, tuple[str, dict[str, Any], Callable[[dict[str, Any]], ChatRequest]]] = {
    "openai": (
        "chat",
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
            ],
            "max_tokens": 10,
            "temperature": 0.5,
            "stop": ["x"],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto",
            "response_format": {"type": "json_object"},
            "stream": False,
        },
        decode_openai_request,
    ),
    "anthropic": (
        "messages",
        {
            "model": "m",
            "max_tokens": 10,
            "system": "be brief",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}],
                },
            ],
            "temperature": 0.5,
            "stop_sequences": ["x"],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto"},
        },
        decode_anthropic_request,
    ),
    "gemini": (
        "generate",
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "look"},
                        {"inlineData": {"mimeType": "image/png", "data": PNG}},
                    ],
                },
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "f", "response": {"output": "ok"}}}],
                },
            ],
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "generationConfig": {"maxOutputTokens": 10, "temperature": 0.5},
            "tools": [{"functionDeclarations": [{"name": "f", "parameters": {}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        },
        lambda body: decode_gemini_request(body, model="m"),
    ),
    "ollama": (
        "chat",
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "look", "images": [PNG]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {}}}],
                },
                {"role": "tool", "content": "done", "tool_call_id": "call_0"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "options": {"num_predict": 10, "temperature": 0.5},
            "format": "json",
            "stream": False,
        },
        decode_ollama_request,
    ),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into ``obj`` (dict keys and list indices), depth first."""
    out: list[tuple[Any, ...]] = []
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def mutated(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with one value replaced by arbitrary JSON, or one key removed."""
    out = copy.deepcopy(body)
    path = draw(st.sampled_from(_paths(body)))
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return out


def _server_accepts(vendor: VendorFormat, endpoint: str, body: dict[str, Any]) -> bool:
    route = Route(scenario="s", vendor=vendor.name, endpoint=endpoint, model_id="m")  # type: ignore[arg-type]
    try:
        vendor.read_chat(route, body, "")
    except RequestError:
        return False
    return True


def _decoder_accepts(decode: Callable[[dict[str, Any]], ChatRequest], body: dict[str, Any]) -> bool:
    try:
        decode(body)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("wire", sorted(CASES))
def test_the_valid_bodies_are_valid(wire: str) -> None:
    """Each format's base body (the one the property mutates) passes both readers."""
    endpoint, body, decode = CASES[wire]
    assert _server_accepts(FORMATS[wire], endpoint, body)  # type: ignore[index]
    assert _decoder_accepts(decode, body)


@pytest.mark.parametrize("wire", sorted(CASES))
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_what_the_server_refuses_the_decoder_refuses(wire: str, data: st.DataObject) -> None:
    """Invariant: for any one-field mutation of a valid body, if the fake upstream refuses
    it then ``decode_*_request`` raises ValueError; and the decoder raises nothing else."""
    endpoint, body, decode = CASES[wire]
    mutant = data.draw(mutated(body))
    decoded = _decoder_accepts(decode, mutant)  # any other exception fails the test
    if not _server_accepts(FORMATS[wire], endpoint, mutant):  # type: ignore[index]
        assert not decoded, mutant


async def test_gemini_snake_case_reads_the_same_as_camel_case(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Gemini takes proto field names in snake_case too: the server answers such a body,
    and decode_gemini_request reads the same request from it as from camelCase."""
    camel = {
        "contents": [{"role": "user", "parts": [{"text": "one two three four five"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": 2, "stopSequences": ["x"]},
        "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
    }
    snake = {
        "contents": [{"role": "user", "parts": [{"text": "one two three four five"}]}],
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "generation_config": {"max_output_tokens": 2, "stop_sequences": ["x"]},
        "tool_config": {"function_calling_config": {"mode": "NONE"}},
    }
    expected = decode_gemini_request(camel, model="m")
    assert expected.max_tokens == 2
    assert expected.stop == ["x"]
    got = decode_gemini_request(snake, model="m")
    assert (got.messages, got.max_tokens, got.stop, got.tool_choice) == (
        expected.messages,
        expected.max_tokens,
        expected.stop,
        expected.tool_choice,
    )
    url = upstream.base_url("s", "gemini") + "/models/m:generateContent"
    r = await client.post(url, json=snake, headers={"x-goog-api-key": "k"})
    assert r.status_code == 200, r.text
    assert r.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"  # it read max_output_tokens


@pytest.mark.parametrize(
    ("wire", "body", "says"),
    [
        ("openai", {"model": "m", "messages": []}, "messages: must not be empty"),
        ("openai", {"model": "m", "messages": [USER], "max_tokens": "ten"}, "max_tokens"),
        ("anthropic", {"model": "m", "messages": [USER]}, "max_tokens: Field required"),
        ("gemini", {"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
        ("gemini", {"contents": [USER], "max_tokens": 5}, 'Unknown name "max_tokens"'),
        (
            "ollama",
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "cannot unmarshal array",
        ),
    ],
)
def test_decoders_refuse_in_the_vendors_words(wire: str, body: dict[str, Any], says: str) -> None:
    """decode_*_request refuses a body the vendor refuses with a ValueError carrying the
    vendor's own message (the one the fake upstream answers with)."""
    _, _, decode = CASES[wire]
    with pytest.raises(ValueError, match=None) as caught:
        decode(body)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("openai", "/chat/completions"),
        ("anthropic", "/v1/messages"),
        ("gemini", "/models/m:generateContent"),
        ("ollama", "/api/chat"),
    ],
)
async def test_a_body_nested_too_deep_is_a_bad_request_not_a_crash(
    upstream: FakeUpstream, client: httpx.AsyncClient, kind: str, path: str
) -> None:
    """JSON nested deeper than the decoder goes is the vendor's invalid-JSON 400, and the
    server goes on answering (it used to raise RecursionError out of the server)."""
    deep = b'{"contents": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    headers = {
        "authorization": "Bearer k",
        "x-api-key": "k",
        "anthropic-version": "2023-06-01",
        "x-goog-api-key": "k",
        "content-type": "application/json",
    }
    url = upstream.base_url("s", kind) + path
    r = await client.post(url, content=deep, headers=headers)
    assert r.status_code == 400, r.text
    assert FORMATS[UPSTREAM_KINDS[kind][0]].bad_json_message in r.text
    ok = await client.post(url, content=b"{}", headers=headers)  # still serving
    assert ok.status_code == 400
