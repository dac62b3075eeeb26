"""Admission: token buckets, FIFO queue, concurrency, pauses, refusals — on virtual time."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import Overloaded
from router._limiter import Mailbox, Permit, TokenBucket


async def run_mailbox(mailbox: Mailbox, body: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(mailbox.run)
        await body(nursery)
        nursery.cancel_scope.cancel()


async def take_at(
    mailbox: Mailbox,
    log: list[tuple[str, float]],
    name: str,
    cost: float = 0.0,
    hold: float = 0.0,
    output_cost: float = 0.0,
) -> None:
    permit = await mailbox.admit(Permit(cost, output_cost))
    log.append((name, trio.current_time()))
    await trio.sleep(hold)
    permit.release()


# --------------------------------------------------------------------------- the pure bucket


def test_bucket_refills_continuously_and_caps_at_capacity() -> None:
    """tokens(t) = min(capacity, tokens(t0) + rate·(t - t0))."""
    b = TokenBucket(rate=2.0, capacity=10.0, now=0.0, tokens=0.0)
    assert b.tokens(1.5) == 3.0
    assert b.tokens(100.0) == 10.0
    assert b.wait_time(11.0, 100.0) == math.inf
    b.take(14.0, 100.0)
    assert b.tokens(100.0) == -4.0
    assert b.wait_time(2.0, 100.0) == 3.0


# --------------------------------------------------------------------------- virtual-time scenarios


async def test_rpm_burst_then_steady_rate(autojump_clock: trio.testing.MockClock) -> None:
    """RPM 60 with burst 2: two at once, then one per second, in arrival order."""
    mailbox = Mailbox("p", rpm=60, rpm_burst=2)
    log: list[tuple[str, float]] = []

    async def body(nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as inner:
            for i in range(5):
                inner.start_soon(take_at, mailbox, log, f"r{i}")
                await trio.testing.wait_all_tasks_blocked()

    await run_mailbox(mailbox, body)
    assert log == [("r0", 0.0), ("r1", 0.0), ("r2", 1.0), ("r3", 2.0), ("r4", 3.0)]


async def test_tpm_admits_as_tokens_refill(autojump_clock: trio.testing.MockClock) -> None:
    """TPM 600 (10 tokens/s, burst 600): 300-token requests go at 0, 0, 30, 60."""
    mailbox = Mailbox("p", tpm=600)
    log: list[tuple[str, float]] = []

    async def body(nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as inner:
            for i in range(4):
                inner.start_soon(take_at, mailbox, log, f"r{i}", 300.0)
                await trio.testing.wait_all_tasks_blocked()

    await run_mailbox(mailbox, body)
    assert log == [("r0", 0.0), ("r1", 0.0), ("r2", 30.0), ("r3", 60.0)]


async def test_fifo_big_head_blocks_small_followers(autojump_clock: trio.testing.MockClock) -> None:
    """Arrival order is admission order: a small request never overtakes a big queued one."""
    mailbox = Mailbox("p", tpm=60, tpm_burst=10)  # 1 token/s
    log: list[tuple[str, float]] = []

    async def body(nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as inner:
            for name, cost in [("a", 10.0), ("big", 8.0), ("small", 1.0)]:
                inner.start_soon(take_at, mailbox, log, name, cost)
                await trio.testing.wait_all_tasks_blocked()

    await run_mailbox(mailbox, body)
    assert log == [("a", 0.0), ("big", 8.0), ("small", 9.0)]


async def test_concurrency_limit(autojump_clock: trio.testing.MockClock) -> None:
    """max_concurrency 2 with 5 s holds: admitted at 0, 0, 5, 5, 10."""
    mailbox = Mailbox("p", max_concurrency=2)
    log: list[tuple[str, float]] = []

    async def body(nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as inner:
            for i in range(5):
                inner.start_soon(take_at, mailbox, log, f"r{i}", 0.0, 5.0)
                await trio.testing.wait_all_tasks_blocked()

    await run_mailbox(mailbox, body)
    assert [t for _, t in log] == [0.0, 0.0, 5.0, 5.0, 10.0]


async def test_full_queue_is_refused_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """With the queue full, a new request gets Overloaded immediately, without waiting."""
    mailbox = Mailbox("p", max_concurrency=1, max_queue=1)
    log: list[tuple[str, float]] = []

    async def body(nursery: trio.Nursery) -> None:
        nursery.start_soon(take_at, mailbox, log, "holder", 0.0, 100.0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take_at, mailbox, log, "queued")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Overloaded, match="queue is full"):
            await mailbox.admit(Permit())
        assert trio.current_time() == 0.0
        assert mailbox.statistics().refused == 1

    await run_mailbox(mailbox, body)


async def test_cost_that_can_never_fit_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    """A request bigger than the TPM bucket is refused at once and is not retryable here."""
    mailbox = Mailbox("p", tpm=1000)

    async def body(nursery: trio.Nursery) -> None:
        with pytest.raises(Overloaded, match="can never fit") as info:
            await mailbox.admit(Permit(1001.0))
        assert not info.value.retryable

    await run_mailbox(mailbox, body)


async def test_wait_beyond_deadline_is_refused_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Expected wait (10 s) beyond the caller's deadline (2 s) → Overloaded at t=0."""
    mailbox = Mailbox("p", rpm=6, rpm_burst=1)  # one per 10 s

    async def body(nursery: trio.Nursery) -> None:
        (await mailbox.admit(Permit())).release()
        with trio.move_on_after(2.0), pytest.raises(Overloaded, match="deadline"):
            await mailbox.admit(Permit())
        assert trio.current_time() == 0.0
        with trio.move_on_after(11.0):
            (await mailbox.admit(Permit())).release()
        assert trio.current_time() == 10.0

    await run_mailbox(mailbox, body)


async def test_cancel_while_queued_frees_the_slot(autojump_clock: trio.testing.MockClock) -> None:
    """A request cancelled in the queue leaves no trace: the next one takes its turn, uncharged."""
    mailbox = Mailbox("p", tpm=60, tpm_burst=10)
    log: list[tuple[str, float]] = []

    async def body(nursery: trio.Nursery) -> None:
        (await mailbox.admit(Permit(10.0))).release(actual_tokens=10)

        async def cancel_at_3(scope: trio.CancelScope) -> None:
            await trio.sleep(3.0)
            scope.cancel()

        # Cancelled from outside (not a deadline, which would be refused up front).
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_at_3, scope)
            await mailbox.admit(Permit(5.0))  # would wait until t=5
        assert trio.current_time() == 3.0
        assert mailbox.statistics().queued == 0
        await take_at(mailbox, log, "next", 4.0)

    await run_mailbox(mailbox, body)
    assert log == [("next", 4.0)]


async def test_retry_after_pause(autojump_clock: trio.testing.MockClock) -> None:
    """pause_until holds every admission until then; a shorter later pause does not shorten it."""
    mailbox = Mailbox("p")
    log: list[tuple[str, float]] = []

    async def body(nursery: trio.Nursery) -> None:
        mailbox.pause_until(10.0)
        mailbox.pause_until(4.0)
        await take_at(mailbox, log, "a")

    await run_mailbox(mailbox, body)
    assert log == [("a", 10.0)]


async def test_learned_headers_lower_the_bucket(autojump_clock: trio.testing.MockClock) -> None:
    """remaining=0 with a reset in 6 s pauses; a lower announced limit shrinks the bucket."""
    mailbox = Mailbox("p", rpm=600, tpm=100_000)
    log: list[tuple[str, float]] = []

    async def body(nursery: trio.Nursery) -> None:
        mailbox.learn(remaining_requests=0, reset_requests=6.0, limit_tokens=60_000)
        stats = mailbox.statistics()
        assert stats.tpm_tokens == 60_000
        await take_at(mailbox, log, "a")
        mailbox.learn(remaining_tokens=100)
        assert mailbox.statistics().tpm_tokens == 100

    await run_mailbox(mailbox, body)
    assert log == [("a", 6.0)]


async def test_reconciliation_rule(autojump_clock: trio.testing.MockClock) -> None:
    """Actual usage corrects TPM; without usage the output estimate is refunded, input kept."""
    mailbox = Mailbox("p", tpm=10_000)

    async def body(nursery: trio.Nursery) -> None:
        p = await mailbox.admit(Permit(1000.0, output_cost=800.0))
        assert mailbox.statistics().tpm_tokens == 9000
        p.release(actual_tokens=300)
        assert mailbox.statistics().tpm_tokens == 9700
        p.release(actual_tokens=0)  # idempotent
        assert mailbox.statistics().tpm_tokens == 9700
        p = await mailbox.admit(Permit(1000.0, output_cost=800.0))
        p.release()
        assert mailbox.statistics().tpm_tokens == 9500
        p = await mailbox.admit(Permit(100.0, output_cost=50.0))
        p.release(actual_tokens=600)  # used more than estimated: the extra 500 is debited
        assert mailbox.statistics().tpm_tokens == 8900

    await run_mailbox(mailbox, body)


async def test_admit_nowait_sheds_load(autojump_clock: trio.testing.MockClock) -> None:
    """admit_nowait admits at once or raises Overloaded; it never queues."""
    mailbox = Mailbox("p", max_concurrency=1)
    first = mailbox.admit_nowait(Permit())
    with pytest.raises(Overloaded):
        mailbox.admit_nowait(Permit())
    first.release()
    mailbox.admit_nowait(Permit()).release()


async def test_fail_waiting_and_close(autojump_clock: trio.testing.MockClock) -> None:
    """A crash fails every queued request with the given error; a closed mailbox refuses."""
    mailbox = Mailbox("p", max_concurrency=1)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await mailbox.admit(Permit())
        except Overloaded as exc:
            errors.append(exc)

    async def body(nursery: trio.Nursery) -> None:
        holder = await mailbox.admit(Permit())
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.close(Overloaded("actor crashed", provider="p"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(errors) == 2
        holder.release()
        with pytest.raises(Overloaded, match="crashed"):
            await mailbox.admit(Permit())

    await run_mailbox(mailbox, body)


# --------------------------------------------------------------------------- properties


@settings(max_examples=80, deadline=None)
@given(
    rate_per_min=st.integers(6, 600),
    burst=st.integers(1, 20),
    arrivals=st.lists(
        st.tuples(st.floats(0, 5), st.integers(1, 20), st.floats(0, 3)), min_size=1, max_size=25
    ),
    concurrency=st.none() | st.integers(1, 4),
)
def test_limiter_invariants(
    rate_per_min: int,
    burst: int,
    arrivals: list[tuple[float, int, float]],
    concurrency: int | None,
) -> None:
    """Invariants: in every window [t_i, t_j], admitted cost ≤ rate·(t_j - t_i) + burst;
    admission order is arrival order; concurrency never exceeds the limit; everyone that
    fits is eventually admitted (no starvation)."""
    capacity = max(burst, 20)  # every cost fits, so nobody is refused
    rate = rate_per_min / 60.0
    admitted: list[tuple[int, float, int]] = []
    in_flight = 0
    peak = 0

    async def one(i: int, cost: int, hold: float, mailbox: Mailbox) -> None:
        nonlocal in_flight, peak
        permit: Permit = await mailbox.admit(Permit(float(cost)))
        admitted.append((i, trio.current_time(), cost))
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(hold)
        in_flight -= 1
        permit.release(actual_tokens=cost)

    async def main() -> None:
        mailbox = Mailbox(
            "p", tpm=rate_per_min, tpm_burst=capacity, max_concurrency=concurrency, max_queue=100
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(mailbox.run)
            async with trio.open_nursery() as clients:
                for i, (gap, cost, hold) in enumerate(arrivals):
                    await trio.sleep(gap)
                    clients.start_soon(one, i, cost, hold, mailbox)
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert [i for i, _, _ in admitted] == list(range(len(arrivals)))
    for a in range(len(admitted)):
        total = 0
        for b in range(a, len(admitted)):
            total += admitted[b][2]
            window = admitted[b][1] - admitted[a][1]
            assert total <= rate * window + capacity + 1e-6
    if concurrency is not None:
        assert peak <= concurrency
