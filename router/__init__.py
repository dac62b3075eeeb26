"""trio-llm-router: send LLM requests to many providers through one trio-native interface.

The shared vocabulary (messages, requests, responses, stream events, usage, the error
tree) is defined in :mod:`providers` and re-exported here, so users import from one
place::

    from router import ChatRequest, Message, LLMError, open_router, load_config

    config = load_config("router.toml")            # or RouterConfig(...) in code
    async with open_router(config) as router:
        reply = await router.complete(ChatRequest(model="fast", messages=[Message.user("hi")]))

Testing support (the mock provider and the fake upstream) lives in :mod:`router.testing`.
Observability (events, the audit log, tracing, metrics) is in docs/observability.md.
"""

import logging as _logging

from providers import AllProvidersFailed as AllProvidersFailed
from providers import Attempt as Attempt
from providers import AuthenticationError as AuthenticationError
from providers import BudgetExceeded as BudgetExceeded
from providers import Capabilities as Capabilities
from providers import ChatRequest as ChatRequest
from providers import ChatResponse as ChatResponse
from providers import ConfigError as ConfigError
from providers import ConnectionFailed as ConnectionFailed
from providers import ContentFiltered as ContentFiltered
from providers import ContextLengthExceeded as ContextLengthExceeded
from providers import Done as Done
from providers import EmbeddingRequest as EmbeddingRequest
from providers import EmbeddingResponse as EmbeddingResponse
from providers import ForceTool as ForceTool
from providers import ImagePart as ImagePart
from providers import InvalidOutput as InvalidOutput
from providers import InvalidRequest as InvalidRequest
from providers import LLMError as LLMError
from providers import Message as Message
from providers import ModelNotFound as ModelNotFound
from providers import NoRoute as NoRoute
from providers import NotFound as NotFound
from providers import Overloaded as Overloaded
from providers import PermissionDenied as PermissionDenied
from providers import ProtocolError as ProtocolError
from providers import QuotaExceeded as QuotaExceeded
from providers import RateLimited as RateLimited
from providers import ReasoningDelta as ReasoningDelta
from providers import ResponseFormat as ResponseFormat
from providers import ResponseTooLarge as ResponseTooLarge
from providers import RouterClosed as RouterClosed
from providers import Secret as Secret
from providers import ServerError as ServerError
from providers import StreamEvent as StreamEvent
from providers import StreamInterrupted as StreamInterrupted
from providers import TextDelta as TextDelta
from providers import TextPart as TextPart
from providers import Timeout as Timeout
from providers import ToolCall as ToolCall
from providers import ToolCallDelta as ToolCallDelta
from providers import ToolCallEnd as ToolCallEnd
from providers import ToolCallStart as ToolCallStart
from providers import ToolSpec as ToolSpec
from providers import UnsupportedFeature as UnsupportedFeature
from providers import Usage as Usage
from providers import UsageEvent as UsageEvent

from ._actor import ActorStatistics as ActorStatistics
from ._audit import AuditStatistics as AuditStatistics
from ._budget import BudgetStatistics as BudgetStatistics
from ._config import AuditConfig as AuditConfig
from ._config import BudgetConfig as BudgetConfig
from ._config import HedgeConfig as HedgeConfig
from ._config import MockConfig as MockConfig
from ._config import ModelConfig as ModelConfig
from ._config import ProviderConfig as ProviderConfig
from ._config import RouteConfig as RouteConfig
from ._config import RouterConfig as RouterConfig
from ._config import SupervisorConfig as SupervisorConfig
from ._config import TracingConfig as TracingConfig
from ._config import decode_config as decode_config
from ._config import load_config as load_config
from ._events import ActorCrashed as ActorCrashed
from ._events import ActorRestarted as ActorRestarted
from ._events import AttemptFinished as AttemptFinished
from ._events import AttemptStarted as AttemptStarted
from ._events import BreakerChanged as BreakerChanged
from ._events import BudgetRefused as BudgetRefused
from ._events import FallbackLaunched as FallbackLaunched
from ._events import HealthChanged as HealthChanged
from ._events import HedgeLaunched as HedgeLaunched
from ._events import QueueWait as QueueWait
from ._events import RequestFinished as RequestFinished
from ._events import RequestStarted as RequestStarted
from ._events import RetryScheduled as RetryScheduled
from ._events import RouterEvent as RouterEvent
from ._events import Subscription as Subscription
from ._events import SubscriptionStatistics as SubscriptionStatistics
from ._health import BreakerConfig as BreakerConfig
from ._health import HealthSnapshot as HealthSnapshot
from ._models import ModelCard as ModelCard
from ._models import cheapest as cheapest
from ._models import model_card as model_card
from ._policy import Candidate as Candidate
from ._policy import Needs as Needs
from ._policy import Plan as Plan
from ._policy import TargetHealth as TargetHealth
from ._policy import plan_route as plan_route
from ._providers import config_from_env as config_from_env
from ._retry import RetryConfig as RetryConfig
from ._router import Router as Router
from ._router import open_router as open_router
from ._statistics import HedgeStatistics as HedgeStatistics
from ._statistics import RouterStatistics as RouterStatistics
from ._stream import RouterStream as RouterStream
from ._structured import Structured as Structured

__version__ = "0.1.0"

# A library stays quiet unless the application configures logging.
_logging.getLogger("trio_llm_router").addHandler(_logging.NullHandler())
