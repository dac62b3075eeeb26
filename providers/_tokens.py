"""A fast token estimate, used before sending: admission (TPM), context windows, budgets.

Roughly four characters per token for text (the common rule of thumb for English with
BPE tokenizers), a fixed overhead per message, a flat cost per image and a cost for
each tool's JSON schema.  It errs on the high side — better to wait for tokens we did
not need than to be refused by the provider — and the actor reconciles it with the usage
the provider reports.
"""

from __future__ import annotations

import msgspec

from ._types import ChatRequest, TextPart

__all__ = ["estimate_input_tokens", "estimate_text_tokens"]

#: Tokens per message for role markers and separators.
MESSAGE_OVERHEAD = 4
#: A flat estimate per image (OpenAI bills a 512 px tile at 170 + 85; Anthropic ~1.6k for 1 MP).
IMAGE_TOKENS = 765


def estimate_text_tokens(text: str) -> int:
    """About one token per four characters, at least one for non-empty text.

    Example::

        >>> estimate_text_tokens("hello world")
        3
    """
    if not text:
        return 0
    return (len(text) + 3) // 4


def estimate_input_tokens(request: ChatRequest) -> int:
    """Estimated prompt tokens of ``request``: messages, images, tool calls and schemas."""
    total = 3
    for m in request.messages:
        total += MESSAGE_OVERHEAD
        if isinstance(m.content, str):
            total += estimate_text_tokens(m.content)
        else:
            for p in m.content:
                total += estimate_text_tokens(p.text) if isinstance(p, TextPart) else IMAGE_TOKENS
        for c in m.tool_calls:
            total += estimate_text_tokens(c.name) + len(msgspec.json.encode(c.arguments)) // 4
    for t in request.tools:
        total += 8 + estimate_text_tokens(t.name + t.description)
        total += len(msgspec.json.encode(t.parameters)) // 4
    if request.response_format is not None and request.response_format.schema is not None:
        total += len(msgspec.json.encode(request.response_format.schema)) // 4
    return total
