"""The error tree: every failure a caller can see, and what it means for retrying.

Foreign exceptions (httpx, msgspec, h11, KeyError from a malformed body...) never escape
an adapter or the router: each adapter maps them in one place, most specific first, and
raises one of these ``from`` the original.  When several attempts fail, the router raises
one :class:`AllProvidersFailed` whose ``__cause__`` is an ``ExceptionGroup`` of the
individual errors, never the group itself.

::

    LLMError                          retryable  rate-limit  auth
    ├── InvalidRequest                    no
    │   ├── ContextLengthExceeded         no     (.limit, .requested)
    │   └── UnsupportedFeature            no     (the target cannot take e.g. images)
    ├── AuthenticationError               no                  yes
    ├── PermissionDenied                  no
    ├── NotFound                          no
    │   └── ModelNotFound                 no
    ├── QuotaExceeded                     no     (402 / insufficient_quota / spend cap)
    ├── ContentFiltered                   no
    ├── RateLimited                       yes        yes     (.retry_after)
    ├── Overloaded                        yes                (529, 503, a full mailbox)
    ├── ServerError                       yes                (500, 502, 504, 409, other 5xx)
    ├── Timeout                           yes
    ├── ConnectionFailed                  yes
    ├── ProtocolError                     yes                (a body we cannot parse)
    │   └── ResponseTooLarge              no     (.limit: a body or event over its cap)
    ├── InvalidOutput                     yes     (a structured answer that does not validate)
    ├── StreamInterrupted                 no     (failure after content was delivered)
    ├── ConfigError                       no     (.path: where in the config)
    ├── RouterClosed                      no
    ├── NoRoute                           no     (unknown model / nothing can serve it)
    ├── BudgetExceeded                    no
    └── AllProvidersFailed                *      (.attempts, .errors; retryable if any was)

Every error carries ``provider`` (the configured provider name, if any), ``status_code``
(the HTTP status, if any), ``request_id`` (the vendor's, if any), ``retry_after`` (seconds,
if the provider said) and ``headers`` (the rate-limit and retry headers the router learns
from).  ``retryable`` is a class default that a vendor's ``x-should-retry`` header may
override for one instance.  An error the router raises also carries ``attempts``, the
trace of every target it tried for the request.

API keys never appear in any error: every error an HTTP adapter raises passes its
:class:`~providers.Scrubber` on the way out (message, request id, headers); :func:`scrub`
is the same scrubber as a function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ._secret import Scrubber

__all__ = [
    "AllProvidersFailed",
    "AuthenticationError",
    "BudgetExceeded",
    "ConfigError",
    "ConnectionFailed",
    "ContentFiltered",
    "ContextLengthExceeded",
    "InvalidOutput",
    "InvalidRequest",
    "LLMError",
    "ModelNotFound",
    "NoRoute",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "ProtocolError",
    "QuotaExceeded",
    "RateLimited",
    "ResponseTooLarge",
    "RouterClosed",
    "ServerError",
    "StreamInterrupted",
    "Timeout",
    "UnsupportedFeature",
    "scrub",
]


class LLMError(Exception):
    """Base of every error this library raises.

    Example::

        try:
            resp = await router.complete(req)
        except LLMError as exc:
            if exc.retryable: ...
    """

    retryable: ClassVar[bool] = False
    is_rate_limit: ClassVar[bool] = False
    is_authentication: ClassVar[bool] = False
    #: The router's trace of the request that failed (:class:`~providers.Attempt`
    #: records); empty for an error straight from an adapter.
    attempts: tuple[Any, ...] = ()

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.request_id = request_id
        self.retry_after = retry_after
        self.headers: dict[str, str] = dict(headers or {})
        if retryable is not None:
            # An instance attribute shadows the class default (x-should-retry).
            self.retryable = retryable  # type: ignore[misc]

    def __str__(self) -> str:
        parts = []
        if self.provider:
            parts.append(f"[{self.provider}]")
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}:")
        parts.append(self.message)
        if self.retry_after is not None:
            parts.append(f"(retry after {self.retry_after:g}s)")
        if self.request_id:
            parts.append(f"(request id {self.request_id})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep errors picklable (multiprocessing, pytest-xdist) with their attributes.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[LLMError], message: str, state: dict[str, Any]) -> LLMError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class InvalidRequest(LLMError):
    """The request is wrong and every provider would reject it (HTTP 400, 413, 422)."""


class ContextLengthExceeded(InvalidRequest):
    """The prompt (plus the output budget) does not fit the model's context window.

    ``limit`` and ``requested`` are token counts when the vendor said them.
    """

    def __init__(
        self, message: str, *, limit: int | None = None, requested: int | None = None, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.limit = limit
        self.requested = requested


class UnsupportedFeature(InvalidRequest):
    """The target cannot take what the request needs (images, tools, a response format)."""


class AuthenticationError(LLMError):
    """The key is missing, wrong or expired (HTTP 401; Gemini's 400 API_KEY_INVALID)."""

    is_authentication = True


class PermissionDenied(LLMError):
    """The key is valid but may not do this (HTTP 403)."""


class NotFound(LLMError):
    """The resource does not exist (HTTP 404)."""


class ModelNotFound(NotFound):
    """The model does not exist at this provider, or this key cannot see it."""


class QuotaExceeded(LLMError):
    """Out of credits or quota (HTTP 402, OpenAI ``insufficient_quota``): retrying won't help."""


class ContentFiltered(LLMError):
    """The provider's safety filter blocked the prompt or the output."""


class RateLimited(LLMError):
    """Too many requests or tokens (HTTP 429); ``retry_after`` says when to come back."""

    retryable = True
    is_rate_limit = True


class Overloaded(LLMError):
    """The provider (or our own admission queue) is too busy now (HTTP 529, 503)."""

    retryable = True


class ServerError(LLMError):
    """The provider failed (HTTP 500, 502, 504, 409 and other 5xx)."""

    retryable = True


class Timeout(LLMError):
    """No answer in time: a connect, read or first-token timeout, or HTTP 408."""

    retryable = True


class ConnectionFailed(LLMError):
    """The connection could not be made, or broke before any content arrived."""

    retryable = True


class ProtocolError(LLMError):
    """The provider sent something we cannot parse (malformed JSON, a broken stream)."""

    retryable = True


class InvalidOutput(LLMError):
    """The answer does not validate against the schema ``router.structured()`` asked for.

    An HTTP exchange that went well, with an answer that is no use: malformed or truncated
    JSON, a wrong type, a missing field.  It is retryable (sampling again may well give a
    valid answer), so a route retries it and fails over on it like a server error, but it
    does not count against the provider's health.  ``validation`` is the validator's
    message (``"Expected `int`, got `str` - at `$.age`"``); ``excerpt`` is at most the
    first 200 characters of the answer, scrubbed of the provider's key; the whole answer
    is never kept.
    """

    retryable = True

    def __init__(self, message: str, *, validation: str = "", excerpt: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.validation = validation
        self.excerpt = excerpt


class ResponseTooLarge(ProtocolError):
    """A body, or one stream event, decoded past its configured cap; ``limit`` is the cap.

    Raised while reading, as soon as the cap is crossed, and the connection is closed.
    Not retryable: the same request would most likely get the same answer (or the same
    hostile one) again, and the caps (``max_response_bytes``, ``max_event_bytes``) are
    there to bound memory, not to be retried into.
    """

    retryable = False

    def __init__(self, message: str, *, limit: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.limit = limit


class StreamInterrupted(LLMError):
    """The stream failed after content had already been delivered to the caller.

    It cannot be retried transparently: the caller has seen part of an answer.
    The original failure is the ``__cause__``.
    """


class ConfigError(LLMError):
    """The configuration is invalid; ``path`` says where (``$.providers.openai.rpm``)."""

    def __init__(self, message: str, *, path: str | None = None, **kw: Any) -> None:
        super().__init__(f"{path}: {message}" if path else message, **kw)
        self.path = path


class RouterClosed(LLMError):
    """The router's ``async with`` block has exited; it takes no more requests."""


class NoRoute(LLMError):
    """No configured provider or route can serve this model."""


class BudgetExceeded(LLMError):
    """Sending this request would cross a configured spend cap."""


class AllProvidersFailed(LLMError):
    """Every attempt failed; ``attempts`` says what each target did, ``errors`` why.

    ``attempts`` is the router's trace (:class:`~providers.Attempt` records, skipped
    targets included); ``errors`` holds the individual errors, which are also the
    ``__cause__`` (an ``ExceptionGroup``).  It is retryable when any of them is.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[Any] = (),
        errors: Sequence[LLMError] = (),
        **kw: Any,
    ) -> None:
        if kw.get("retryable") is None:
            kw["retryable"] = any(e.retryable for e in errors)
        super().__init__(message, **kw)
        self.attempts = tuple(attempts)
        self.errors = tuple(errors)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every form of each secret (of 4+ characters) replaced by ``***``.

    The forms are those :class:`~providers.Scrubber` hides: the secret, its
    percent-encoded forms, and a run of 8+ of its leading characters.  Code that scrubs
    often should build one ``Scrubber`` and call it.

    Example::

        >>> scrub("bad key sk-abc123", ["sk-abc123"])
        'bad key ***'
    """
    return Scrubber(secrets)(text)


# Tracebacks and reprs name the path users import from (``router.errors.Timeout``), not
# this private module: each public class reports ``router.errors`` as its module, as
# trio's classes report ``trio``.  It is a string, not an import (providers still never
# imports router); pickle looks the class up as ``router.errors.<Name>`` (importing router
# if it must), which holds because router.errors re-exports every class here
# (tests/test_exports.py checks both).  A class added to ``__all__`` is covered without
# another line.
for _name in __all__:
    _public = globals()[_name]
    if isinstance(_public, type):
        _public.__module__ = "router.errors"
del _name, _public
