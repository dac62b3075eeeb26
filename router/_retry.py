"""When to retry, how long to wait, and how many retries the router may afford.

Four small pure pieces, each used by the router's attempt loop:

=====================  =====================================================
:class:`RetryConfig`   the knobs, with their defaults written down
:func:`retry_delay`    one failed attempt → wait this long, or ``None``: don't
:class:`RetryBudget`   retries ≤ 20% of requests + a floor, over a sliding window
:class:`HedgeThrottle` gRPC ``retryThrottling``: stop hedging a failing provider
=====================  =====================================================

Nothing here sleeps, reads a clock or touches global randomness: ``now`` (trio's clock)
and ``rng`` (a :class:`random.Random`) are arguments, so the router can run on
``MockClock`` and tests can replay any schedule from a seed.

Why a budget as well as ``max_attempts``: per-call attempt limits multiply under an
outage (every caller retries three times, so load triples exactly when the provider is
struggling).  A budget shared by all calls caps retries at a fraction of the real
traffic, the way Finagle and Envoy do, while the per-second floor still lets a quiet
client retry its rare failure.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import msgspec

from providers import LLMError

__all__ = [
    "HedgeThrottle",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryConfig",
    "backoff_delay",
    "retry_delay",
]

# gRPC caps maxAttempts at 5; we allow a little more, but a config asking for dozens of
# attempts is a mistake, not a policy.
_MAX_ATTEMPTS_CAP = 10
# Finagle's RetryBudget accepts TTLs of 1 to 60 seconds; the ring holds one bucket each.
_MAX_BUDGET_WINDOW = 60
# Float noise in ratio·requests (0.1·3 = 0.30000000000000004) must not refuse a retry.
_EPSILON = 1e-9


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class RetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the router retries one provider: backoff, server pushback and a budget.

    Defaults, after the official OpenAI and Anthropic SDKs (backoff) and Finagle
    (budget):

    =========================  =======  ================================================
    ``max_attempts``           3        tries per provider, counting the first (1..10)
    ``initial_backoff``        0.5 s    cap of the first retry's wait
    ``max_backoff``            8.0 s    cap of any retry's wait
    ``multiplier``             2.0      cap growth per retry
    ``max_retry_after``        60.0 s   a longer server ``retry-after`` → don't retry
                                        here, fail over to another provider instead
    ``budget_ratio``           0.2      retries allowed per request, over the window
    ``budget_min_per_second``  1.0      retries allowed per second even with no traffic
    ``budget_window``          10.0 s   the sliding window, whole seconds (1..60)
    =========================  =======  ================================================

    The wait before retry ``n`` (``n = 1`` is the first retry) is full jitter::

        cap(n)  = min(initial_backoff · multiplier^(n-1), max_backoff)
        wait(n) = uniform(0, cap(n))       # 0.5, 1, 2, 4, 8, 8, ... s caps by default
        wait(n) = max(retry_after, wait(n))  when the server said retry_after

    and over any ``budget_window`` the retries spent stay within::

        retries ≤ budget_ratio · requests + budget_min_per_second · budget_window

    Building one never raises: ``open_router`` and ``load_config`` validate it, and an
    out-of-range field is a ``ConfigError`` at its path
    (``$.providers.openai.retry.max_attempts: must be an int from 1 to 10 ...``).

    Example::

        >>> RetryConfig(max_attempts=5, max_backoff=4.0).max_attempts
        5
    """

    max_attempts: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    multiplier: float = 2.0
    max_retry_after: float = 60.0
    budget_ratio: float = 0.2
    budget_min_per_second: float = 1.0
    budget_window: float = 10.0

    def _problems(self) -> Iterator[tuple[tuple[str | int, ...], str]]:
        """Out-of-range fields, as ``((field,), message)`` (see router._validation):
        building a config never raises; ``open_router`` and ``load_config`` report
        these as a ConfigError at the field's path."""
        n = self.max_attempts
        if not 1 <= n <= _MAX_ATTEMPTS_CAP:
            yield (
                ("max_attempts",),
                f"must be an int from 1 to {_MAX_ATTEMPTS_CAP} (it counts the first try), "
                f"got {n!r}",
            )
        for name in (
            "initial_backoff",
            "max_backoff",
            "max_retry_after",
            "budget_ratio",
            "budget_min_per_second",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                yield (name,), f"must be a finite number >= 0, got {value!r}"
        if self.max_backoff < self.initial_backoff:
            yield (
                ("max_backoff",),
                f"must be >= initial_backoff ({self.initial_backoff!r}), got {self.max_backoff!r}",
            )
        m = self.multiplier
        if not (math.isfinite(m) and m >= 1):
            yield ("multiplier",), f"must be a finite number >= 1, got {m!r}"
        w = self.budget_window
        if not (1 <= w <= _MAX_BUDGET_WINDOW and float(w).is_integer()):
            yield (
                ("budget_window",),
                f"must be a whole number of seconds from 1 to {_MAX_BUDGET_WINDOW}, got {w!r}",
            )


def backoff_delay(attempt: int, config: RetryConfig, rng: random.Random) -> float:
    """The jittered wait before retry number ``attempt`` (gRPC full jitter).

    ::

        cap   = min(initial_backoff · multiplier^(attempt-1), max_backoff)
        delay = rng.uniform(0, cap)

    Full jitter spreads the retries of many callers that failed together over the whole
    interval, so they do not come back in lock-step; its mean is ``cap / 2``.

    Args:
        attempt: the retry's number; 1 is the first retry (the second try).
        config: the retry settings.
        rng: the source of jitter; the same seed gives the same delays.

    Returns:
        Seconds to wait, in ``[0, cap]``.

    Raises:
        ValueError: ``attempt`` is below 1.

    Example::

        >>> import random
        >>> d = backoff_delay(3, RetryConfig(), random.Random(0))  # cap = 0.5 · 2² = 2 s
        >>> 0 <= d <= 2.0
        True
    """
    if attempt < 1:
        raise ValueError(f"attempt: retries are numbered from 1, got {attempt!r}")
    try:
        growth = float(config.multiplier) ** (attempt - 1)
    except OverflowError:  # a huge attempt number: the cap is max_backoff anyway
        growth = math.inf
    cap = (
        config.max_backoff
        if growth == math.inf
        else min(config.initial_backoff * growth, config.max_backoff)
    )
    return rng.uniform(0.0, cap)


def retry_delay(
    error: BaseException, attempt: int, config: RetryConfig, rng: random.Random
) -> float | None:
    """Whether to retry after a failed attempt, and after how long.

    ``None`` means do not retry on this provider:

    - ``error`` is not an :class:`~providers.LLMError` (a bug is not retried), or it is
      not ``retryable`` (the class default, or the vendor's ``x-should-retry``);
    - ``attempt`` tries have been made already and ``attempt >= max_attempts``;
    - the server asked to wait longer than ``max_retry_after``: waiting here would stall
      the call, so the router should fail over instead.

    Otherwise the wait honours the server and never comes earlier than it asked::

        delay = max(error.retry_after, backoff_delay(attempt))   if retry_after is set
        delay = backoff_delay(attempt)                           otherwise

    A negative or NaN ``retry_after`` is treated as absent.

    Args:
        error: what the attempt raised.
        attempt: how many tries have been made so far (1 after the first try fails);
            the retry being decided is retry number ``attempt``.
        config: the retry settings.
        rng: the source of jitter.

    Returns:
        Seconds to wait before the retry, or ``None``.

    Example::

        >>> import random
        >>> from providers import InvalidRequest, RateLimited
        >>> retry_delay(RateLimited("slow down", retry_after=20.0), 1, RetryConfig(),
        ...             random.Random(0))
        20.0
        >>> retry_delay(InvalidRequest("bad"), 1, RetryConfig(), random.Random(0)) is None
        True
    """
    if not isinstance(error, LLMError) or not error.retryable:
        return None
    if attempt >= config.max_attempts:
        return None
    retry_after = error.retry_after
    if retry_after is not None and not retry_after >= 0:  # negative or NaN: not said
        retry_after = None
    if retry_after is not None and retry_after > config.max_retry_after:
        return None
    delay = backoff_delay(attempt, config, rng)
    return delay if retry_after is None else max(float(retry_after), delay)


class RetryBudgetStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a :class:`RetryBudget` over its current window.

    Attributes:
        requests: first tries recorded in the window.
        retries: retries spent in the window.
        available: retries that could be spent now.
    """

    requests: int
    retries: int
    available: int


class RetryBudget:
    """A retry budget shared by every call to one provider (Finagle/Envoy style).

    Over the sliding window of the last ``budget_window`` seconds::

        allowed = budget_ratio · requests + budget_min_per_second · budget_window
        try_spend(now)  succeeds  iff  retries + 1 ≤ allowed

    ``requests`` counts first tries only (:meth:`record_request`); retries do not fund
    more retries.  Counts live in one bucket per second of trio time, in a ring of
    ``budget_window`` buckets with running totals (subtract on evict), so each call costs
    O(1) amortised and O(window) at worst, and memory is O(window).  A retry is judged
    against the buckets of the current second and the ``budget_window - 1`` before it.

    Time should not go backwards; if it does, the event is counted in the newest bucket.

    Example::

        >>> budget = RetryBudget(RetryConfig(budget_min_per_second=0.0))
        >>> for _ in range(10):
        ...     budget.record_request(now=0.0)
        >>> budget.try_spend(now=0.5), budget.try_spend(now=0.6), budget.try_spend(now=0.7)
        (True, True, False)
        >>> budget.statistics(now=0.7)
        RetryBudgetStatistics(requests=10, retries=2, available=0)
    """

    __slots__ = (
        "_floor",
        "_head",
        "_ratio",
        "_requests",
        "_retries",
        "_size",
        "_total_requests",
        "_total_retries",
    )

    def __init__(self, config: RetryConfig) -> None:
        self._size = int(config.budget_window)
        self._ratio = config.budget_ratio
        self._floor = config.budget_min_per_second * config.budget_window
        self._requests = [0] * self._size
        self._retries = [0] * self._size
        self._total_requests = 0
        self._total_retries = 0
        self._head: int | None = None  # the second of the newest bucket

    def __repr__(self) -> str:
        return (
            f"RetryBudget(requests={self._total_requests}, retries={self._total_retries},"
            f" window={self._size}s)"
        )

    def _advance(self, now: float) -> int:
        """Move the window to ``now``'s second, evicting buckets that fell out of it."""
        second = math.floor(now)
        head = self._head
        if head is None or second - head >= self._size:
            self._requests = [0] * self._size
            self._retries = [0] * self._size
            self._total_requests = self._total_retries = 0
            self._head = second
        elif second > head:
            for s in range(head + 1, second + 1):
                i = s % self._size
                self._total_requests -= self._requests[i]
                self._total_retries -= self._retries[i]
                self._requests[i] = self._retries[i] = 0
            self._head = second
        else:  # same second, or time went backwards: use the newest bucket
            second = head
        return second % self._size

    def _allowed(self) -> float:
        return self._ratio * self._total_requests + self._floor

    def record_request(self, now: float) -> None:
        """Count one first try (not a retry) at trio time ``now``; it funds retries."""
        head = self._head
        if head is not None and now < head + 1:
            i = head % self._size  # the newest second (or a stale now): what _advance says
        else:
            i = self._advance(now)
        self._requests[i] += 1
        self._total_requests += 1

    def try_spend(self, now: float) -> bool:
        """Spend one retry at trio time ``now`` if the budget allows; never blocks.

        Returns:
            ``True`` if the retry may go (and it has been counted), ``False`` if the
            budget is spent: fail the call, or fail over, instead.
        """
        i = self._advance(now)
        if self._total_retries + 1 > self._allowed() + _EPSILON:
            return False
        self._retries[i] += 1
        self._total_retries += 1
        return True

    def statistics(self, now: float) -> RetryBudgetStatistics:
        """A frozen snapshot of the window ending at trio time ``now``."""
        self._advance(now)
        spare = self._allowed() - self._total_retries + _EPSILON
        return RetryBudgetStatistics(
            requests=self._total_requests,
            retries=self._total_retries,
            available=max(0, math.floor(spare)),
        )


class HedgeThrottle:
    """gRPC ``retryThrottling`` for one provider: stop hedging (and retrying) when it fails.

    A token count starts full at ``max_tokens``; every failure takes one token, every
    success gives back ``token_ratio`` (never above ``max_tokens``)::

        failure:  tokens = max(0, tokens - 1)
        success:  tokens = min(max_tokens, tokens + token_ratio)
        allowed() = tokens > max_tokens / 2

    So with the defaults (10, 0.1) five failures in a row stop hedges, and about ten
    successes per failure keep them flowing.  When not allowed, the hedge or retry is
    simply not sent (fail fast; nothing waits).  Counts are kept in thousandths of a
    token, as gRPC does, so the arithmetic is exact.

    Args:
        max_tokens: the full count, ``0 < max_tokens ≤ 1000``.
        token_ratio: tokens a success gives back, ``> 0`` (three decimals are used).

    Example::

        >>> throttle = HedgeThrottle(max_tokens=4, token_ratio=0.5)
        >>> throttle.record_failure(); throttle.allowed()
        True
        >>> throttle.record_failure(); throttle.allowed()  # 2 tokens = max/2: stop
        False
        >>> throttle.record_success(); throttle.allowed()
        True
    """

    __slots__ = ("_max", "_milli", "_ratio")

    def __init__(self, *, max_tokens: float = 10, token_ratio: float = 0.1) -> None:
        if not (_is_number(max_tokens) and 0 < max_tokens <= 1000):
            raise ValueError(f"max_tokens: must be in (0, 1000], got {max_tokens!r}")
        if not (_is_number(token_ratio) and math.isfinite(token_ratio) and token_ratio > 0):
            raise ValueError(f"token_ratio: must be a finite number > 0, got {token_ratio!r}")
        self._max = max(1, round(max_tokens * 1000))
        self._ratio = max(1, round(token_ratio * 1000))
        self._milli = self._max

    def __repr__(self) -> str:
        return f"HedgeThrottle(tokens={self.tokens:g}, max_tokens={self._max / 1000:g})"

    @property
    def tokens(self) -> float:
        """The current token count."""
        return self._milli / 1000

    def allowed(self) -> bool:
        """Whether a hedge or retry may be sent now: tokens above half of ``max_tokens``."""
        return self._milli * 2 > self._max

    def record_failure(self) -> None:
        """Count a failed attempt: one token less (not below zero)."""
        self._milli = max(0, self._milli - 1000)

    def record_success(self) -> None:
        """Count a successful attempt: ``token_ratio`` tokens more (up to ``max_tokens``)."""
        self._milli = min(self._max, self._milli + self._ratio)
