"""Testing support, re-exported for users of ``router``: mock provider and fake upstream.

See :mod:`providers.testing` for the details.
"""

from providers.testing import FakeUpstream as FakeUpstream
from providers.testing import Fault as Fault
from providers.testing import Fixed as Fixed
from providers.testing import LogNormal as LogNormal
from providers.testing import Mixture as Mixture
from providers.testing import MixtureComponent as MixtureComponent
from providers.testing import MockCall as MockCall
from providers.testing import MockProvider as MockProvider
from providers.testing import MockResponse as MockResponse
from providers.testing import RecordedRequest as RecordedRequest
from providers.testing import Scenario as Scenario
from providers.testing import Uniform as Uniform
from providers.testing import load_scenarios as load_scenarios
from providers.testing import open_fake_upstream as open_fake_upstream

__all__ = [
    "FakeUpstream",
    "Fault",
    "Fixed",
    "LogNormal",
    "Mixture",
    "MixtureComponent",
    "MockCall",
    "MockProvider",
    "MockResponse",
    "RecordedRequest",
    "Scenario",
    "Uniform",
    "load_scenarios",
    "open_fake_upstream",
]
