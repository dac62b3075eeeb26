"""One request, from the caller's call to its answer: the router's request pipeline.

:meth:`Requests.run` is what ``complete``, ``structured``, ``stream`` and ``embed`` share:
it names the request (its id), makes its events while someone listens, resolves and
plans it (:mod:`router._routes`), refuses it at once when no target fits a spend cap
(:mod:`router._spend`), races the plan (:class:`~router._attempt.RequestRace`, on
:mod:`router._race`'s one driver) and counts how it ended.  :func:`answered` puts the
trace and the cost on a whole answer and reports it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import trio

from providers import (
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    InvalidRequest,
    LLMError,
    RouterClosed,
)

from ._actor import ProviderActor
from ._attempt import Call, RequestRace, Targets
from ._events import EventHub
from ._policy import Needs
from ._race import AttemptRecord
from ._request_events import RequestEvents
from ._routes import Routes
from ._spend import Spend
from ._statistics import Counters

__all__ = ["Requests", "answered", "embedding_inputs"]

T = TypeVar("T")
R = TypeVar("R", ChatResponse, EmbeddingResponse)


class Requests:
    """The router's request pipeline and the state it runs on: made once per router."""

    __slots__ = (
        "_hub",
        "_id_prefix",
        "_now",
        "_sequence",
        "_targets",
        "closed",
        "counts",
        "routes",
        "spend",
    )

    def __init__(
        self,
        actors: Mapping[str, ProviderActor],
        routes: Routes,
        spend: Spend,
        counts: Counters,
        hub: EventHub,
        rng: random.Random,
        clock: Callable[[], float],
        id_prefix: str,
    ) -> None:
        self.routes = routes
        self.spend = spend
        self.counts = counts
        self._hub = hub
        self._now = clock
        self._id_prefix = id_prefix
        self._sequence = 0
        self._targets = Targets(actors, spend, counts, rng, clock, id_prefix)
        #: Set when the router closes: every later request raises RouterClosed.
        self.closed = False

    async def run(
        self,
        model: str,
        needs: Needs,
        call: Call[T],
        *,
        request: ChatRequest | None = None,
        inputs: Sequence[str] | None = None,
        discard: Callable[[T, AttemptRecord], Awaitable[None]] | None = None,
    ) -> tuple[T, AttemptRecord, RequestRace[T], float, RequestEvents | None]:
        """Plan and race one request; return (result, winner, race, start time, events).

        ``events`` is ``None`` unless someone listens.  When the request fails this
        emits its ``RequestFinished``; when it succeeds, the caller does (with the
        final answer, or when its stream ends).
        """
        if self.closed:
            raise RouterClosed("the router is closed: its `async with` block has exited")
        t0 = self._now()
        self._sequence += 1
        if request is not None and request.metadata and request.metadata.get("request_id"):
            request_id = request.metadata["request_id"]
        else:
            request_id = f"{self._id_prefix}-{self._sequence}"
        events: RequestEvents | None = None
        if self._hub.listeners:
            events = RequestEvents(
                self._hub.emit,
                request_id,
                model,
                "embeddings" if needs.embeddings else "chat",
                needs.streaming,
                t0,
                request,
                None if inputs is None else list(inputs),
            )
            events.started()
        counts = self.counts
        race: RequestRace[T] | None = None
        try:
            routes = self.routes
            route = routes.route(model)
            plan = routes.plan_for(route, needs, t0)
            spend = self.spend
            if not plan.targets:
                spend.refuse_empty(model, plan, request_id, events)
                plan.raise_if_empty(model)
            if spend.budget is not None or route.spend_budget is not None:
                spend.check(route, plan, needs, t0, request_id, events)
            counts.requests += 1
            if plan.panic or route.panicking:
                routes.panic(route, plan, request_id)
            try:
                # A request made in a scope that is already cancelled is cancelled, not
                # refused for lack of time.
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                counts.cancelled += 1
                raise
            race = RequestRace(
                self._targets,
                route,
                plan,
                needs,
                call,
                now=t0,
                sequence=self._sequence,
                request_id=request_id,
                events=events,
                discard=discard,
            )
            try:
                result, winner = await race.run()
            except LLMError as exc:
                counts.failed += 1
                exc.attempts = tuple(race.trace(t0))
                raise
            except BaseException:
                counts.cancelled += 1
                raise
            finally:
                counts.hedges += race.hedges
                counts.fallbacks += race.fallbacks
                for r in race.records:
                    if r.outcome == "failed" or r.outcome == "cancelled":
                        counts.wasted_tokens += r.sent_tokens
        except BaseException as exc:
            if events is not None:
                events.failed(exc, [] if race is None else race.trace(t0))
            if isinstance(exc, LLMError):
                # Every call is a schedule point, as trio's own operations are, also when
                # it fails before reaching any I/O (an invalid request, no route): a
                # loop of failing calls must not starve the other tasks.
                await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        counts.succeeded += 1
        if winner.kind == "hedge":
            counts.hedge_wins += 1
        return result, winner, race, t0, events


def answered(
    response: R,
    winner: AttemptRecord,
    race: RequestRace[Any],
    t0: float,
    events: RequestEvents | None,
) -> R:
    """The answer of a request that succeeded, with its trace and cost; its
    ``RequestFinished`` is emitted (``complete``, ``structured`` and ``embed`` alike)."""
    response = msgspec.structs.replace(
        response,
        attempts=race.trace(t0),
        # The winner's cost was settled from this answer's usage.
        cost=response.cost if response.cost is not None else winner.cost,
    )
    if events is not None:
        events.succeeded(winner, response.attempts, response, response.cost)
    return response


def embedding_inputs(inputs: Sequence[str], dimensions: int | None) -> list[str]:
    """``inputs`` as a list, once (a generator serves every attempt), or InvalidRequest:
    the caller's mistake, refused before any attempt, never a provider's failure."""
    if isinstance(inputs, (str, bytes)):
        raise InvalidRequest("inputs is a list of texts to embed, not one text: pass [text]")
    try:
        texts = list(inputs)
    except TypeError:
        raise InvalidRequest(f"inputs must be a list of str, got {type(inputs).__name__}") from None
    if not texts:
        raise InvalidRequest("an embedding request needs at least one input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidRequest(f"inputs[{i}] must be a str, got {type(text).__name__}")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions <= 0
    ):
        raise InvalidRequest(f"dimensions must be a positive int, got {dimensions!r}")
    return texts
