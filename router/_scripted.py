"""What the stateful harness and the pytest plugin share, without hypothesis: the default
configuration over scripted providers, and the record of one request's end."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from providers import ChatResponse, LLMError

from ._config import BudgetConfig, ModelConfig, ProviderConfig, RouteConfig, RouterConfig
from ._policy import Strategy
from ._retry import RetryConfig

__all__ = ["RequestResult", "harness_config"]


def harness_config(
    providers: Sequence[str],
    *,
    route: str = "policy",
    strategy: str | Strategy = "fallback",
    budget: float | None = None,
    max_tokens: int = 100,
) -> RouterConfig:
    """The configuration :class:`RouterMachine` (and the pytest plugin) use by default.

    One ``kind = "mock"`` provider per name, serving model ``"m"`` priced at ``n + 1``
    dollars per million input tokens and ``2 (n + 1)`` per million output tokens (``n``
    the provider's index, so ``least-cost`` has an order), no retries on a provider (each
    attempt is one call), and route ``route`` over them all, in order, planned by
    ``strategy``, with a spend cap of ``budget`` dollars per day if given.

    Raises:
        TypeError: ``providers`` is a str, or holds something that is not a non-empty str.
        ValueError: ``providers`` is empty or names a provider twice.
    """
    if isinstance(providers, str):  # list("ab") would be two providers, "a" and "b"
        raise TypeError(
            f"harness_config takes a sequence of provider names, not the str {providers!r} "
            f"(write [{providers!r}])"
        )
    if not providers:
        raise ValueError("harness_config needs at least one provider name")
    for name in providers:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a provider name is a non-empty str, not {name!r}")
    twice = sorted({name for name in providers if list(providers).count(name) > 1})
    if twice:
        raise ValueError(f"harness_config: provider names given twice: {twice}")
    return RouterConfig(
        providers={
            name: ProviderConfig(kind="mock", retry=RetryConfig(max_attempts=1))
            for name in providers
        },
        models={
            f"{name}:m": ModelConfig(input_price=float(i + 1), output_price=float(2 * (i + 1)))
            for i, name in enumerate(providers)
        },
        routes={
            route: RouteConfig(
                targets=[f"{name}:m" for name in providers],
                strategy=strategy,
                budget=None if budget is None else BudgetConfig(limit=budget),
            )
        },
        default_max_tokens=max_tokens,
    )


class RequestResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one request the machine sent ended: an answer or a typed error, and when."""

    sent: float
    ended: float
    response: ChatResponse | None = None
    error: LLMError | None = None
