"""The direct path of a shared admission under attack (virtual time): a caller that
found its mailbox idle asks Redis from its own task, and whatever happens while that
question is on the wire — the mailbox switched to local limits, the queue filled behind
it, the loop's own answer about a request that left — nobody behind it goes first, and
no answer is applied to a request it was not about.

A scripted stand-in for the gate (``_ScriptedGate``) answers each question after a
fixed time on the wire; the real gate on a real Redis is tests/test_shared_faults.py.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import Overloaded
from router._limiter import Mailbox, Permit
from router._shared._limits import Decision

#: Virtual seconds each question spends on the wire.
WIRE = 0.01


class _ScriptedGate:
    """A stand-in for ProviderGate: question ``i`` (0-based) is answered after
    :data:`WIRE` with ``answers[i]`` (``granted`` of the batch, hold, retry_after), and
    with everything granted once the script runs out.  ``None`` as an answer: Redis
    failed (the client switched to local limits, as the real gate's client does)."""

    def __init__(
        self,
        answers: list[tuple[int, str, float] | None],
        *,
        tpm_cap: float = 1e9,
        wire: float = WIRE,
    ) -> None:
        self.answers = list(answers)
        self.asked: list[list[float]] = []
        self.undone: list[float] = []
        self.tpm_cap = tpm_cap
        self.wire = wire
        self.mailbox: Mailbox | None = None

    def attach(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        mailbox.share(True, 1)

    async def admit(self, costs: list[float]) -> Decision | None:
        i = len(self.asked)
        self.asked.append(list(costs))
        await trio.sleep(self.wire)
        answer = self.answers[i] if i < len(self.answers) else (len(costs), "", 0.0)
        if answer is None:
            assert self.mailbox is not None
            self.mailbox.share(False, 1)
            return None
        granted, hold, retry = answer
        return Decision(min(granted, len(costs)), hold, retry, [])  # type: ignore[arg-type]

    def release(self, lease: str, tokens: float) -> None:
        pass

    def undo(self, lease: str, cost: float) -> None:
        self.undone.append(cost)

    def pause(self, seconds: float) -> None:
        pass


def _record_grants(mailbox: Mailbox, order: list[int]) -> None:
    """Append each granted permit's ``number`` to ``order`` as the mailbox grants it
    (callers granted at one instant wake in trio's order, not necessarily that one)."""
    grant, grant_shared = mailbox._grant, mailbox._grant_shared

    def record(permit: _Numbered, *args: object) -> _Numbered:
        order.append(permit.number)
        return grant(permit, *args)  # type: ignore[arg-type]

    def record_shared(permit: _Numbered, *args: object) -> _Numbered:
        order.append(permit.number)
        return grant_shared(permit, *args)  # type: ignore[arg-type]

    mailbox._grant = record  # type: ignore[method-assign,assignment]
    mailbox._grant_shared = record_shared  # type: ignore[method-assign,assignment]


def _mailbox(gate: _ScriptedGate, **kw: float) -> Mailbox:
    mailbox = Mailbox("m", rpm=6000, **kw)  # type: ignore[arg-type]
    mailbox.attach(gate)  # type: ignore[arg-type]
    return mailbox


async def test_switch_to_local_mid_question_keeps_fifo(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Invariant (FIFO): the mailbox switches to local limits while the first request's
    own question is on the wire; the request that queued behind it is not granted
    locally before it — the first is granted first, as if it had queued."""
    gate = _ScriptedGate([(0, "rpm", 0.5)])  # the first question: refused
    mailbox = _mailbox(gate)
    granted: list[int] = []
    _record_grants(mailbox, granted)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.run)

        async def one(number: int) -> None:
            permit = await mailbox.admit(_Numbered(number))
            permit.release()

        async with trio.open_nursery() as callers:
            callers.start_soon(one, 1)
            await trio.lowlevel.checkpoint()
            callers.start_soon(one, 2)
            await trio.sleep(WIRE / 2)
            mailbox.share(False, 1)  # another operation found Redis gone
        nursery.cancel_scope.cancel()
    assert granted == [1, 2]
    assert gate.asked == [[1.0]]  # nobody was asked for after the switch


async def test_a_newcomer_after_a_switch_to_local_waits_for_the_question(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Invariant (FIFO): a request arriving after the switch to local limits, while an
    earlier request's own question is still on the wire, is not granted before it (the
    local fast path and ``try_admit`` see the question as the head of the queue)."""
    gate = _ScriptedGate([(1, "", 0.0)])
    mailbox = _mailbox(gate)
    granted: list[int] = []
    _record_grants(mailbox, granted)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.run)

        async def one(number: int) -> None:
            permit = await mailbox.admit(_Numbered(number))
            permit.release()

        async with trio.open_nursery() as callers:
            callers.start_soon(one, 1)
            await trio.sleep(WIRE / 2)
            mailbox.share(False, 1)
            assert mailbox.try_admit(_Numbered(3)) is None
            with pytest.raises(Overloaded):
                mailbox.admit_nowait(_Numbered(4))
            callers.start_soon(one, 2)
        nursery.cancel_scope.cancel()
    assert granted == [1, 2]


async def test_a_refused_direct_asker_is_not_refused_for_a_queue_filled_behind_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Invariant (FIFO): a request refused by Redis on its own question goes to the head
    of the queue even when those who queued behind it meanwhile filled it — it came
    first; it is not the one refused with "the queue is full"."""
    gate = _ScriptedGate([(0, "rpm", 0.05)])
    mailbox = _mailbox(gate, max_queue=1)
    granted: list[int] = []
    _record_grants(mailbox, granted)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.run)

        async def one(number: int) -> None:
            permit = await mailbox.admit(_Numbered(number))
            permit.release()

        async with trio.open_nursery() as callers:
            callers.start_soon(one, 1)
            await trio.lowlevel.checkpoint()
            callers.start_soon(one, 2)  # fills the queue (max_queue=1)
        nursery.cancel_scope.cancel()
    assert granted == [1, 2]


async def test_an_answer_about_a_request_that_left_is_not_applied_to_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The loop asks for the head; the head is cancelled while that question is on the
    wire, and a new request queues; Redis's answer about the one that left (its cost
    can never fit the shared TPM bucket) does not fail the newcomer at the head — it
    is asked for on its own."""
    gate = _ScriptedGate(
        [
            (0, "rpm", 0.02),  # the first request's own question: refused, it queues
            (0, "never", 0.0),  # the loop's question for it: it can never fit
        ]
    )
    mailbox = _mailbox(gate)
    outcome: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.run)

        async def big() -> None:
            with trio.move_on_after(WIRE * 1.5):  # gone while the loop asks for it
                await mailbox.admit(Permit(5.0))

        async def small() -> None:
            try:
                await mailbox.admit(Permit(1.0))
            except Overloaded as exc:
                outcome.append(f"refused: {exc}")
            else:
                outcome.append("granted")

        async def middle() -> None:
            permit = await mailbox.admit(Permit(2.0))  # asks on its own: idle mailbox
            outcome.append("granted")
            permit.release()

        async with trio.open_nursery() as callers:
            callers.start_soon(big)
            await trio.sleep(WIRE * 1.6)  # the loop's question for `big` is on the wire
            assert mailbox.queued == 0
            callers.start_soon(middle)
            await trio.sleep(WIRE * 0.1)
            callers.start_soon(small)  # queues behind `middle`'s question
            await trio.sleep(WIRE * 0.1)
            assert mailbox.queued == 1
        nursery.cancel_scope.cancel()
    assert outcome == ["granted", "granted"]
    assert gate.asked[:3] == [[5.0], [5.0], [2.0]]


@settings(max_examples=60, deadline=None)
@given(
    answers=st.lists(
        st.one_of(
            st.none(),
            st.tuples(
                st.integers(0, 3),
                st.sampled_from(["rpm", "tpm", "concurrency"]),
                st.sampled_from([0.0, 0.005, 0.02]),
            ),
        ),
        max_size=6,
    ),
    arrivals=st.lists(st.sampled_from([0.0, 0.001, 0.005, 0.012]), min_size=1, max_size=5),
    cancel=st.lists(st.sampled_from([math.inf, 0.003, 0.011, 0.025]), min_size=5, max_size=5),
    flips=st.lists(st.sampled_from([0.002, 0.006, 0.015]), max_size=2),
)
def test_grants_follow_arrival_order_whatever_redis_says(
    answers: list[tuple[int, str, float] | None],
    arrivals: list[float],
    cancel: list[float],
    flips: list[float],
) -> None:
    """Invariant: in one process, whatever Redis answers (grants, holds, failures that
    switch to local limits and back), whenever callers are cancelled: grants follow
    arrival order; at the end nothing is in flight, nothing queued, nobody "asking",
    and every caller ended (no stall) — with no deadline of its own but its cancel."""

    async def main() -> None:
        gate = _ScriptedGate(answers)
        mailbox = _mailbox(gate)
        arrived: list[int] = []
        order: list[int] = []
        ended = 0
        _record_grants(mailbox, order)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mailbox.run)

            async def flip(at: float) -> None:
                await trio.sleep(at)
                mailbox.share(not mailbox.shared, 1)

            for at in flips:
                nursery.start_soon(flip, at)

            async def one(i: int, at: float) -> None:
                nonlocal ended
                await trio.sleep(at)
                with trio.move_on_after(cancel[i]):
                    arrived.append(i)  # no schedule point from here into admit
                    try:
                        permit = await mailbox.admit(_Numbered(i))
                    except Overloaded:
                        pass  # refused (a hold past its deadline): not a grant
                    else:
                        permit.release()
                ended += 1

            async with trio.open_nursery() as callers:
                for i, at in enumerate(arrivals):
                    callers.start_soon(one, i, at)
            stats = mailbox.statistics()
            assert (stats.queued, stats.in_flight) == (0, 0)
            assert not mailbox._asking
            nursery.cancel_scope.cancel()
        assert ended == len(arrivals)
        rank = {i: n for n, i in enumerate(arrived)}
        assert [rank[i] for i in order] == sorted(rank[i] for i in order), (arrived, order)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class _Numbered(Permit):
    """A permit that knows which caller made it."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        super().__init__(1.0)
        self.number = number
