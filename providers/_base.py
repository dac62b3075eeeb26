"""The Provider protocol: what every adapter (HTTP or in-process) offers the router.

An adapter talks to one vendor deployment.  It neither retries nor routes — that is the
router's job — and it never lets a foreign exception escape: failures are
:class:`~providers.LLMError` subclasses.

Synopsis::

    async with provider.stream(request) as events:
        async for event in events:
            match event:
                case TextDelta(text=t): print(t, end="")
                case Done(response=r): print(r.usage)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from ._types import (
    Capabilities,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    StreamEvent,
)

__all__ = ["EventStream", "Provider"]


@runtime_checkable
class EventStream(Protocol):
    """What ``async with provider.stream(req) as events`` gives: an async iterator of events.

    The last event of a stream that ends normally is :class:`~providers.Done`.  Where a
    failure surfaces:

    - before the stream opens (an HTTP error status, a refused connection): from the
      ``async with``;
    - after it opened but before any content event: from ``__anext__``, as the vendor's
      own error — retryable ones can still fail over;
    - after content was delivered: from ``__anext__``, as
      :class:`~providers.StreamInterrupted` with the vendor's error as its cause.
    """

    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    async def __anext__(self) -> StreamEvent: ...


@runtime_checkable
class Provider(Protocol):
    """One vendor deployment, ready to take requests.

    ``name`` is the configured provider name (``"openai"``, ``"fast-anthropic"``);
    ``kind`` the wire format (``"openai"``, ``"anthropic"``, ``"mock"``...).
    ``request.model`` is already the vendor's own model id.
    """

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` and return the whole answer."""
        ...

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[EventStream]:
        """Send ``request`` and stream the answer; the response is closed on exit."""
        ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed ``request.inputs``."""
        ...

    async def list_models(self) -> list[ModelInfo]:
        """The models this deployment offers."""
        ...

    async def aclose(self) -> None:
        """Release what the provider owns (its HTTP client, if it created it)."""
        ...
