"""trio-llm-router: send LLM requests to many providers through one trio-native interface.

The names a caller needs are here: :func:`open_router` and :class:`Router`, the message
vocabulary (requests, responses, parts, tools, usage) and the stream events.  The
vocabulary is defined in :mod:`providers` and re-exported, so users import from one
place::

    from router import ChatRequest, Message, load_config, open_router

    config = load_config("router.toml")            # or RouterConfig(...) in code
    async with open_router(config) as router:
        reply = await router.complete(ChatRequest(model="fast", messages=[Message.user("hi")]))

Each family of the rest has one documented home (docs/api.md is the map):

==========================  ============================================================
:mod:`router.errors`        the error tree: :class:`~router.errors.LLMError` and below
:mod:`router.config`        :class:`~router.config.RouterConfig` and every config struct
:mod:`router.events`        the events a subscription or a listener receives
:mod:`router.stats`         the frozen snapshots ``statistics()`` and ``health()`` return
:mod:`router.policy`        how a route's targets are planned for one request
:mod:`router.models`        built-in model data: windows, prices, capabilities
:mod:`router.testing`       the mock provider, the fake upstream, the simulator
==========================  ============================================================
"""

import logging as _logging

from providers import Attempt as Attempt
from providers import ChatRequest as ChatRequest
from providers import ChatResponse as ChatResponse
from providers import Done as Done
from providers import EmbeddingResponse as EmbeddingResponse
from providers import ForceTool as ForceTool
from providers import ImagePart as ImagePart
from providers import Message as Message
from providers import ReasoningDelta as ReasoningDelta
from providers import ResponseFormat as ResponseFormat
from providers import StreamEvent as StreamEvent
from providers import TextDelta as TextDelta
from providers import TextPart as TextPart
from providers import ToolCall as ToolCall
from providers import ToolCallDelta as ToolCallDelta
from providers import ToolCallEnd as ToolCallEnd
from providers import ToolCallStart as ToolCallStart
from providers import ToolSpec as ToolSpec
from providers import Usage as Usage
from providers import UsageEvent as UsageEvent

from . import config as config
from . import errors as errors
from . import events as events
from . import models as models
from . import policy as policy
from . import stats as stats
from ._config import load_config as load_config
from ._router import Router as Router
from ._router import open_router as open_router
from ._stream import RouterStream as RouterStream
from ._stream import StreamContext as StreamContext
from ._structured import Structured as Structured

__all__ = [
    "Attempt",
    "ChatRequest",
    "ChatResponse",
    "Done",
    "EmbeddingResponse",
    "ForceTool",
    "ImagePart",
    "Message",
    "ReasoningDelta",
    "ResponseFormat",
    "Router",
    "RouterStream",
    "StreamContext",
    "StreamEvent",
    "Structured",
    "TextDelta",
    "TextPart",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolSpec",
    "Usage",
    "UsageEvent",
    "load_config",
    "open_router",
]

#: The installed version of trio-llm-router.
__version__ = "0.1.0"

# A library stays quiet unless the application configures logging.
_logging.getLogger("trio_llm_router").addHandler(_logging.NullHandler())
