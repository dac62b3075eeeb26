"""Testing support, re-exported for users of ``router``.

=========================  ================================================================
:class:`MockProvider`      an in-process provider: scripted, rule-based or echoing answers
                           on trio's clock, with every call recorded
:func:`open_fake_upstream` a loopback HTTP server speaking every vendor's wire format, with
                           scripted latency and faults
:func:`check_provider`     the conformance suite every adapter passes (yours too)
:func:`simulate`           route policies against a scenario, in virtual time
:func:`check_policy`       the property suite every routing strategy passes (yours too),
                           over the hypothesis strategies ``policy_inputs`` and friends
:class:`RouterMachine`     a hypothesis state machine over a router on virtual time: your
                           policy's invariants, checked after every step
=========================  ================================================================

See :mod:`providers.testing` and docs/testing.md for the details.
"""

import typing as _typing

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
from providers.testing import check_provider as check_provider
from providers.testing import load_scenarios as load_scenarios
from providers.testing import open_fake_upstream as open_fake_upstream

# The policy-testing kit (docs/policy-testing.md); imports hypothesis only when used.
from ._policy_kit import PolicyCheck as PolicyCheck
from ._policy_kit import PolicyInputs as PolicyInputs
from ._policy_kit import check_policy as check_policy
from ._policy_kit import policy_candidates as policy_candidates
from ._policy_kit import policy_health as policy_health
from ._policy_kit import policy_inputs as policy_inputs
from ._policy_kit import policy_needs as policy_needs

# The stateful harness (docs/policy-testing.md).  RouterMachine needs hypothesis (the
# `test` extra): imported on first use, so `import router.testing` does not need it.
from ._scripted import RequestResult as RequestResult
from ._scripted import harness_config as harness_config

if _typing.TYPE_CHECKING:
    from ._harness import RouterMachine as RouterMachine
from ._tools._simulate import PolicyResult as PolicyResult
from ._tools._simulate import SimProvider as SimProvider
from ._tools._simulate import SimScenario as SimScenario
from ._tools._simulate import hedging_bound as hedging_bound
from ._tools._simulate import load_scenario as load_scenario
from ._tools._simulate import simulate as simulate

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
    "PolicyResult",
    "RecordedRequest",
    "Scenario",
    "SimProvider",
    "SimScenario",
    "Uniform",
    "check_provider",
    "hedging_bound",
    "load_scenario",
    "load_scenarios",
    "open_fake_upstream",
    "simulate",
    # the policy-testing kit
    "PolicyCheck",
    "PolicyInputs",
    "check_policy",
    "policy_candidates",
    "policy_health",
    "policy_inputs",
    "policy_needs",
    # The stateful harness.
    "RequestResult",
    "RouterMachine",
    "harness_config",
]


def __getattr__(name: str) -> object:
    """``RouterMachine``, imported on first use (it needs hypothesis)."""
    if name == "RouterMachine":
        from ._harness import RouterMachine

        globals()[name] = RouterMachine
        return RouterMachine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "RouterMachine"})
