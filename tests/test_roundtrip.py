"""Request translation round-trips: what a vendor server reads equals what the caller built."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings

from providers import (
    AnthropicProvider,
    ChatRequest,
    OpenAIProvider,
    validate_request,
)
from providers.testing._decode import decode_anthropic_request, decode_openai_request

from .strategies import anthropic_view, chat_requests


def _json_roundtrip(body: dict[str, object]) -> dict[str, object]:
    # What actually crosses the wire is JSON bytes.
    decoded: dict[str, object] = msgspec.json.decode(msgspec.json.encode(body))
    return decoded


@settings(max_examples=60, deadline=None)
@given(chat_requests())
def test_openai_translation_round_trips(request: ChatRequest) -> None:
    """Invariant: decode_openai(build_body(r)) == r for every valid request."""
    validate_request(request)
    body = OpenAIProvider(api_key="k").build_body(request, stream=False)
    assert decode_openai_request(_json_roundtrip(body)) == request


@settings(max_examples=60, deadline=None)
@given(chat_requests(seed=False))
def test_anthropic_translation_round_trips(request: ChatRequest) -> None:
    """Invariant: decode_anthropic(build_body(r)) == r, up to what Anthropic cannot carry."""
    validate_request(request)
    body = AnthropicProvider(api_key="k").build_body(request, stream=False)
    assert decode_anthropic_request(_json_roundtrip(body)) == anthropic_view(request)
