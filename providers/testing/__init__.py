"""Testing support: the fake upstream, its scenarios, and the mock provider.

Users test their own code with these; the demo and the benchmarks run on them.

Synopsis::

    async with open_fake_upstream({"flaky": Scenario(faults=[Fault(kind="status", status=529,
                                                                   on_requests=[1])])}) as up:
        anthropic = AnthropicProvider(api_key="test", base_url=up.base_url("flaky", "anthropic"))
"""

from .._mock import MockCall as MockCall
from .._mock import MockProvider as MockProvider
from .._mock import MockResponse as MockResponse
from ._conformance import CONFORMANCE_CHECKS as CONFORMANCE_CHECKS
from ._conformance import ProviderFactory as ProviderFactory
from ._conformance import check_provider as check_provider
from ._conformance import fake_base_url as fake_base_url
from ._decode import decode_anthropic_request as decode_anthropic_request
from ._decode import decode_gemini_request as decode_gemini_request
from ._decode import decode_ollama_request as decode_ollama_request
from ._decode import decode_openai_request as decode_openai_request
from ._formats import UPSTREAM_KINDS as UPSTREAM_KINDS
from ._records import RecordedRequest as RecordedRequest
from ._records import UpstreamStats as UpstreamStats
from ._scenario import Fault as Fault
from ._scenario import FaultKind as FaultKind
from ._scenario import Fixed as Fixed
from ._scenario import Latency as Latency
from ._scenario import LogNormal as LogNormal
from ._scenario import Mixture as Mixture
from ._scenario import MixtureComponent as MixtureComponent
from ._scenario import Scenario as Scenario
from ._scenario import Uniform as Uniform
from ._scenario import load_scenarios as load_scenarios
from ._server import FakeUpstream as FakeUpstream
from ._server import open_fake_upstream as open_fake_upstream
from ._server import serve_fake_upstream as serve_fake_upstream

__all__ = [
    "CONFORMANCE_CHECKS",
    "FakeUpstream",
    "Fault",
    "FaultKind",
    "Fixed",
    "Latency",
    "LogNormal",
    "Mixture",
    "MixtureComponent",
    "MockCall",
    "MockProvider",
    "MockResponse",
    "ProviderFactory",
    "RecordedRequest",
    "Scenario",
    "UPSTREAM_KINDS",
    "Uniform",
    "UpstreamStats",
    "check_provider",
    "decode_anthropic_request",
    "decode_gemini_request",
    "decode_ollama_request",
    "decode_openai_request",
    "fake_base_url",
    "load_scenarios",
    "open_fake_upstream",
    "serve_fake_upstream",
]
