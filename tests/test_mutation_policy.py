"""Behaviours of router/_policy.py that its mutants showed no test pinned (docs/testing.md,
"Mutation testing"): a request's needs, the spend-cap filter, health lookup, and the
identity of built-in strategies."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import ChatRequest, ImagePart, Message, ResponseFormat, ToolSpec
from providers._tokens import count_input_tokens
from router._policy import (
    BuiltinStrategy,
    Candidate,
    Needs,
    TargetHealth,
    health_of,
    over_budget,
)


def test_needs_of_a_plain_request() -> None:
    """A text request needs nothing special; its output is max_tokens, or the default."""
    request = ChatRequest(model="m", messages=[Message.user("hello there")])
    needs = Needs.of(request, streaming=False, default_max_tokens=321)
    assert needs == Needs(input_tokens=count_input_tokens(request), output_tokens=321)
    assert needs.input_tokens > 0
    capped = ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=7)
    assert Needs.of(capped, streaming=True, default_max_tokens=321).output_tokens == 7


def test_needs_of_a_demanding_request() -> None:
    """Tools, an image, a JSON schema and streaming each become a need."""
    request = ChatRequest(
        model="m",
        messages=[Message.user("what is this?", ImagePart.from_url("https://x/cat.png"))],
        tools=[ToolSpec(name="look")],
        response_format=ResponseFormat.json_schema({"type": "object"}),
        max_tokens=50,
    )
    needs = Needs.of(request, streaming=True, default_max_tokens=1000)
    assert needs == Needs(
        tools=True,
        vision=True,
        structured_output=True,
        streaming=True,
        input_tokens=count_input_tokens(request),
        output_tokens=50,
    )


def test_a_text_response_format_is_not_structured_output() -> None:
    """response_format type "text" needs no structured output; json_object does."""
    text = ChatRequest(model="m", messages=[Message.user("hi")], response_format=ResponseFormat())
    json = ChatRequest(
        model="m", messages=[Message.user("hi")], response_format=ResponseFormat.json_object()
    )
    assert not Needs.of(text, streaming=False, default_max_tokens=1).structured_output
    assert Needs.of(json, streaming=False, default_max_tokens=1).structured_output


PRICED = Candidate(provider="a", model="m", input_price=1.0, output_price=2.0)


def test_over_budget_says_what_it_would_cost_and_what_is_left() -> None:
    """A request costing more than the provider's budget left is excluded, with both sums."""
    needs = Needs(input_tokens=1_000_000, output_tokens=500_000)  # $1 + $1
    assert over_budget(PRICED, needs, {"a": TargetHealth(budget_left=1.5)}) == (
        "~$2.0000 would cross its provider's spend cap ($1.5000 left)"
    )


@settings(max_examples=50, deadline=None)
@given(
    input_tokens=st.integers(0, 10**7),
    output_tokens=st.integers(0, 10**7),
    left=st.none() | st.floats(0.0, 100.0),
    priced=st.booleans(),
)
def test_over_budget_iff_the_cost_exceeds_what_is_left(
    input_tokens: int, output_tokens: int, left: float | None, priced: bool
) -> None:
    """Invariant: over_budget is a reason exactly when a cap is set, the prices are known
    and the estimated cost is above what is left (a cost equal to it fits)."""
    c = PRICED if priced else Candidate(provider="a", model="m", input_price=1.0)
    needs = Needs(input_tokens=input_tokens, output_tokens=output_tokens)
    cost = (input_tokens * 1.0 + output_tokens * 2.0) / 1e6
    health = {"a": TargetHealth(budget_left=left), "b": TargetHealth(budget_left=0.0)}
    reason = over_budget(c, needs, health)
    assert (reason is not None) == (priced and left is not None and cost > left)
    assert over_budget(c, needs, {}) is None
    exact = {"a": TargetHealth(budget_left=cost)}
    assert over_budget(c, needs, exact) is None


def test_health_of_a_provider() -> None:
    """health_of returns the provider's own entry, and healthy when it has none."""
    sick = TargetHealth(status="unhealthy", reason="circuit open")
    health = {"a": sick}
    assert health_of(health, Candidate(provider="a", model="m")) is sick
    assert health_of(health, Candidate(provider="b", model="m")) == TargetHealth()


def test_builtin_strategies_compare_by_name_and_threshold() -> None:
    """Two BuiltinStrategy objects are equal (and hash alike) iff name and threshold match;
    anything else is not equal to one."""
    a = BuiltinStrategy("least-cost", 0.3)
    assert a == BuiltinStrategy("least-cost", 0.3)
    assert hash(a) == hash(BuiltinStrategy("least-cost", 0.3))
    assert a != BuiltinStrategy("least-cost", 0.4)
    assert a != BuiltinStrategy("fallback", 0.3)
    assert a.__eq__("least-cost") is NotImplemented
    assert a != "least-cost"
    assert len({a, BuiltinStrategy("least-cost", 0.3), BuiltinStrategy("fallback")}) == 2
    plan = a([PRICED], Needs(), {}, 0.0, random.Random(0))
    assert [c.target for c in plan.targets] == ["a:m"]


def test_an_unknown_strategy_lists_the_built_in_ones() -> None:
    """BuiltinStrategy with an unknown name is a ValueError naming it and the five."""
    with pytest.raises(ValueError) as info:
        BuiltinStrategy("cheapest")  # type: ignore[arg-type]
    assert str(info.value) == (
        "unknown strategy 'cheapest'; the built-in ones: "
        "fallback, weighted, least-latency, least-cost, least-busy"
    )


def test_panic_orders_the_unhealthy_by_the_strategy() -> None:
    """In panic, the unhealthy targets are ordered by the route's strategy too: cheapest
    first for least-cost, each marked panic."""
    dear = Candidate(provider="a", model="m", index=0, input_price=5.0, output_price=5.0)
    cheap = Candidate(provider="b", model="m", index=1, input_price=1.0, output_price=1.0)
    down = TargetHealth(status="unhealthy", reason="circuit open")
    plan = BuiltinStrategy("least-cost")(
        [dear, cheap],
        Needs(input_tokens=10, output_tokens=10),
        {"a": down, "b": down},
        0.0,
        random.Random(0),
    )
    assert plan.panic
    assert [(c.target, c.panic) for c in plan.targets] == [("b:m", True), ("a:m", True)]
