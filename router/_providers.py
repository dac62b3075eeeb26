"""From configuration to adapters: keys from the environment, presets, every kind.

=====================  ==========================================  =======================
kind                   key (environment variable)                  preset limits
=====================  ==========================================  =======================
``openai``             ``OPENAI_API_KEY``                          500 RPM, 150,000 TPM
``anthropic``          ``ANTHROPIC_API_KEY``                       50 RPM, 40,000 TPM
``gemini``             ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``    2,000 RPM, 4,000,000 TPM
``groq``               ``GROQ_API_KEY``                            30 RPM, 12,000 TPM
``together``           ``TOGETHER_API_KEY``                        600 RPM
``openrouter``         ``OPENROUTER_API_KEY``                      none published
``azure``              ``AZURE_OPENAI_API_KEY`` (endpoint:         set per deployment
                       ``AZURE_OPENAI_ENDPOINT``)
``ollama``             none (local)                                none
``openai-compatible``  ``api_key_env`` if the server needs one     none
``mock``               none                                        none
=====================  ==========================================  =======================

Presets are each vendor's entry-tier limits (OpenAI tier 1 for GPT-4o-class models,
Anthropic tier 1, Gemini paid tier 1 for Flash, Groq's free tier for Llama 3.3 70B,
Together tier 1); they fill ``rpm``/``tpm`` only where the config leaves them unset, only
for the vendor's own endpoint (``base_url`` unset, or on the host in
:data:`VENDOR_HOSTS`: a proxy, a gateway or a local server has limits of its own), and
``presets = false`` turns them off.  The actor logs at INFO the preset limits it
applies.  Your account's real limits also arrive in every
response's rate-limit headers, which lower the buckets further (see docs/actors.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from providers import (
    AnthropicProvider,
    AzureOpenAIProvider,
    ConfigError,
    GeminiProvider,
    GroqProvider,
    OllamaProvider,
    OpenAICompatibleProvider,
    OpenAIProvider,
    OpenRouterProvider,
    Provider,
    Secret,
    TogetherProvider,
)
from providers._mock import MockProvider, MockResponse

from ._config import ProviderConfig, ProviderKind, RouterConfig
from ._config import _key as _path_key

__all__ = [
    "KEY_ENV",
    "PRESETS",
    "VENDOR_HOSTS",
    "build_provider",
    "config_from_env",
    "effective_limits",
    "preset_limits",
]

#: The environment variables holding each kind's key, tried in order.
KEY_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "openrouter": ("OPENROUTER_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "together": ("TOGETHER_API_KEY",),
    "azure": ("AZURE_OPENAI_API_KEY",),
}
AZURE_ENDPOINT_ENV = "AZURE_OPENAI_ENDPOINT"

#: Entry-tier (rpm, tpm) per kind; ``None`` where the vendor publishes none.
PRESETS: dict[str, tuple[int | None, int | None]] = {
    "openai": (500, 150_000),
    "anthropic": (50, 40_000),
    "gemini": (2_000, 4_000_000),
    "groq": (30, 12_000),
    "together": (600, None),
}


#: The hosts of each preset vendor's own API: presets apply to them only.
VENDOR_HOSTS: dict[str, frozenset[str]] = {
    "openai": frozenset({"api.openai.com"}),
    "anthropic": frozenset({"api.anthropic.com"}),
    "gemini": frozenset({"generativelanguage.googleapis.com"}),
    "groq": frozenset({"api.groq.com"}),
    "together": frozenset({"api.together.xyz", "api.together.ai"}),
}


def preset_limits(
    config: ProviderConfig, base_url: str | None = None
) -> tuple[int | None, int | None] | None:
    """The kind's preset (rpm, tpm) if it applies to this provider, else ``None``.

    It applies when the kind has one, ``presets`` is on, and the provider talks to the
    vendor's own API: its URL unset, or on one of the vendor's hosts.  ``base_url`` is
    where the adapter really sends (an adapter passed to ``open_router`` says so itself);
    without it, the config's ``base_url``.

    Example::

        >>> preset_limits(ProviderConfig(kind="anthropic"))
        (50, 40000)
        >>> local = ProviderConfig(kind="anthropic", base_url="http://localhost:8080")
        >>> preset_limits(local) is None
        True
    """
    preset = PRESETS.get(config.kind)
    if preset is None or not config.presets:
        return None
    url = base_url or config.base_url
    if url:
        host = urlsplit(url.strip()).hostname
        if host is None or host.rstrip(".").lower() not in VENDOR_HOSTS[config.kind]:
            return None
    return preset


def effective_limits(
    config: ProviderConfig, base_url: str | None = None
) -> tuple[int | None, int | None]:
    """(rpm, tpm) after presets: the config's own values win; a preset fills the others
    when it applies (:func:`preset_limits`, which ``base_url`` is for)."""
    preset = preset_limits(config, base_url) or (None, None)
    rpm = config.rpm if config.rpm is not None else preset[0]
    tpm = config.tpm if config.tpm is not None else preset[1]
    return rpm, tpm


def _key(
    name: str, config: ProviderConfig, environ: Mapping[str, str], *, required: bool
) -> Secret | None:
    names = (config.api_key_env,) if config.api_key_env else KEY_ENV.get(config.kind, ())
    for var in names:
        value = environ.get(var)
        if value:
            return Secret(value)
    if required or config.api_key_env:
        wanted = " or ".join(names) or "api_key_env"
        raise ConfigError(
            f"the API key is missing: set the environment variable {wanted}",
            path=f"$.providers{_path_key(name)}.api_key_env",
        )
    return None


def build_provider(
    name: str, config: ProviderConfig, environ: Mapping[str, str] | None = None
) -> Provider:
    """The adapter for a configured provider (keys from ``environ``, the process's by default).

    Raises:
        ConfigError: a key or an endpoint the kind needs is missing; ``path`` says where.
    """
    env = os.environ if environ is None else environ
    kind = config.kind
    if kind == "mock":
        mock = config.mock
        if mock is None:
            return MockProvider(name=name, record=False)
        default = (
            MockResponse(text=mock.reply, chunk_latency=mock.chunk_latency) if mock.reply else None
        )
        return MockProvider(
            name=name, default=default, latency=mock.latency, models=list(mock.models), record=False
        )
    if kind == "ollama":
        return OllamaProvider(
            api_key=_key(name, config, env, required=False),
            base_url=config.base_url,
            name=name,
            **_wire_options(config),
        )
    if kind == "openai-compatible":
        if not config.base_url:
            raise ConfigError(
                "an openai-compatible provider needs the server's base_url",
                path=f"$.providers{_path_key(name)}.base_url",
            )
        return OpenAICompatibleProvider(
            api_key=_key(name, config, env, required=False),
            base_url=config.base_url,
            name=name,
            **_wire_options(config),
        )
    key = _key(name, config, env, required=True)
    if kind == "azure":
        endpoint = config.base_url or env.get(AZURE_ENDPOINT_ENV)
        if not endpoint:
            raise ConfigError(
                f"an azure provider needs its endpoint: set base_url or {AZURE_ENDPOINT_ENV}",
                path=f"$.providers{_path_key(name)}.base_url",
            )
        return AzureOpenAIProvider(
            api_key=key,
            endpoint=endpoint,
            api_version=config.api_version,
            deployments=config.deployments,
            name=name,
            **_wire_options(config),
        )
    if kind == "openrouter":
        return OpenRouterProvider(
            api_key=key,
            base_url=config.base_url,
            app_name=config.app_name,
            app_url=config.app_url,
            name=name,
            **_wire_options(config),
        )
    classes: dict[str, type[OpenAIProvider] | type[AnthropicProvider] | type[GeminiProvider]] = {
        "openai": OpenAIProvider,
        "anthropic": AnthropicProvider,
        "gemini": GeminiProvider,
        "groq": GroqProvider,
        "together": TogetherProvider,
    }
    return classes[kind](api_key=key, base_url=config.base_url, name=name, **_wire_options(config))


def _wire_options(config: ProviderConfig) -> dict[str, Any]:
    """What every HTTP adapter takes from its config: extra headers and the size caps."""
    return {
        "headers": config.headers,
        "max_response_bytes": config.max_response_bytes,
        "max_event_bytes": config.max_event_bytes,
    }


def config_from_env(environ: Mapping[str, str] | None = None) -> RouterConfig:
    """A configuration with one provider per kind whose key is in the environment.

    Each provider is named after its kind (``openai``, ``anthropic``, ``gemini``...), with
    the kind's preset limits; Azure needs ``AZURE_OPENAI_ENDPOINT`` as well.

    Raises:
        ConfigError: no key at all is set; the message lists the variables looked for.

    Example::

        async with open_router() as router:        # the same as open_router(config_from_env())
            await router.complete(ChatRequest(model="gpt-4o-mini", messages=[...]))
    """
    env = os.environ if environ is None else environ
    providers: dict[str, ProviderConfig] = {}
    for kind, names in KEY_ENV.items():
        if not any(env.get(var) for var in names):
            continue
        if kind == "azure" and not env.get(AZURE_ENDPOINT_ENV):
            continue
        k: ProviderKind = kind  # type: ignore[assignment]
        providers[kind] = ProviderConfig(kind=k)
    if not providers:
        wanted = sorted({var for names in KEY_ENV.values() for var in names})
        raise ConfigError(
            "no provider is configured and no API key is in the environment; set one of "
            f"{', '.join(wanted)} (Azure also needs {AZURE_ENDPOINT_ENV}), or pass a config"
        )
    return RouterConfig(providers=providers)
