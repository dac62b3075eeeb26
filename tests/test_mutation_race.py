"""The race: the behaviours that mutation testing found unpinned (docs/testing.md).

The race is driven directly here (a :class:`Race` subclass whose targets are scripted
coroutines), on virtual time: exact ``trio.current_time()``, exact traces, exact log
lines and error messages.  Each test names what a user (or the router above the race)
relies on: the log lines of hedges, fallbacks and failed closes; the errors a race
raises and their messages; the hedge counters across requests; the retry numbers; the
cancel reasons the losers see; the observer's view.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from providers import (
    AllProvidersFailed,
    ContextLengthExceeded,
    InvalidRequest,
    LLMError,
    NoRoute,
    Overloaded,
    ServerError,
    Usage,
)
from router import open_router
from router._policy import Candidate
from router._race import AttemptRecord, HedgeCounters, Race
from router.config import HedgeConfig, ProviderConfig, RouteConfig, RouterConfig
from router.testing import MockProvider

Script = Callable[[AttemptRecord], Awaitable[str]]


def answer(text: str, after: float, *, shielded: bool = False) -> Script:
    """A target that answers ``text`` after ``after`` seconds (shielded: even when the
    race is decided meanwhile)."""

    async def run(record: AttemptRecord) -> str:
        if shielded:
            with trio.CancelScope(shield=True):
                await trio.sleep(after)
        else:
            await trio.sleep(after)
        return text

    return run


def failing(error: BaseException, after: float, *, shielded: bool = False) -> Script:
    """A target that raises ``error`` after ``after`` seconds."""

    async def run(record: AttemptRecord) -> str:
        if shielded:
            with trio.CancelScope(shield=True):
                await trio.sleep(after)
        else:
            await trio.sleep(after)
        raise error

    return run


class Observer:
    """Notes every observer call as (event, provider, detail)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []

    def attempt_started(self, record: AttemptRecord) -> None:
        self.events.append(("started", record.candidate.provider, record.kind))

    def attempt_finished(self, record: AttemptRecord) -> None:
        self.events.append(("finished", record.candidate.provider, record.outcome))

    def launched(self, record: AttemptRecord, previous: AttemptRecord | None) -> None:
        self.events.append(
            ("launched", record.candidate.provider, previous and previous.candidate.provider)
        )


class Scripted(Race[str]):
    """A race over targets named by ``scripts`` (in order), each a scripted coroutine.

    ``skip``: provider → the reason to pass it over; ``latency``: provider → its
    expected latency; ``budget``: hedge tokens available; ``retries``: delays of the
    retries a target may make (the same for every target); ``cancelled``: provider → the
    reason of the Cancelled its attempt saw.
    """

    def __init__(
        self,
        scripts: dict[str, Script],
        *,
        delay: float,
        max_attempts: int | None = None,
        windows: dict[str, int] | None = None,
        skip: dict[str, str] | None = None,
        latency: dict[str, float] | None = None,
        budget: float = math.inf,
        retries: tuple[float, ...] = (),
        counters: HedgeCounters | None = None,
        observer: Observer | None = None,
    ) -> None:
        plan = [
            Candidate(provider=name, model="m", index=i, context_window=(windows or {}).get(name))
            for i, name in enumerate(scripts)
        ]
        super().__init__(
            plan,
            max_attempts=len(plan) if max_attempts is None else max_attempts,
            delay=delay,
            request_id="req-1",
            observer=observer,
            hedge_counters=counters,
        )
        self.scripts = scripts
        self.skips = skip or {}
        self.latencies = latency or {}
        self.budget = budget
        self.retries = retries
        self.asked: list[tuple[str, int]] = []
        self.cancelled: dict[str, str | None] = {}

    async def _call(self, record: AttemptRecord) -> str:
        try:
            return await self.scripts[record.candidate.provider](record)
        except trio.Cancelled as exc:
            self.cancelled[record.candidate.provider] = exc.reason
            raise

    def call(self, record: AttemptRecord) -> Awaitable[str]:
        return self._call(record)

    def skip(self, candidate: Candidate, more: bool) -> str | None:
        return self.skips.get(candidate.provider)

    def expected_latency(self, candidate: Candidate) -> float | None:
        return self.latencies.get(candidate.provider)

    def spend_hedge(self) -> bool:
        if self.budget < 1:
            return False
        self.budget -= 1
        return True

    def fails_over(self, exc: LLMError) -> bool:
        # As the router's race: a context-length error moves on to a larger window.
        return exc.retryable or isinstance(exc, ContextLengthExceeded)

    def retry_delay(self, record: AttemptRecord, exc: LLMError, retry: int) -> float | None:
        self.asked.append((record.candidate.provider, retry))
        return self.retries[retry - 1] if retry <= len(self.retries) else None


def outcomes(race: Race[Any]) -> list[tuple[str, str, str | None, str | None]]:
    """(provider, kind, outcome, reason) of every record."""
    return [(r.candidate.provider, r.kind, r.outcome, r.reason) for r in race.records]


# --------------------------------------------------------------------------- errors


async def test_a_foreign_exception_becomes_a_server_error_of_its_provider(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A target raising a non-LLMError (a bug in a provider) fails its attempt with a
    ServerError that names the exception and the provider, caused by the original."""
    bug = KeyError("choices")
    race = Scripted({"a": failing(bug, 1.0)}, delay=math.inf)
    with pytest.raises(ServerError) as info:
        await race.run()
    assert str(info.value) == "[a] the attempt raised KeyError: 'choices'"
    assert info.value.provider == "a"
    assert info.value.__cause__ is bug
    assert outcomes(race) == [
        ("a", "primary", "failed", "[a] the attempt raised KeyError: 'choices'")
    ]


async def test_every_attempt_failing_names_each_target_in_the_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AllProvidersFailed says, per target in plan order, the error's class or why it
    was skipped; its cause is the group of every attempt's error."""
    race = Scripted(
        {
            "a": failing(ServerError("boom"), 1.0),
            "b": answer("never", 1.0),
            "c": failing(Overloaded("busy"), 1.0),
        },
        delay=math.inf,
        skip={"b": "paused by its provider"},
    )
    with pytest.raises(AllProvidersFailed) as info:
        await race.run()
    assert str(info.value) == (
        "every target failed (a:m: ServerError; b:m: skipped, paused by its provider; "
        "c:m: Overloaded)"
    )
    group = info.value.__cause__
    assert isinstance(group, ExceptionGroup)
    assert group.message == "the errors of every attempt"
    assert [type(e) for e in group.exceptions] == [ServerError, Overloaded]
    assert trio.current_time() == 2.0


async def test_a_race_that_could_try_no_target_is_no_route_saying_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When every target is passed over before anything goes out, the race raises
    NoRoute (not retryable) listing each target and its reason, at once."""
    race = Scripted(
        {"a": answer("a", 1.0), "b": answer("b", 1.0)},
        delay=math.inf,
        skip={"a": "paused until t=30", "b": "breaker open"},
    )
    with pytest.raises(NoRoute) as info:
        await race.run()
    assert str(info.value) == (
        "no target could be tried (a:m: skipped, paused until t=30; b:m: skipped, breaker open)"
    )
    assert not info.value.retryable
    assert trio.current_time() == 0.0


async def test_the_first_fatal_error_is_the_one_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Racing a and b: a fails fatally at 1 s, ending the race; b, in a shield, fails
    fatally too at 2 s. The caller gets a's error — the one that ended the race."""
    first = InvalidRequest("a refuses")
    race = Scripted(
        {"a": failing(first, 1.0), "b": failing(InvalidRequest("b refuses"), 2.0, shielded=True)},
        delay=0.0,
    )
    with pytest.raises(InvalidRequest) as info:
        await race.run()
    assert info.value is first
    assert trio.current_time() == 2.0


async def test_a_context_error_with_only_equal_windows_left_is_raised_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """a (window 1000) overflows; b's window is also 1000, not larger: the race ends with
    a's ContextLengthExceeded at once, and b is never tried nor traced."""
    error = ContextLengthExceeded("too long", limit=1000, requested=1500)
    race = Scripted(
        {"a": failing(error, 1.0), "b": answer("b", 1.0)},
        delay=math.inf,
        windows={"a": 1000, "b": 1000},
    )
    with pytest.raises(ContextLengthExceeded) as info:
        await race.run()
    assert info.value is error
    assert [r.candidate.provider for r in race.records] == ["a"]
    assert trio.current_time() == 1.0


async def test_losers_are_cancelled_with_the_reason_the_race_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The Cancelled a losing attempt sees says why: the winner's target won, or the
    target whose fatal error ended the race."""
    won = Scripted({"a": answer("a", 1.0), "b": answer("b", 5.0)}, delay=0.0)
    assert (await won.run())[0] == "a"
    assert won.cancelled == {"b": "a:m won the race"}

    ended = Scripted({"a": failing(InvalidRequest("no"), 1.0), "b": answer("b", 5.0)}, delay=0.0)
    with pytest.raises(InvalidRequest):
        await ended.run()
    assert ended.cancelled == {"b": "a:m failed: InvalidRequest"}
    assert outcomes(ended)[1] == ("b", "hedge", "cancelled", "the race ended: InvalidRequest")


# --------------------------------------------------------------------------- retries


async def test_retries_are_numbered_one_two_three(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """retry_delay is asked with retry = 1, 2, 3... for one attempt's successive
    failures, and the retries wait the delays it gives."""
    tries: list[float] = []

    async def flaky(record: AttemptRecord) -> str:
        tries.append(trio.current_time())
        if len(tries) < 4:
            raise ServerError("flaky")
        return "ok"

    race = Scripted({"a": flaky}, delay=math.inf, retries=(1.0, 2.0, 4.0))
    result, winner = await race.run()
    assert (result, winner.retries) == ("ok", 3)
    assert race.asked == [("a", 1), ("a", 2), ("a", 3)]
    assert tries == [0.0, 1.0, 3.0, 7.0]


# --------------------------------------------------------------------------- hedge counters


async def test_hedge_counters_add_up_over_the_requests_of_a_route(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A route's counters accumulate: two requests, each with a hedge not sent for want
    of budget, count 2; two with no target left count 2; two sent count 2."""
    counters = HedgeCounters()
    for _ in range(2):
        race = Scripted(
            {"a": answer("a", 1.0), "b": answer("b", 1.0)}, delay=0.5, budget=0, counters=counters
        )
        assert (await race.run())[0] == "a"
    for _ in range(2):
        race = Scripted({"a": answer("a", 1.0)}, delay=0.5, max_attempts=2, counters=counters)
        assert (await race.run())[0] == "a"
    for _ in range(2):
        race = Scripted(
            {"a": answer("a", 1.0), "b": answer("b", 1.0)}, delay=0.25, counters=counters
        )
        assert (await race.run())[0] == "a"
    assert (counters.not_sent_budget, counters.not_sent_no_target, counters.sent) == (2, 2, 2)
    assert counters.not_sent_deadline == 0


async def test_a_hedge_not_sent_is_blamed_on_the_deadline_only_for_targets_passed_now(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The deadline counter counts a hedge whose targets were passed over *for the
    deadline now*; when the hedge's only target is paused, it counts as no target, even
    though an earlier target was passed over for the deadline (for the primary)."""
    counters = HedgeCounters()
    for n in (1, 2):
        race = Scripted(
            {"a": answer("a", 1.0), "b": answer("b", 1.0), "c": answer("c", 1.0)},
            delay=0.5,
            latency={"a": 100.0},
            skip={"c": "paused by its provider"},
            counters=counters,
        )
        with trio.move_on_after(10.0):
            result, _ = await race.run()
        assert result == "b"
        assert [(p, k, o) for p, k, o, _ in outcomes(race)] == [
            ("a", "primary", "skipped"),
            ("b", "primary", "won"),
            ("c", "hedge", "skipped"),
        ]
        assert (counters.not_sent_no_target, counters.not_sent_deadline) == (n, 0)

    late = HedgeCounters()
    for n in (1, 2):
        race = Scripted(
            {"a": answer("a", 1.0), "b": answer("b", 1.0)},
            delay=0.5,
            latency={"b": 100.0},
            counters=late,
        )
        with trio.move_on_after(10.0):
            result, _ = await race.run()
        assert result == "a"
        assert (late.not_sent_no_target, late.not_sent_deadline) == (0, n)


# --------------------------------------------------------------------------- logs


async def test_hedges_and_fallbacks_are_logged_with_who_and_when(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each hedge logs at DEBUG how long the attempt it hedges has gone unanswered; each
    fallback logs at INFO which target failed and how; both carry request_id and
    provider as extra fields."""
    caplog.set_level(logging.DEBUG, logger="trio_llm_router")
    race = Scripted(
        {
            "a": answer("a", 10.0),
            "b": failing(ServerError("boom"), 0.25),
            "c": answer("c", 10.0),
            "d": answer("d", 1.0),
        },
        delay=0.5,
    )
    result, _ = await race.run()
    assert (result, trio.current_time()) == ("d", 2.25)
    lines = [(r.levelname, r.getMessage(), r.request_id, r.provider) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [
        ("DEBUG", "request req-1: hedging on b, a has not answered in 0.5s", "req-1", "b"),
        ("INFO", "request req-1: falling back to c, b failed (ServerError)", "req-1", "c"),
        ("DEBUG", "request req-1: hedging on d, c has not answered in 0.5s", "req-1", "d"),
    ]


async def test_a_racing_hedge_at_time_zero_logs_no_wait(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With delay 0 at t = 0, the hedge's log line says the primary has gone 0 s unanswered."""
    caplog.set_level(logging.DEBUG, logger="trio_llm_router")
    race = Scripted({"a": answer("a", 1.0), "b": answer("b", 2.0)}, delay=0.0)
    await race.run()
    assert [r.getMessage() for r in caplog.records] == [
        "request req-1: hedging on b, a has not answered in 0s"
    ]


async def test_a_failed_close_of_an_unread_answer_is_logged_not_raised(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Two answers in one instant; closing the loser's fails: the caller gets the winner,
    and one INFO line names the request, the provider and the error class."""

    class FailsToClose(Scripted):
        async def discard(self, result: str, record: AttemptRecord) -> None:
            raise ServerError("closing failed")

    caplog.set_level(logging.INFO, logger="trio_llm_router")
    race = FailsToClose(
        {"a": answer("a", 1.0, shielded=True), "b": answer("b", 1.0, shielded=True)}, delay=0.0
    )
    result, _ = await race.run()
    loser = {"a": "b", "b": "a"}[result]
    assert [
        (r.levelname, r.getMessage(), r.request_id, r.provider)  # type: ignore[attr-defined]
        for r in caplog.records
    ] == [
        (
            "INFO",
            f"request req-1: closing the unused answer of {loser} failed (ServerError)",
            "req-1",
            loser,
        )
    ]


# --------------------------------------------------------------------------- observer


async def test_the_observer_hears_each_fallback_with_the_failure_it_replaces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """a and its hedge b fail in the same instant (1.5 s): the observer hears c launched
    in place of one and d in place of the other, in the order they failed."""
    observer = Observer()
    race = Scripted(
        {
            "a": failing(ServerError("a"), 1.5),
            "b": failing(ServerError("b"), 0.5),
            "c": answer("c", 10.0),
            "d": answer("d", 0.25),
        },
        delay=1.0,
        observer=observer,
    )
    result, _ = await race.run()
    assert (result, trio.current_time()) == ("d", 1.75)
    launched = [(e[1], e[2]) for e in observer.events if e[0] == "launched"]
    # Which of two same-instant failures is heard first is trio's (randomised) choice.
    failed = [e[1] for e in observer.events if e[0] == "finished" and e[2] == "failed"]
    assert sorted(failed) == ["a", "b"]
    assert launched == [("b", "a"), ("c", failed[0]), ("d", failed[1])]


async def test_the_observer_hears_of_skipped_targets_but_not_of_a_hedge_with_none_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A target passed over is reported to the observer as finished (skipped); a hedge
    that fell due with no target left is traced but is no attempt: the observer does
    not hear of it."""
    observer = Observer()
    race = Scripted(
        {"a": answer("a", 1.0), "b": answer("b", 1.0)},
        delay=0.5,
        skip={"b": "paused"},
        observer=observer,
    )
    await race.run()
    assert observer.events == [
        ("started", "a", "primary"),
        ("finished", "b", "skipped"),
        ("finished", "a", "won"),
    ]
    assert [(p, o) for p, _, o, _ in outcomes(race)] == [
        ("a", "won"),
        ("b", "skipped"),
    ]


async def test_a_hedged_routes_statistics_before_its_first_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before any request, a hedged route's statistics show no delay in force (None,
    as documented) and nothing sent or not sent."""
    pc = ProviderConfig(kind="mock")
    config = RouterConfig(
        providers={"a": pc, "b": pc},
        routes={"r": RouteConfig(targets=["a:m", "b:m"], hedge=HedgeConfig(delay=0.5))},
    )
    mocks = {n: MockProvider(name=n) for n in ("a", "b")}
    async with open_router(config, providers=mocks) as router:
        hedging = router.statistics().hedging["r"]
    assert hedging.delay is None
    assert (hedging.sent, hedging.not_sent_budget) == (0, 0)
    assert (hedging.not_sent_deadline, hedging.not_sent_no_target) == (0, 0)


def spending(text: str | None, after: float, tokens: int, error: LLMError | None = None) -> Script:
    """A target that is sent ``tokens`` prompt tokens (after 0.1 s queued), then answers
    ``text`` (with usage and a cost) or raises ``error`` after ``after`` seconds."""

    async def run(record: AttemptRecord) -> str:
        record.queued = 0.1
        record.sent_tokens = tokens
        await trio.sleep(after)
        if error is not None:
            raise error
        assert text is not None
        record.usage = Usage(input_tokens=tokens, output_tokens=3)
        record.cost = 0.25
        return text

    return run


async def test_the_trace_counts_what_each_loser_wasted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The public trace: the winner and a skipped target waste nothing; a failed attempt
    and a cancelled loser waste the prompt tokens they were sent; each carries its
    model, usage, cost and time queued."""
    race = Scripted(
        {
            "a": spending(None, 0.5, 100, ServerError("boom")),
            "b": answer("never", 1.0),
            "c": spending("c", 1.0, 200),
            "d": spending("d", 5.0, 300),
        },
        delay=0.75,
        skip={"b": "paused"},
    )
    result, _ = await race.run()
    assert (result, trio.current_time()) == ("c", 1.5)
    attempts = race.trace(0.0)
    assert [(a.provider, a.model, a.outcome, a.wasted_tokens) for a in attempts] == [
        ("a", "m", "failed", 100),
        ("b", "m", "skipped", 0),
        ("c", "m", "won", 0),
        ("d", "m", "cancelled", 300),
    ]
    won = attempts[2]
    assert (won.usage, won.cost, won.queued) == (
        Usage(input_tokens=200, output_tokens=3),
        0.25,
        0.1,
    )
    assert (won.start, won.end, won.hedge_delay) == (0.5, 1.5, 0.75)


def test_a_record_frozen_before_its_attempt_ends_reads_as_cancelled() -> None:
    """AttemptRecord.freeze on a record with no outcome yet gives outcome "cancelled"
    (and wastes what it was sent)."""
    record = AttemptRecord(Candidate(provider="a", model="m"), "primary", 2.0)
    record.sent_tokens = 40
    attempt = record.freeze(1.0)
    assert (attempt.outcome, attempt.wasted_tokens, attempt.start, attempt.end) == (
        "cancelled",
        40,
        1.0,
        None,
    )


async def test_a_hedge_expected_to_finish_exactly_at_the_deadline_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller's deadline is 10 s; at 0.5 s b is expected to take 9.5 s, finishing
    exactly at the deadline: that fits, so the hedge goes out (and wins at 2.5 s)."""
    race = Scripted({"a": answer("a", 20.0), "b": answer("b", 2.0)}, delay=0.5, latency={"b": 9.5})
    with trio.move_on_at(10.0):
        result, winner = await race.run()
    assert (result, winner.kind, trio.current_time()) == ("b", "hedge", 2.5)
