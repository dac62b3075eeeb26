"""Streams: the race to a first content event, and the one stream the caller reads.

``router.stream(request)`` returns a :class:`StreamContext`.  Entering it races the
request: each attempt opens a stream and reads it up to its first content event (the
commit point, :func:`open_committed`); until then a failing target is replaced by the
next one, invisibly to the caller.  The winner's stream, with the events it buffered,
becomes the :class:`RouterStream` the caller reads; after the commit a failure is
:class:`~providers.StreamInterrupted`.  Leaving the block closes the stream (and its
connection), settles its spend and reports the request's end.
"""

from __future__ import annotations

from collections import deque
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
import trio

from providers import Attempt, ChatRequest, ChatResponse, Done, StreamEvent, TextDelta
from providers._tokens import encoding_for_model
from providers._types import is_content_event

from ._actor import ActorStream, ProviderActor
from ._policy import Candidate, Needs, cost_of
from ._race import AttemptRecord, Race
from ._spend import Charge

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ._router import Router

__all__ = ["RouterStream", "StreamContext", "same_count"]


def same_count(needs: Needs, request: ChatRequest, sent: ChatRequest) -> int | None:
    """The policy's prompt count, when counting ``sent`` would give the same number.

    Counting is by the model's encoding (exact for OpenAI models, else the estimate):
    when the target's model counts like the requested one, the actor need not count again.
    """
    if encoding_for_model(sent.model) == encoding_for_model(request.model):
        return needs.input_tokens
    return None


_Opened: TypeAlias = tuple[AsyncExitStack, ActorStream, list[StreamEvent]]


async def open_committed(
    actor: ProviderActor,
    request: ChatRequest,
    record: AttemptRecord,
    *,
    nowait: bool,
    prompt_tokens: int | None = None,
) -> _Opened:
    """Open a stream and read it up to its first content event (the commit point)."""
    stack = AsyncExitStack()
    try:
        events = await stack.enter_async_context(
            actor.stream(request, trace=record, nowait=nowait, prompt_tokens=prompt_tokens)
        )
        buffered: list[StreamEvent] = []
        while True:
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                break
            buffered.append(event)
            if is_content_event(event) or isinstance(event, Done):
                break
    except BaseException as exc:
        if not await stack.__aexit__(type(exc), exc, exc.__traceback__):
            raise
        raise  # pragma: no cover - nothing in the stack suppresses
    return stack, events, buffered


async def close_opened(opened: _Opened, record: AttemptRecord) -> None:
    try:
        await opened[0].aclose()
    finally:
        charge = record.charge
        if isinstance(charge, Charge):
            charge.settle(record, answered=record.usage is not None)


class StreamContext:
    """What ``router.stream(request)`` returns: enter it with ``async with``, once.

    ``__aenter__`` races the request to its first content event and returns the
    :class:`RouterStream`; ``__aexit__`` closes the winner's stream, settles its spend
    and reports the request's end.  It is a plain class rather than an
    ``asynccontextmanager`` generator so that a mistaken ``async for`` or ``await`` on it
    gets a ``TypeError`` saying how to use it, at no cost to the hot path (one coroutine
    per enter and exit, one fewer generator frame than before).
    """

    __slots__ = (
        "_entered",
        "_nowait",
        "_observed",
        "_race",
        "_request",
        "_routed",
        "_router",
        "_stack",
        "_t0",
        "_winner",
    )

    def __init__(self, router: Router, request: ChatRequest, nowait: bool) -> None:
        self._router = router
        self._request = request
        self._nowait = nowait
        self._entered = False

    def __repr__(self) -> str:
        return f"<router.stream({self._request.model!r}): use it with `async with`>"

    if not TYPE_CHECKING:  # to a type checker these stay absent, so it flags the misuse

        def __aiter__(self):
            raise TypeError(_STREAM_USAGE.format(wrong="is not an async iterator"))

        def __await__(self):
            raise TypeError(_STREAM_USAGE.format(wrong="cannot be awaited"))

    async def __aenter__(self) -> RouterStream:
        if self._entered:
            raise RuntimeError(
                "a stream's `async with` block can be entered once; "
                "call router.stream(request) again for another"
            )
        request = self._request
        router = self._router
        nowait = self._nowait
        self._entered = True
        needs = Needs.of(request, streaming=True, default_max_tokens=router._default_max_tokens)

        def call(
            actor: ProviderActor, candidate: Candidate, record: AttemptRecord
        ) -> Coroutine[Any, Any, _Opened]:
            sent = msgspec.structs.replace(request, model=candidate.model)
            return open_committed(
                actor, sent, record, nowait=nowait, prompt_tokens=same_count(needs, request, sent)
            )

        opened, winner, race, t0, observed = await router._requests.run(
            request.model, needs, call, request=request, discard=close_opened
        )
        stack, events, buffered = opened
        routed = RouterStream(
            events,
            buffered,
            winner=winner,
            race=race,
            t0=t0,
            request_id=race.request_id,
            collect=observed is not None,
        )
        self._stack = stack
        self._routed = routed
        self._winner = winner
        self._race = race
        self._t0 = t0
        self._observed = observed
        return routed

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        winner = self._winner
        error = exc
        try:
            suppressed = bool(await self._stack.__aexit__(exc_type, exc, tb))
            if suppressed:
                error = None
            return suppressed
        except BaseException as raised:
            error = raised
            raise
        finally:
            charge = winner.charge
            if isinstance(charge, Charge):
                charge.settle(winner, answered=winner.usage is not None)
            observed = self._observed
            if observed is not None:
                observed.stream_finished(self._routed, winner, self._race.trace(self._t0), error)


_STREAM_USAGE = (
    "router.stream(request) {wrong}: it is an async context manager.  Write\n"
    "    async with router.stream(request) as events:\n"
    "        async for event in events:\n"
    "            ...\n"
    "(leaving the block closes the stream and its connection)"
)


class RouterStream:
    """The committed stream the caller reads: one provider's events, start to end.

    ``provider`` is the provider streaming; ``attempts`` the race's trace so far (the
    final one is on the :class:`~providers.Done` event's response); ``response`` the
    whole answer once the stream is done; ``request_id`` the router's id of the request.
    """

    __slots__ = (
        "_buffered",
        "_events",
        "_race",
        "_t0",
        "_texts",
        "_winner",
        "provider",
        "request_id",
        "response",
    )

    def __init__(
        self,
        events: ActorStream,
        buffered: list[StreamEvent],
        *,
        winner: AttemptRecord,
        race: Race[Any],
        t0: float,
        request_id: str = "",
        collect: bool = False,
    ) -> None:
        self._events = events
        self._buffered = deque(buffered)
        self._winner = winner
        self._race = race
        self._t0 = t0
        self.provider = winner.candidate.provider
        #: The router's id of this request (as in its events and audit record).
        self.request_id = request_id
        self.response: ChatResponse | None = None
        # The text delivered, kept only while someone listens to events (for the
        # audit record of a stream that ends without its Done event).
        self._texts: list[str] | None = [] if collect else None

    @property
    def attempts(self) -> list[Attempt]:
        """Every target the race tried, as it stands."""
        return self._race.trace(self._t0)

    def __aiter__(self) -> RouterStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._buffered:
            event = self._buffered.popleft()
            await trio.lowlevel.checkpoint()
        else:
            event = await self._events.__anext__()
        texts = self._texts
        if texts is not None and isinstance(event, TextDelta):
            texts.append(event.text)
        if isinstance(event, Done):
            response = event.response
            self._winner.usage = response.usage
            cost = response.cost
            if cost is None:
                cost = cost_of(self._winner.candidate, response.usage)
            self._winner.cost = cost  # the trace shows what the winner cost, too
            response = msgspec.structs.replace(response, attempts=self.attempts, cost=cost)
            self.response = response
            event = Done(response=response)
        return event
