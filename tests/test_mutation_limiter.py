"""Behaviours of router/_limiter.py that its mutants showed no test pinned (docs/testing.md,
"Mutation testing"): the bucket's edges, which limit holds a waiter, the expected wait,
the caller's ``now``, refusals, suspensions and what ``learn`` does with each header.
All on virtual time."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import Overloaded, RateLimited
from router._limiter import Hold, Mailbox, MailboxStatistics, Permit, TokenBucket, WaitOutcome

Waits = list[tuple[float, Hold, WaitOutcome]]


async def serving(mailbox: Mailbox, body: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    """Run ``body`` while ``mailbox.run`` serves the queue; stop the loop after it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(mailbox.run)
        await body(nursery)
        nursery.cancel_scope.cancel()


async def queue_one(
    mailbox: Mailbox, waits: Waits, permit: Permit, task_status: trio.TaskStatus[None]
) -> None:
    """Admit ``permit`` (reporting its wait into ``waits``), then hold it until cancelled;
    a refusal ends it quietly (``waits`` has it)."""
    task_status.started()
    try:
        await mailbox.admit(permit, on_wait=lambda *wait: waits.append(wait))
    except (Overloaded, RateLimited):
        return
    await trio.sleep_forever()


# --------------------------------------------------------------------------- the pure bucket


@pytest.mark.parametrize(("rate", "capacity"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, -1.0)])
def test_bucket_refuses_a_non_positive_rate_or_capacity(rate: float, capacity: float) -> None:
    """A bucket with a rate or a capacity that is zero or less is a ValueError saying so."""
    with pytest.raises(ValueError, match=r"^a token bucket needs a positive rate and capacity$"):
        TokenBucket(rate=rate, capacity=capacity, now=0.0)


def test_bucket_wait_time_is_zero_when_the_tokens_are_there() -> None:
    """wait_time is 0.0 while the bucket holds the cost, and deficit / rate below it."""
    b = TokenBucket(rate=2.0, capacity=10.0, now=0.0, tokens=5.0)
    assert b.wait_time(5.0, now=0.0) == 0.0
    assert b.wait_time(1.0, now=0.0) == 0.0
    assert b.wait_time(5.5, now=0.0) == 0.25
    assert b.wait_time(6.0, now=0.0) == 0.5


def test_bucket_try_take() -> None:
    """try_take takes the cost only when it is held, as the docstring's example says."""
    b = TokenBucket(rate=1.0, capacity=2.0, now=0.0)
    assert (b.try_take(2.0, now=0.0), b.try_take(1.0, now=0.5), b.try_take(1.0, now=1.0)) == (
        True,
        False,
        True,
    )
    assert b.tokens(1.0) == 0.0
    assert b.try_take(0.5, now=1.5)
    assert b.tokens(1.5) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.1, 100.0),
    capacity=st.floats(1.0, 1000.0),
    cost=st.floats(0.0, 1000.0),
    later=st.floats(0.0, 100.0),
)
def test_bucket_wait_time_is_exact(rate: float, capacity: float, cost: float, later: float) -> None:
    """Invariant: after ``wait_time(c)`` seconds an empty bucket holds ``c`` (up to float
    rounding) and a hair earlier it does not; a cost above capacity waits forever."""
    b = TokenBucket(rate=rate, capacity=capacity, now=0.0, tokens=0.0)
    wait = b.wait_time(cost, now=later)
    if cost > capacity:
        assert wait == math.inf
        return
    assert wait == max(0.0, cost - min(capacity, rate * later)) / rate
    assert b.tokens(later + wait) >= cost - 1e-9 * max(1.0, cost)


# --------------------------------------------------------------------------- what holds a waiter


async def test_each_limit_is_named_as_what_held_the_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """on_wait hears the limit that held a request: pause, concurrency, rpm or tpm, with
    the exact wait; a request behind another is held by what holds the head."""
    waits: Waits = []

    async def one(mailbox: Mailbox, cost: float = 0.0) -> None:
        (await mailbox.admit(Permit(cost), on_wait=lambda *w: waits.append(w))).release()

    paused = Mailbox("p")

    async def pause(nursery: trio.Nursery) -> None:
        paused.pause_until(2.0)
        await one(paused)

    await serving(paused, pause)

    limited = Mailbox("p", max_concurrency=1)

    async def concurrency(nursery: trio.Nursery) -> None:
        holder = limited.admit_nowait(Permit())
        nursery.start_soon(one, limited)
        await trio.sleep(3.0)
        holder.release()
        await trio.testing.wait_all_tasks_blocked()

    await serving(limited, concurrency)

    rpm = Mailbox("p", rpm=60, rpm_burst=1)

    async def requests(nursery: trio.Nursery) -> None:
        rpm.admit_nowait(Permit()).release()
        await one(rpm)

    await serving(rpm, requests)

    # RPM still holds a whole token (exactly 1.0) while TPM is empty: TPM holds it.
    tpm = Mailbox("p", rpm=60, rpm_burst=2, tpm=60, tpm_burst=10)

    async def tokens(nursery: trio.Nursery) -> None:
        tpm.admit_nowait(Permit(10.0)).release(actual_tokens=10)
        async with trio.open_nursery() as inner:
            inner.start_soon(one, tpm, 5.0)
            await trio.testing.wait_all_tasks_blocked()
            inner.start_soon(one, tpm, 1.0)  # behind the head: held by what holds it

    await serving(tpm, tokens)
    assert waits == [
        (2.0, "pause", "admitted"),
        (3.0, "concurrency", "admitted"),
        (1.0, "rpm", "admitted"),
        (5.0, "tpm", "admitted"),
        (6.0, "tpm", "admitted"),
    ]


# --------------------------------------------------------------------------- the expected wait


async def test_expected_wait_counts_pauses_and_both_buckets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """expected_wait: the pause left, the RPM and TPM refill for everything queued plus
    this request; nothing when the buckets hold enough."""
    await trio.sleep(5.0)
    plain = Mailbox("p", max_concurrency=1)
    assert plain.expected_wait(100.0, now=5.0) == 0.0
    plain.pause_until(7.0)
    assert plain.expected_wait(0.0, now=5.0) == 2.0
    assert plain.expected_wait(0.0, now=8.0) == 0.0  # a pause past is no wait

    m = Mailbox("p", rpm=60, rpm_burst=10, tpm=600, tpm_burst=1000)  # 1 request/s, 10 tokens/s
    assert m.expected_wait(500.0, now=5.0) == 0.0  # the buckets hold plenty: no wait
    m.admit_nowait(Permit(1000.0), now=5.0)
    assert m.expected_wait(50.0, now=5.0) == 5.0  # 50 tokens at 10/s
    assert m.expected_wait(0.0, now=5.0) == 0.0  # 9 requests left in RPM
    for _ in range(9):
        m.admit_nowait(Permit(0.0), now=5.0)
    assert m.expected_wait(0.0, now=5.0) == 1.0  # RPM now empty: one second


async def test_queueing_within_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """A request whose expected wait fits before its deadline queues; one that does not is
    refused at once, counting a pause that ends after now, not before."""
    await trio.sleep(10.0)
    mailbox = Mailbox("p", max_concurrency=1)
    waits: Waits = []

    async def body(nursery: trio.Nursery) -> None:
        holder = mailbox.admit_nowait(Permit())
        # Concurrency is not counted: a 0.5 s deadline still queues.
        with trio.move_on_after(0.5):
            await mailbox.admit(Permit(), on_wait=lambda *w: waits.append(w))
        holder.release()
        assert trio.current_time() == 10.5
        mailbox.pause_until(12.0)  # 1.5 s from now
        with trio.move_on_after(2.0):
            (await mailbox.admit(Permit())).release()
        assert trio.current_time() == 12.0
        mailbox.pause_until(13.0)
        with trio.move_on_after(0.5), pytest.raises(Overloaded, match="deadline"):
            await mailbox.admit(Permit())
        assert trio.current_time() == 12.0

    await serving(mailbox, body)
    assert waits == [(0.5, "concurrency", "cancelled")]


@pytest.mark.parametrize(
    ("make", "cost"),
    [
        (lambda: Mailbox("p", rpm=60, rpm_burst=10, max_concurrency=1), 0.0),
        (lambda: Mailbox("p", tpm=600, tpm_burst=1000, max_concurrency=1), 100.0),
    ],
    ids=["rpm", "tpm"],
)
async def test_full_buckets_never_refuse_a_short_deadline(
    autojump_clock: trio.testing.MockClock, make: Callable[[], Mailbox], cost: float
) -> None:
    """With tokens to spare, a request held only by concurrency queues whatever its
    deadline: the buckets add no wait."""
    mailbox = make()

    async def body(nursery: trio.Nursery) -> None:
        holder = mailbox.admit_nowait(Permit(cost))
        waited = False
        with trio.move_on_after(0.1):
            await mailbox.admit(Permit(cost))
            waited = True
        assert not waited
        assert trio.current_time() == 0.1
        holder.release()

    await serving(mailbox, body)


# --------------------------------------------------------------------------- the caller's now


async def test_try_admit_and_admit_nowait_use_the_callers_now(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``now`` given is the time of the grant and of the bucket arithmetic; omitted, it is
    trio's clock."""
    await trio.sleep(3.0)
    m = Mailbox("p", rpm=60, rpm_burst=1, tpm=600, now=0.0)
    p = m.try_admit(Permit(100.0), now=4.0)
    assert p is not None
    assert p.granted_at == 4.0
    assert m.statistics().tpm_tokens == 500.0
    assert m.try_admit(Permit(), now=4.5) is None  # RPM refills one per second
    q = m.try_admit(Permit())  # trio's now: 3.0, before the grant at 4.0
    assert q is None
    r = m.admit_nowait(Permit(), now=5.0)
    assert r.granted_at == 5.0
    p.release(actual_tokens=100)
    r.release(actual_tokens=0)
    await trio.sleep(100.0)
    s = m.admit_nowait(Permit())
    assert s.granted_at == 103.0


async def test_try_admit_refuses_what_can_never_go(autojump_clock: trio.testing.MockClock) -> None:
    """try_admit raises like admit for a cost above TPM and for a suspended mailbox."""
    m = Mailbox("p", tpm=1000, max_pause=10.0)
    with pytest.raises(Overloaded, match="can never fit"):
        m.try_admit(Permit(1001.0))
    m.pause_until(100.0)
    with pytest.raises(RateLimited):
        m.try_admit(Permit())
    assert m.try_admit(Permit(), now=100.0) is not None


# --------------------------------------------------------------------------- refusals


async def test_refusals_name_the_provider_and_count(autojump_clock: trio.testing.MockClock) -> None:
    """A full queue and a shed request are Overloaded, retryable, naming the provider; each
    refusal counts once."""
    m = Mailbox("openai", max_concurrency=1, max_queue=0)
    m.admit_nowait(Permit())
    with pytest.raises(
        Overloaded, match=r"^\[openai\] the provider cannot take a request right now$"
    ) as shed:
        m.admit_nowait(Permit())
    with pytest.raises(Overloaded, match=r"^\[openai\] the queue is full \(0 waiting\)$") as full:
        await m.admit(Permit())
    for error in (shed.value, full.value):
        assert error.retryable
        assert error.provider == "openai"
    assert m.statistics().refused == 2


# --------------------------------------------------------------------------- reconciliation


async def test_reconciliation_refunds_a_single_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Usage one token under the estimate refunds exactly that token."""
    m = Mailbox("p", tpm=6000)
    m.admit_nowait(Permit(100.0)).release(actual_tokens=99)
    assert m.statistics().tpm_tokens == 5901.0


# --------------------------------------------------------------------------- pauses and suspensions


async def test_a_pause_that_is_over_is_no_pause(autojump_clock: trio.testing.MockClock) -> None:
    """pause_until(now) or earlier, or NaN, changes nothing."""
    await trio.sleep(5.0)
    m = Mailbox("p")
    for when in (5.0, 4.0, math.nan):
        m.pause_until(when)
        assert m.paused_until is None


async def test_a_pause_of_exactly_max_pause_is_a_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A retry-after of max_pause seconds, late in the run, holds the queue; one longer
    suspends."""
    await trio.sleep(100.0)
    m = Mailbox("p", max_pause=30.0)
    m.pause_until(130.0)
    assert (m.paused_until, m.suspended_until) == (130.0, None)
    m.pause_until(130.5)
    assert (m.paused_until, m.suspended_until) == (130.0, 130.5)


async def test_suspension_fails_the_waiting_and_refuses_until_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A pause past max_pause suspends: the waiting fail with RateLimited (not retryable,
    retry_after the time left, counted as refused), new requests too, until it ends."""
    await trio.sleep(10.0)
    m = Mailbox("acme", max_concurrency=1, max_pause=30.0)
    errors: list[RateLimited] = []

    async def waiter() -> None:
        try:
            await m.admit(Permit())
        except RateLimited as exc:
            errors.append(exc)

    async def body(nursery: trio.Nursery) -> None:
        holder = m.admit_nowait(Permit())
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        m.pause_until(110.0)
        await trio.testing.wait_all_tasks_blocked()
        assert m.suspended_until == 110.0
        assert m.suspension == (
            "the provider asked to wait: 100s, longer than max_retry_after (30s), "
            "so the provider is out of routing until then"
        )
        assert m.statistics().refused == 2
        await trio.sleep(40.0)
        with pytest.raises(RateLimited) as info:
            await m.admit(Permit())
        errors.append(info.value)
        # The same end again changes nothing; a later one extends it.
        m.pause_until(110.0, why="again")
        assert m.suspension.startswith("the provider asked to wait: 100s")
        m.pause_until(120.0, why="later")
        assert m.suspension.startswith("later: 70s")
        holder.release()
        await trio.sleep(70.0)
        (await m.admit(Permit())).release()
        assert m.suspended_until is None

    await serving(m, body)
    assert [(e.provider, e.retryable, e.retry_after) for e in errors] == [
        ("acme", False, 100.0),
        ("acme", False, 100.0),
        ("acme", False, 60.0),
    ]
    assert str(errors[0]).startswith("[acme] the provider asked to wait: 100s")
    assert "refused until t=110.000 (100s left)" in str(errors[0])
    assert m.statistics().refused == 3


# --------------------------------------------------------------------------- learn


async def test_learn_lowers_the_rpm_bucket_and_its_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An announced request limit below ours becomes the bucket's capacity and rate
    (limit per minute); remaining_requests clamps what it holds."""
    m = Mailbox("p", rpm=600)
    m.learn(limit_requests=60, remaining_requests=0)
    assert m.statistics().rpm_tokens == 0.0
    assert m.paused_until is None  # nothing left, but no reset given: no pause
    await trio.sleep(1.0)
    assert m.statistics().rpm_tokens == 1.0  # 60 a minute: one a second
    await trio.sleep(100.0)
    assert m.statistics().rpm_tokens == 60.0
    m.learn(remaining_requests=3)
    assert m.statistics().rpm_tokens == 3.0


async def test_learn_lowers_the_tpm_rate(autojump_clock: trio.testing.MockClock) -> None:
    """An announced token limit below ours sets the TPM bucket's rate to limit / 60."""
    m = Mailbox("p", tpm=100_000)
    m.learn(limit_tokens=6000, remaining_tokens=0)
    await trio.sleep(1.0)
    assert m.statistics().tpm_tokens == 100.0


async def test_learn_never_raises_our_rates(autojump_clock: trio.testing.MockClock) -> None:
    """A provider limit equal to (or above) our burst leaves our slower rate alone."""
    m = Mailbox("p", rpm=60, rpm_burst=120, tpm=600, tpm_burst=1200)
    m.learn(limit_requests=120, limit_tokens=1200, remaining_requests=0, remaining_tokens=0)
    await trio.sleep(1.0)
    stats = m.statistics()
    assert (stats.rpm_tokens, stats.tpm_tokens) == (1.0, 10.0)


@pytest.mark.parametrize("remaining", [1, 5])
async def test_learn_pauses_only_when_nothing_is_left(
    autojump_clock: trio.testing.MockClock, remaining: int
) -> None:
    """A reset header pauses only with fewer than one request or token left."""
    m = Mailbox("p", rpm=600, tpm=100_000)
    m.learn(remaining_requests=remaining, reset_requests=10.0)
    m.learn(remaining_tokens=remaining, reset_tokens=20.0)
    assert m.paused_until is None
    m.learn(remaining_tokens=0.5, reset_tokens=20.0)
    assert m.paused_until == 20.0


async def test_learn_a_window_of_65_seconds_pauses(autojump_clock: trio.testing.MockClock) -> None:
    """A reset of up to 65 s is a per-minute window: a pause, even past max_pause."""
    await trio.sleep(1.0)
    m = Mailbox("p", rpm=600, max_pause=30.0)
    m.learn(remaining_requests=0, reset_requests=65.0)
    assert (m.paused_until, m.suspended_until) == (66.0, None)


@pytest.mark.parametrize(
    ("header", "what"), [("requests", "no requests left"), ("tokens", "no tokens left")]
)
async def test_learn_a_longer_window_is_a_retry_after(
    autojump_clock: trio.testing.MockClock, header: str, what: str
) -> None:
    """A reset longer than 65 s is held like a retry-after: a pause within max_pause, a
    suspension past it, saying which budget ran out."""
    await trio.sleep(10.0)
    m = Mailbox("p", rpm=600, tpm=100_000, max_pause=300.0)
    m.learn(**{f"remaining_{header}": 0, f"reset_{header}": 100.0})
    assert (m.paused_until, m.suspended_until) == (110.0, None)
    m.learn(**{f"remaining_{header}": 0, f"reset_{header}": 3600.0})
    assert m.suspended_until == 3610.0
    assert m.suspension.startswith(f"{what} until the rate-limit window resets: 3600s")


# --------------------------------------------------------------------------- admission edges


async def test_the_float_slack_admits_at_the_computed_instant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bucket within 1e-9 of the cost admits (the slack that makes a wake-up computed as
    deficit / rate admit at exactly that time), for RPM and TPM alike."""
    rpm = Mailbox("p", rpm=60, rpm_burst=1, now=0.0)
    rpm.admit_nowait(Permit(), now=0.0)
    assert rpm.try_admit(Permit(), now=1.0 - 1e-9) is not None
    tpm = Mailbox("p", tpm=60, tpm_burst=10, now=0.0)
    tpm.admit_nowait(Permit(10.0), now=0.0)
    assert tpm.try_admit(Permit(1.0 + 1e-9), now=1.0) is not None


async def test_statistics_is_a_full_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    """statistics() reports every counter and limit as it is now."""
    await trio.sleep(1.0)
    m = Mailbox("p", rpm=60, tpm=600, max_concurrency=2, max_queue=7, max_pause=10.0)
    assert m.statistics() == MailboxStatistics(
        queued=0,
        in_flight=0,
        admitted=0,
        refused=0,
        max_concurrency=2,
        max_queue=7,
        rpm_tokens=60.0,
        tpm_tokens=600.0,
        paused_until=None,
        suspended_until=None,
    )
    m.admit_nowait(Permit(100.0))
    m.admit_nowait(Permit(50.0))
    with pytest.raises(Overloaded):
        m.admit_nowait(Permit())
    m.pause_until(3.0)
    m.pause_until(100.0)
    assert m.statistics() == MailboxStatistics(
        queued=0,
        in_flight=2,
        admitted=2,
        refused=1,
        max_concurrency=2,
        max_queue=7,
        rpm_tokens=58.0,
        tpm_tokens=450.0,
        paused_until=3.0,
        suspended_until=100.0,
    )
    assert Mailbox("q").statistics().rpm_tokens is None


async def test_a_pause_ends_cleared(autojump_clock: trio.testing.MockClock) -> None:
    """Once a pause is over and a request went, paused_until is None again."""
    m = Mailbox("p")

    async def body(nursery: trio.Nursery) -> None:
        m.pause_until(2.0)
        (await m.admit(Permit())).release()
        assert trio.current_time() == 2.0
        assert m.paused_until is None

    await serving(m, body)


async def test_a_deadline_exactly_at_the_wait_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An expected wait equal to the time left is refused at once, not retryable, and the
    message says both."""
    await trio.sleep(5.0)
    m = Mailbox("p", rpm=6, rpm_burst=1)  # one per 10 s

    async def body(nursery: trio.Nursery) -> None:
        m.admit_nowait(Permit()).release()
        with trio.move_on_after(10.0), pytest.raises(Overloaded) as info:
            await m.admit(Permit())
        assert trio.current_time() == 5.0
        assert not info.value.retryable
        assert str(info.value) == ("[p] admission would take ~10s but the deadline is in 10s")

    await serving(m, body)


async def test_waiters_behind_a_pause_are_held_by_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two requests queued behind a pause, admitted in one pass when it ends: both were
    held by the pause."""
    m = Mailbox("p")
    waits: Waits = []

    async def body(nursery: trio.Nursery) -> None:
        m.pause_until(2.0)
        await nursery.start(queue_one, m, waits, Permit())
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(queue_one, m, waits, Permit())
        await trio.sleep(3.0)

    await serving(m, body)
    assert waits == [(2.0, "pause", "admitted"), (2.0, "pause", "admitted")]


async def test_queued_cost_counts_in_the_expected_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The cost queued ahead counts in a newcomer's expected wait, and stops counting when
    the request ahead is cancelled or failed."""
    m = Mailbox("p", tpm=600, tpm_burst=1000, max_pause=1.0)  # 10 tokens/s
    waits: Waits = []

    async def body(nursery: trio.Nursery) -> None:
        m.admit_nowait(Permit(1000.0)).release(actual_tokens=1000)
        ahead = trio.CancelScope()
        nursery.start_soon(queue_one_in, ahead)
        await trio.testing.wait_all_tasks_blocked()
        assert m.expected_wait(100.0, now=0.0) == 20.0
        with trio.move_on_after(15.0), pytest.raises(Overloaded, match="deadline"):
            await m.admit(Permit(100.0))
        ahead.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert m.expected_wait(100.0, now=0.0) == 10.0
        # Queued again, then failed by a suspension: nothing stays queued.
        await nursery.start(queue_one, m, waits, Permit(100.0))
        await trio.testing.wait_all_tasks_blocked()
        assert m.expected_wait(100.0, now=0.0) == 20.0
        m.pause_until(5.0)
        await trio.testing.wait_all_tasks_blocked()
        assert m.expected_wait(100.0, now=0.0) == 10.0

    async def queue_one_in(scope: trio.CancelScope) -> None:
        with scope:
            await m.admit(Permit(100.0), on_wait=lambda *w: waits.append(w))

    await serving(m, body)
    assert waits == [(0.0, "tpm", "cancelled"), (0.0, "tpm", "refused")]


async def test_granted_and_cancelled_in_the_same_instant_is_undone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request cancelled while the loop grants it gives the grant back: no slot, no RPM
    or TPM spent, not counted as admitted."""
    m = Mailbox("p", rpm=60, tpm=600, max_concurrency=1)
    waits: Waits = []
    m.admit_nowait(Permit(100.0)).release(actual_tokens=100)
    holder = m.admit_nowait(Permit(100.0))
    permit = Permit(50.0)

    async def cancelled_waiter(scope: trio.CancelScope) -> None:
        with scope:
            await m.admit(permit, on_wait=lambda *w: waits.append(w))

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        nursery.start_soon(cancelled_waiter, scope)
        await trio.testing.wait_all_tasks_blocked()
        before = m.statistics()
        scope.cancel()  # the waiter is woken with Cancelled, but has not run yet
        holder.release(actual_tokens=100)
        m._serve(trio.current_time())  # the loop's pass grants it in the same instant
        assert m.in_flight == 1

    after = m.statistics()
    assert (after.in_flight, after.admitted) == (0, 2)
    assert not permit.held
    assert (after.rpm_tokens, after.tpm_tokens) == (before.rpm_tokens, before.tpm_tokens)
    assert waits == [(0.0, "concurrency", "cancelled")]


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_queue": -1}, "max_queue must be >= 0"),
        ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
    ],
)
async def test_a_mailbox_refuses_impossible_limits(
    autojump_clock: trio.testing.MockClock, kwargs: dict[str, int], message: str
) -> None:
    """A negative queue or a concurrency below one is a ValueError naming the limit; the
    edges (no queue, one at a time) are fine."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        Mailbox("p", **kwargs)  # type: ignore[arg-type]
    m = Mailbox("p", max_queue=0, max_concurrency=1)
    assert (m.statistics().max_queue, m.statistics().max_concurrency) == (0, 1)
    assert (m.name, m.suspension, m.queued, m.in_flight) == ("p", "", 0, 0)


async def test_buckets_start_full_at_the_given_time(autojump_clock: trio.testing.MockClock) -> None:
    """The buckets start full (the burst, by default the per-minute limit) at ``now``, or
    at trio's clock, and refill at limit / 60 per second from there."""
    await trio.sleep(10.0)
    m = Mailbox("p", rpm=120, tpm=6000, rpm_burst=4, now=10.0)
    assert (m.statistics().rpm_tokens, m.statistics().tpm_tokens) == (4.0, 6000.0)
    for _ in range(4):
        m.admit_nowait(Permit(600.0))
    await trio.sleep(1.0)
    assert (m.statistics().rpm_tokens, m.statistics().tpm_tokens) == (2.0, 3700.0)
    later = Mailbox("p", rpm=60)
    later.admit_nowait(Permit())
    await trio.sleep(0.5)
    assert later.statistics().rpm_tokens == 59.5


async def test_the_loop_wakes_at_the_exact_refill(autojump_clock: trio.testing.MockClock) -> None:
    """A request half a token short is admitted half a second later, not on a coarser
    tick; once it is granted its cost no longer counts as queued."""
    m = Mailbox("p", tpm=60, tpm_burst=10)  # 1 token/s

    async def body(nursery: trio.Nursery) -> None:
        m.admit_nowait(Permit(10.0)).release(actual_tokens=10)
        (await m.admit(Permit(0.5))).release(actual_tokens=1)
        assert trio.current_time() == 0.5
        (await m.admit(Permit(5.0))).release(actual_tokens=5)
        assert trio.current_time() == 6.0
        assert m.expected_wait(2.0, now=6.0) == 2.0  # nothing queued ahead any more

    await serving(m, body)


def test_a_permit_starts_empty_and_unheld() -> None:
    """Permit(): no cost, no output budget, not held, not yet granted (granted_at NaN)."""
    p = Permit()
    assert (p.cost, p.output_cost, p.held) == (0.0, 0.0, False)
    assert math.isnan(p.granted_at)
    p.release()  # a no-op before the grant
    assert not p.held


async def test_defaults_and_a_start_time_in_the_past(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The queue holds 1000 by default; a mailbox made with ``now`` earlier than trio's
    clock refills from that ``now``."""
    await trio.sleep(10.0)
    assert Mailbox("p").statistics().max_queue == 1000
    m = Mailbox("p", rpm=60, rpm_burst=1, now=0.0)
    m.admit_nowait(Permit(), now=0.0)
    assert m.try_admit(Permit(), now=1.0) is not None


async def test_a_request_queued_before_the_loop_starts_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests may queue before the actor's loop runs; it serves them when it starts."""
    m = Mailbox("p", rpm=60, rpm_burst=1)
    m.admit_nowait(Permit())
    times: list[float] = []

    async def one() -> None:
        (await m.admit(Permit())).release()
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.5)
        await nursery.start(m.run)
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    assert times == [1.0]


async def test_a_suspension_ends_at_its_instant(autojump_clock: trio.testing.MockClock) -> None:
    """At exactly the end of a suspension the mailbox admits again."""
    m = Mailbox("p", max_pause=1.0)
    m.pause_until(50.0)
    with pytest.raises(RateLimited):
        m.try_admit(Permit(), now=49.999)
    assert m.try_admit(Permit(), now=50.0) is not None
    assert m.suspended_until is None


async def test_rpm_within_the_slack_is_not_what_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With RPM 1e-9 short of a token (within the slack) and TPM empty, TPM is named as
    what holds the request."""
    m = Mailbox("p", rpm=60, rpm_burst=1, tpm=60, tpm_burst=10, now=0.0)
    m.admit_nowait(Permit(10.0), now=0.0)
    waits: Waits = []
    with trio.move_on_after(100.0):
        await m.admit(Permit(2.0), now=1.0 - 1e-9, on_wait=lambda *w: waits.append(w))
    assert [w[1:] for w in waits] == [("tpm", "cancelled")]


async def test_queued_costs_add_up_and_refusals_report_their_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two queued requests both count in a newcomer's expected wait; a queued request
    failed by close() reports the seconds it waited and what held it."""
    await trio.sleep(5.0)
    m = Mailbox("p", tpm=600, tpm_burst=1000)  # 10 tokens/s
    waits: Waits = []

    async def body(nursery: trio.Nursery) -> None:
        m.admit_nowait(Permit(1000.0)).release(actual_tokens=1000)
        await nursery.start(queue_one, m, waits, Permit(100.0))
        await nursery.start(queue_one, m, waits, Permit(100.0))
        await trio.testing.wait_all_tasks_blocked()
        assert m.expected_wait(100.0, now=5.0) == 30.0
        await trio.sleep(1.0)
        m.close(Overloaded("actor crashed", provider="p"))
        await trio.testing.wait_all_tasks_blocked()

    await serving(m, body)
    assert waits == [(1.0, "tpm", "refused"), (1.0, "tpm", "refused")]
