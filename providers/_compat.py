"""Adapters for OpenAI-compatible vendors: OpenRouter, Groq, Together, Azure, any server.

Each is a small subclass of :class:`~providers.OpenAIProvider` with its own ``kind`` and
default base URL; the translation, the stream handling and the error mapping are
OpenAI's, refined where the vendor differs (see the wire-format reference, section 5).

- :class:`OpenRouterProvider` (``openrouter``): attribution headers, the ``provider``
  routing object, numeric error codes, errors inside a 200 (``finish_reason: "error"``),
  402 out of credits, 403 moderation, ``: OPENROUTER PROCESSING`` keep-alive comments.
- :class:`GroqProvider` (``groq``): fields Groq refuses are dropped and logged, stream
  usage under ``x_groq.usage``, 498 flex-tier capacity.
- :class:`TogetherProvider` (``together``): ``max_tokens``; extra sampling fields via
  ``request.extra``.
- :class:`AzureOpenAIProvider` (``azure``): deployment URLs with ``api-version`` (or the
  v1 API), the ``api-key`` header, filter-only stream chunks, content-filter errors.
- :class:`OpenAICompatibleProvider` (``openai-compatible``): any base URL (vLLM, LM
  Studio, llama.cpp server, LocalAI); the key is optional.

Errors inside a 200 response (a stream chunk or a choice carrying an ``error`` object)
and HTTP error bodies are mapped in one place per adapter: :meth:`_map_error` for the
HTTP status and body, :meth:`_in_band_error` for an error object in a 200, both built on
OpenAI's mapping and :func:`~providers._http.error_for_status`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ._errors import (
    ConfigError,
    ContentFiltered,
    LLMError,
    Overloaded,
)
from ._http import _scrub_library_logs, decode_error_json, error_for_status
from ._openai import OpenAIProvider
from ._secret import Secret
from ._types import ChatRequest, EmbeddingRequest

__all__ = [
    "AzureOpenAIProvider",
    "GroqProvider",
    "OpenAICompatibleProvider",
    "OpenRouterProvider",
    "TogetherProvider",
]

logger = logging.getLogger("trio_llm_router.providers")


def _numeric_code(code: str | int | None) -> int | None:
    """An HTTP-status-like error code (OpenRouter sends numbers; some proxies, digit strings)."""
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


def _error_dict(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an error body, or ``{}``."""
    parsed = decode_error_json(body)
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return error
    return {}


# --------------------------------------------------------------------------- OpenRouter


class OpenRouterProvider(OpenAIProvider):
    """OpenRouter (``https://openrouter.ai/api/v1``): one key, many vendors' models.

    Model ids are namespaced (``"anthropic/claude-sonnet-4.6"``).  OpenRouter's own body
    fields pass through ``request.extra`` verbatim: the ``provider`` routing object
    (``order``, ``allow_fallbacks``, ``sort``, ``only``/``ignore``...), ``models`` (a
    fallback list) and ``transforms``.  ``provider_routing`` sets a default ``provider``
    object for requests that bring none.

    Errors: 402 (out of credits) is :class:`~providers.QuotaExceeded`; 403 with a
    moderation flag is :class:`~providers.ContentFiltered`.  Errors raised while the
    model generates arrive in a 200, as a chunk with a top-level ``error`` object whose
    ``code`` is an HTTP status and ``finish_reason: "error"``: they map like that status
    (so a 429 is :class:`~providers.RateLimited`), and after content the stream raises
    :class:`~providers.StreamInterrupted` from it.  The ``: OPENROUTER PROCESSING``
    keep-alive lines are SSE comments, which the decoder drops.

    Args:
        app_url: sent as ``HTTP-Referer`` (OpenRouter's app attribution).
        app_name: sent as ``X-Title``.
        provider_routing: the default ``provider`` routing object.
        **kw: as for :class:`~providers.OpenAIProvider` (``api_key``, ``client``...).

    Example::

        openrouter = OpenRouterProvider(
            api_key=Secret(os.environ["OPENROUTER_API_KEY"]),
            app_url="https://example.com", app_name="my-app",
            provider_routing={"sort": "throughput", "allow_fallbacks": False},
        )
        resp = await openrouter.complete(ChatRequest(
            model="meta-llama/llama-3.3-70b-instruct", messages=[Message.user("hi")],
            extra={"provider": {"order": ["groq", "together"]}},
        ))
    """

    kind = "openrouter"
    default_base_url = "https://openrouter.ai/api/v1"
    max_tokens_field = "max_tokens"

    def __init__(
        self,
        *,
        app_url: str | None = None,
        app_name: str | None = None,
        provider_routing: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> None:
        merged = dict(headers or {})
        if app_url:
            merged["HTTP-Referer"] = app_url
        if app_name:
            merged["X-Title"] = app_name
        super().__init__(headers=merged, **kw)
        self._routing = dict(provider_routing) if provider_routing else None

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """OpenAI's body, plus the default ``provider`` routing object if the request has none."""
        body = super().build_body(request, stream=stream)
        if self._routing is not None and "provider" not in body:
            body["provider"] = dict(self._routing)
        return body

    @staticmethod
    def _error_class(code: int, message: str, metadata: Mapping[str, Any]) -> type[LLMError]:
        """The one OpenRouter mapping: an HTTP status, or the numeric code of an in-band error."""
        if code == 403 and (
            "reasons" in metadata or "flagged_input" in metadata or "flagged" in message.lower()
        ):
            return ContentFiltered  # moderation, not a permission problem
        status = code if 400 <= code <= 599 else 500
        return type(error_for_status(status, message, provider=None, headers={}))

    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        error = super()._map_error(status, headers, body)
        metadata = _error_dict(body).get("metadata")
        cls = self._error_class(
            status, error.message, metadata if isinstance(metadata, dict) else {}
        )
        if cls is ContentFiltered:
            return _recast(error, ContentFiltered)
        return error

    def _in_band_error(
        self, code: str | int | None, err_type: str | None, message: str
    ) -> LLMError:
        number = _numeric_code(code)
        if number is None:
            return super()._in_band_error(code, err_type, message)
        # The HTTP status was 200: the code says which error it would have been.
        cls = self._error_class(number, message, {})
        return cls(message, provider=self._name)


# --------------------------------------------------------------------------- Groq

#: Body fields Groq answers with a 400 (wire-format reference 5.2).
GROQ_UNSUPPORTED_FIELDS = ("logprobs", "logit_bias", "top_logprobs")


class GroqProvider(OpenAIProvider):
    """Groq (``https://api.groq.com/openai/v1``): OpenAI's format, with a few refusals.

    Groq answers 400 to ``logprobs``, ``logit_bias``, ``top_logprobs``,
    ``messages[].name`` and ``n`` other than 1.  Rather than fail the request, this
    adapter drops them and logs one warning per field (on the
    ``trio_llm_router.providers`` logger; a log record, not a Python warning, so a test
    suite running with warnings as errors is not broken by it).  Groq turns
    ``temperature: 0`` into 1e-8 itself, so it is sent unchanged.  Stream usage is read
    from the standard usage chunk, or from ``x_groq.usage`` on the last chunk when that
    is absent.  HTTP 498 (flex-tier capacity exceeded) is
    :class:`~providers.Overloaded`, retryable.

    Example::

        groq = GroqProvider(api_key=Secret(os.environ["GROQ_API_KEY"]))
        resp = await groq.complete(ChatRequest(model="llama-3.3-70b-versatile",
                                               messages=[Message.user("hi")]))
    """

    kind = "groq"
    default_base_url = "https://api.groq.com/openai/v1"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._warned: set[str] = set()

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """OpenAI's body without the fields Groq refuses (each logged once per provider)."""
        body = super().build_body(request, stream=stream)
        dropped = [field for field in GROQ_UNSUPPORTED_FIELDS if body.pop(field, None) is not None]
        if "n" in body and body["n"] != 1:
            del body["n"]
            dropped.append("n")
        named = False
        for message in body["messages"]:
            if message.pop("name", None) is not None:
                named = True
        if named:
            dropped.append("messages[].name")
        for field in dropped:
            if field not in self._warned:
                self._warned.add(field)
                logger.warning(
                    "%s: dropped %r from the request: Groq does not support it", self._name, field
                )
        return body

    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        error = super()._map_error(status, headers, body)
        if status == 498:
            return _recast(error, Overloaded)
        return error


def _recast(error: LLMError, cls: type[LLMError]) -> LLMError:
    """``error`` as a ``cls``, keeping its message, provider, status, ids and headers."""
    return cls(
        error.message,
        provider=error.provider,
        status_code=error.status_code,
        request_id=error.request_id,
        retry_after=error.retry_after,
        headers=error.headers,
    )


# --------------------------------------------------------------------------- Together


class TogetherProvider(OpenAIProvider):
    """Together AI (``https://api.together.xyz/v1``): OpenAI's format, ``<org>/<model>`` ids.

    The output cap is sent as ``max_tokens``.  Together's extra sampling fields
    (``top_k``, ``repetition_penalty``, ``min_p``) go through ``request.extra``.

    Example::

        together = TogetherProvider(api_key=Secret(os.environ["TOGETHER_API_KEY"]))
        resp = await together.complete(ChatRequest(
            model="meta-llama/Llama-3.3-70B-Instruct-Turbo", messages=[Message.user("hi")],
            extra={"top_k": 40},
        ))
    """

    kind = "together"
    default_base_url = "https://api.together.xyz/v1"
    max_tokens_field = "max_tokens"


# --------------------------------------------------------------------------- Azure OpenAI

#: ``api_version`` values that select the v1 API (``/openai/v1/...``, no dated version).
AZURE_V1_VERSIONS = frozenset({"v1", "latest", "preview"})


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI: a resource's deployments, by the classic dated API or the v1 API.

    Classic (``api_version`` a date, default ``"2024-10-21"``): chat goes to
    ``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`` and
    embeddings to ``.../deployments/{deployment}/embeddings?api-version=...``.
    v1 (``api_version="v1"``, or ``"preview"`` for preview features): the plain OpenAI
    paths under ``{endpoint}/openai/v1``, with the deployment name as ``model``.

    The deployment is ``deployments[request.model]``, or the model id itself when the
    mapping does not name it (deployments are often named after their model).  The key
    goes in the ``api-key`` header; an Entra ID token (``azure_ad_token``) goes in
    ``Authorization: Bearer`` instead.  Streams whose first chunk only carries
    ``prompt_filter_results`` (no choices) and chunks with only filter results are
    skipped.  A prompt the content filter blocks (400, ``code: "content_filter"``) is
    :class:`~providers.ContentFiltered`; a missing deployment is
    :class:`~providers.ModelNotFound`.

    Args:
        endpoint: the resource URL, ``https://{resource}.openai.azure.com`` (``base_url``
            is accepted as a synonym, for configuration files).
        api_version: a dated API version, or ``"v1"``/``"preview"`` for the v1 API.
        deployments: model id → deployment name.
        azure_ad_token: an Entra ID bearer token, instead of (or besides) the key.
        **kw: as for :class:`~providers.OpenAIProvider` (``api_key``, ``client``...).

    Raises:
        ConfigError: no endpoint was given.

    Example::

        azure = AzureOpenAIProvider(
            endpoint="https://my-resource.openai.azure.com",
            api_key=Secret(os.environ["AZURE_OPENAI_API_KEY"]),
            deployments={"gpt-4o-mini": "prod-mini"},
        )
        resp = await azure.complete(ChatRequest(model="gpt-4o-mini",
                                                messages=[Message.user("hi")]))
    """

    kind = "azure"
    default_base_url = ""
    #: The dated API version used when none is given.
    default_api_version = "2024-10-21"

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        api_version: str | None = None,
        deployments: Mapping[str, str] | None = None,
        azure_ad_token: Secret | str | None = None,
        base_url: str | None = None,
        **kw: Any,
    ) -> None:
        root = endpoint or base_url
        if not root:
            raise ConfigError(
                "AzureOpenAIProvider needs the resource `endpoint` "
                "(https://{resource}.openai.azure.com)",
                path="endpoint",
            )
        super().__init__(base_url=root, **kw)
        self._api_version = api_version or self.default_api_version
        self._deployments = dict(deployments or {})
        if isinstance(azure_ad_token, str):
            azure_ad_token = Secret(azure_ad_token)
        self._ad_token = azure_ad_token
        if azure_ad_token:
            _scrub_library_logs(self)  # the base registered only for an API key

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, endpoint={self._base_url!r}, "
            f"api_version={self._api_version!r})"
        )

    @property
    def api_version(self) -> str:
        """The API version: a date, or ``"v1"``/``"preview"`` for the v1 API."""
        return self._api_version

    @property
    def uses_v1(self) -> bool:
        """Whether requests go to the v1 API (``/openai/v1/...``)."""
        return self._api_version in AZURE_V1_VERSIONS

    @property
    def _secrets(self) -> list[str]:
        secrets = [self._api_key.reveal()] if self._api_key else []
        if self._ad_token:
            secrets.append(self._ad_token.reveal())
        return secrets + self._header_secrets

    def deployment_for(self, model: str) -> str:
        """The deployment that serves ``model``: the mapping's entry, or ``model`` itself."""
        return self._deployments.get(model, model)

    def _auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._api_key:
            headers["api-key"] = self._api_key.reveal()
        if self._ad_token:
            headers["authorization"] = f"Bearer {self._ad_token.reveal()}"
        return headers

    def _url(self, deployment: str | None, path: str) -> str:
        if self.uses_v1:
            url = f"{self._base_url}/openai/v1/{path}"
            if self._api_version == "preview":
                url += "?api-version=preview"
            return url
        where = f"deployments/{quote(deployment, safe='')}/" if deployment is not None else ""
        return f"{self._base_url}/openai/{where}{path}?api-version={quote(self._api_version)}"

    def _chat_url(self, request: ChatRequest) -> str:
        return self._url(self.deployment_for(request.model), "chat/completions")

    def _embeddings_url(self, request: EmbeddingRequest) -> str:
        return self._url(self.deployment_for(request.model), "embeddings")

    def _models_url(self) -> str:
        return self._url(None, "models")

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """OpenAI's body with the deployment as ``model`` (v1 needs it; classic ignores it)."""
        body = super().build_body(request, stream=stream)
        if "model" not in request.extra:
            body["model"] = self.deployment_for(request.model)
        return body

    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        error = super()._map_error(status, headers, body)
        if isinstance(error, ContentFiltered):
            return error
        detail = _error_dict(body)
        inner = detail.get("innererror")
        inner_code = inner.get("code") if isinstance(inner, dict) else None
        if inner_code == "ResponsibleAIPolicyViolation" or (
            isinstance(inner, dict) and "content_filter_result" in inner
        ):
            return _recast(error, ContentFiltered)
        return error


# --------------------------------------------------------------------------- any server


class OpenAICompatibleProvider(OpenAIProvider):
    """Any server that speaks OpenAI Chat Completions: vLLM, LM Studio, llama.cpp, LocalAI.

    ``base_url`` is required (it ends in ``/v1`` for most servers).  The key is
    optional: without one no ``Authorization`` header is sent.  The output cap goes in
    ``max_tokens`` by default, which every such server knows (set
    ``max_tokens_field="max_completion_tokens"`` for a server that wants the new name);
    ``stream_usage=False`` stops sending ``stream_options`` to servers that refuse it.

    Args:
        base_url: the server's OpenAI base URL, e.g. ``http://localhost:8000/v1``.
        max_tokens_field: the body field for the output token cap.
        stream_usage: ask for a usage chunk at the end of streams.
        **kw: as for :class:`~providers.OpenAIProvider` (``api_key``, ``client``...).

    Raises:
        ConfigError: no ``base_url`` was given.

    Example::

        local = OpenAICompatibleProvider(name="vllm", base_url="http://localhost:8000/v1")
        resp = await local.complete(ChatRequest(model="Qwen/Qwen2.5-7B-Instruct",
                                                messages=[Message.user("hi")]))
    """

    kind = "openai-compatible"
    default_base_url = ""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        max_tokens_field: str = "max_tokens",
        stream_usage: bool = True,
        **kw: Any,
    ) -> None:
        if not base_url:
            raise ConfigError(
                "OpenAICompatibleProvider needs the server's `base_url` "
                "(e.g. http://localhost:8000/v1)",
                path="base_url",
            )
        super().__init__(base_url=base_url, **kw)
        self.max_tokens_field = max_tokens_field
        self._stream_usage = stream_usage

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """OpenAI's body, with ``stream_options`` left out when ``stream_usage`` is off."""
        body = super().build_body(request, stream=stream)
        if not self._stream_usage and "stream_options" not in request.extra:
            body.pop("stream_options", None)
        return body
