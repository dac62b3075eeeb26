"""Talking to vendors: the shared vocabulary, the error tree, and one adapter per wire format.

``router`` re-exports the vocabulary; most users import from there.  Adapter authors use
the protocol (:class:`Provider`), the stream framing (:class:`SSEDecoder`,
:class:`NDJSONDecoder`), the HTTP helpers (:func:`default_client`,
:func:`parse_retry_after`) and the conformance suite in :mod:`providers.testing`, which
also holds the in-process :class:`~providers.testing.MockProvider`.
"""

from ._anthropic import AnthropicProvider as AnthropicProvider
from ._base import EventStream as EventStream
from ._base import Provider as Provider
from ._compat import AzureOpenAIProvider as AzureOpenAIProvider
from ._compat import GroqProvider as GroqProvider
from ._compat import OpenAICompatibleProvider as OpenAICompatibleProvider
from ._compat import OpenRouterProvider as OpenRouterProvider
from ._compat import TogetherProvider as TogetherProvider
from ._errors import AllProvidersFailed as AllProvidersFailed
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BudgetExceeded as BudgetExceeded
from ._errors import ConfigError as ConfigError
from ._errors import ConnectionFailed as ConnectionFailed
from ._errors import ContentFiltered as ContentFiltered
from ._errors import ContextLengthExceeded as ContextLengthExceeded
from ._errors import InvalidOutput as InvalidOutput
from ._errors import InvalidRequest as InvalidRequest
from ._errors import LLMError as LLMError
from ._errors import ModelNotFound as ModelNotFound
from ._errors import NoRoute as NoRoute
from ._errors import NotFound as NotFound
from ._errors import Overloaded as Overloaded
from ._errors import PermissionDenied as PermissionDenied
from ._errors import ProtocolError as ProtocolError
from ._errors import QuotaExceeded as QuotaExceeded
from ._errors import RateLimited as RateLimited
from ._errors import ResponseTooLarge as ResponseTooLarge
from ._errors import RouterClosed as RouterClosed
from ._errors import ServerError as ServerError
from ._errors import StreamInterrupted as StreamInterrupted
from ._errors import Timeout as Timeout
from ._errors import UnsupportedFeature as UnsupportedFeature
from ._gemini import GeminiProvider as GeminiProvider
from ._http import default_client as default_client
from ._http import parse_retry_after as parse_retry_after
from ._ollama import OllamaProvider as OllamaProvider
from ._openai import OpenAIProvider as OpenAIProvider
from ._secret import Scrubber as Scrubber
from ._secret import Secret as Secret
from ._sse import NDJSONDecoder as NDJSONDecoder
from ._sse import ServerSentEvent as ServerSentEvent
from ._sse import SSEDecoder as SSEDecoder
from ._types import Attempt as Attempt
from ._types import Capabilities as Capabilities
from ._types import ChatRequest as ChatRequest
from ._types import ChatResponse as ChatResponse
from ._types import Done as Done
from ._types import EmbeddingRequest as EmbeddingRequest
from ._types import EmbeddingResponse as EmbeddingResponse
from ._types import FinishReason as FinishReason
from ._types import ForceTool as ForceTool
from ._types import ImagePart as ImagePart
from ._types import Message as Message
from ._types import ModelInfo as ModelInfo
from ._types import Part as Part
from ._types import ReasoningDelta as ReasoningDelta
from ._types import ResponseFormat as ResponseFormat
from ._types import Role as Role
from ._types import StreamEvent as StreamEvent
from ._types import TextDelta as TextDelta
from ._types import TextPart as TextPart
from ._types import ToolCall as ToolCall
from ._types import ToolCallDelta as ToolCallDelta
from ._types import ToolCallEnd as ToolCallEnd
from ._types import ToolCallStart as ToolCallStart
from ._types import ToolChoice as ToolChoice
from ._types import ToolSpec as ToolSpec
from ._types import Usage as Usage
from ._types import UsageEvent as UsageEvent
from ._types import validate_request as validate_request

__all__ = [
    "AllProvidersFailed",
    "AnthropicProvider",
    "Attempt",
    "AuthenticationError",
    "AzureOpenAIProvider",
    "BudgetExceeded",
    "Capabilities",
    "ChatRequest",
    "ChatResponse",
    "ConfigError",
    "ConnectionFailed",
    "ContentFiltered",
    "ContextLengthExceeded",
    "Done",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EventStream",
    "FinishReason",
    "ForceTool",
    "GeminiProvider",
    "GroqProvider",
    "ImagePart",
    "InvalidOutput",
    "InvalidRequest",
    "LLMError",
    "Message",
    "ModelInfo",
    "ModelNotFound",
    "NDJSONDecoder",
    "NoRoute",
    "NotFound",
    "OllamaProvider",
    "OpenAICompatibleProvider",
    "OpenAIProvider",
    "OpenRouterProvider",
    "Overloaded",
    "Part",
    "PermissionDenied",
    "ProtocolError",
    "Provider",
    "QuotaExceeded",
    "RateLimited",
    "ReasoningDelta",
    "ResponseFormat",
    "ResponseTooLarge",
    "Role",
    "RouterClosed",
    "SSEDecoder",
    "Scrubber",
    "Secret",
    "ServerError",
    "ServerSentEvent",
    "StreamEvent",
    "StreamInterrupted",
    "TextDelta",
    "TextPart",
    "Timeout",
    "TogetherProvider",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolChoice",
    "ToolSpec",
    "UnsupportedFeature",
    "Usage",
    "UsageEvent",
    "default_client",
    "parse_retry_after",
    "validate_request",
]
