"""Review of issue 15: ``router.plan(request)`` shows the plan the next request gets,
on routes whose strategy draws from the rng too (it plans on a copy of the router's)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from router import ChatRequest, Message, open_router
from router.policy import Candidate, Needs, Plan, Strategy, TargetHealth
from router.testing import MockProvider, MockResponse, harness_config


def shuffled(
    candidates: Sequence[Candidate],
    needs: Needs,
    health: Mapping[str, TargetHealth],
    now: float,
    rng: random.Random,
) -> Plan:
    """A strategy of the user's that orders the candidates at random (the router's rng)."""
    order = list(candidates)
    rng.shuffle(order)
    return Plan(targets=tuple(order))


@pytest.mark.parametrize("strategy", ["weighted", "least-latency", shuffled])
async def test_plan_then_complete_agree_on_an_rng_route(
    autojump_clock: object, strategy: str | Strategy
) -> None:
    """Invariant: for 40 requests in a row, the first target of ``router.plan(request)``
    is the provider that answers the ``complete(request)`` right after it (all answer,
    at once); ``plan`` does not move the router's rng."""
    config = harness_config(["a", "b", "c", "d"], strategy=strategy)
    mocks = {
        n: MockProvider(name=n, default=MockResponse(text=n, latency=0.0)) for n in config.providers
    }
    async with open_router(config, providers=mocks, seed=3) as router:
        request = ChatRequest(model="policy", messages=[Message.user("hi")])
        firsts = []
        for _ in range(40):
            planned = router.plan(request).targets[0].provider
            assert router.plan(request).targets[0].provider == planned  # twice: the same
            answered = (await router.complete(request)).provider
            assert answered == planned
            firsts.append(planned)
        assert len(set(firsts)) > 1  # the rng did choose
