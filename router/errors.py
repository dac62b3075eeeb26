"""The error tree: every failure the router or a provider raises.

Catch :class:`LLMError` for all of them, or a branch for one kind of failure.  Each class
says whether retrying can help (``retryable``), and the router raises one error per
request: when several attempts failed, :class:`AllProvidersFailed` carries every one.

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

Every error carries ``provider``, ``status_code``, ``request_id``, ``retry_after`` and
``headers``; one the router raises also carries ``attempts``, the trace of every target
it tried.  The classes are defined in :mod:`providers` (adapters raise them) and are the
same objects here.  Example::

    from router.errors import LLMError, RateLimited

    try:
        reply = await router.complete(request)
    except RateLimited as exc:
        await trio.sleep(exc.retry_after or 1.0)
    except LLMError as exc:
        print(f"failed ({'retryable' if exc.retryable else 'final'}): {exc}")
"""

from providers import AllProvidersFailed as AllProvidersFailed
from providers import AuthenticationError as AuthenticationError
from providers import BudgetExceeded as BudgetExceeded
from providers import ConfigError as ConfigError
from providers import ConnectionFailed as ConnectionFailed
from providers import ContentFiltered as ContentFiltered
from providers import ContextLengthExceeded as ContextLengthExceeded
from providers import InvalidOutput as InvalidOutput
from providers import InvalidRequest as InvalidRequest
from providers import LLMError as LLMError
from providers import ModelNotFound as ModelNotFound
from providers import NoRoute as NoRoute
from providers import NotFound as NotFound
from providers import Overloaded as Overloaded
from providers import PermissionDenied as PermissionDenied
from providers import ProtocolError as ProtocolError
from providers import QuotaExceeded as QuotaExceeded
from providers import RateLimited as RateLimited
from providers import ResponseTooLarge as ResponseTooLarge
from providers import RouterClosed as RouterClosed
from providers import ServerError as ServerError
from providers import StreamInterrupted as StreamInterrupted
from providers import Timeout as Timeout
from providers import UnsupportedFeature as UnsupportedFeature

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
]
