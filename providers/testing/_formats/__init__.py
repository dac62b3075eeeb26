"""The fake upstream's wire formats: one module per vendor, one table of them.

=============  ==============================================================
module         speaks
=============  ==============================================================
``openai``     OpenAI chat completions, embeddings, models (and OpenRouter,
               Groq, Together, any compatible server)
``azure``      Azure OpenAI: OpenAI's bodies behind Azure's paths and errors
``anthropic``  Anthropic messages, count_tokens, models
``gemini``     Gemini generateContent (JSON, SSE, JSON array), countTokens,
               embedContent, batchEmbedContents, models
``ollama``     Ollama /api/chat (NDJSON), /api/embed, /api/tags
=============  ==============================================================

Each module decodes its vendor's requests with the msgspec Structs that
:mod:`providers.testing._decode` reads too (one decoder per request format), and
implements :class:`~._base.VendorFormat`.  :data:`FORMATS` maps a wire name to its
format; :data:`UPSTREAM_KINDS` maps each provider kind to its wire format and base
path, built from each format's ``kinds``.  Adding a format: a module here, an entry in
:data:`FORMATS`, and a route in ``providers.testing._server._route``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ._base import VendorFormat, Wire
from .anthropic import AnthropicFormat
from .azure import AzureFormat
from .gemini import GeminiFormat
from .ollama import OllamaFormat
from .openai import OpenAIFormat

__all__ = ["FORMATS", "UPSTREAM_KINDS", "VendorFormat", "Wire"]

#: The format object for each wire name.
FORMATS: Mapping[Wire, VendorFormat] = MappingProxyType(
    {
        "openai": OpenAIFormat(),
        "anthropic": AnthropicFormat(),
        "gemini": GeminiFormat(),
        "ollama": OllamaFormat(),
        "azure": AzureFormat(),
    }
)

#: Every provider kind the server speaks to: its wire format, and the path its base URL
#: adds after ``{url}/{scenario}``, from each format's ``kinds``.
#: :meth:`FakeUpstream.base_url` is built from it, and ``llm-router upstream --help``
#: lists it, so neither can drift from the formats.
UPSTREAM_KINDS: Mapping[str, tuple[Wire, str]] = MappingProxyType(
    {kind: (wire, path) for wire, fmt in FORMATS.items() for kind, path in fmt.kinds.items()}
)
