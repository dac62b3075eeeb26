"""An in-process provider: scripted, rule-based or echoing answers on trio's clock.

:class:`MockProvider` satisfies the :class:`~providers.Provider` protocol without any
HTTP.  Users test their own code with it, the router's virtual-time tests race it, the
simulator drives it and the benchmarks measure the router's own overhead against it, so
a call costs little more than building its response: no tasks, no regex compiles, no
deep copies.

Where an answer comes from, first hit wins (each can be replaced part-way through a test
with :meth:`MockProvider.script`, :meth:`~MockProvider.set_rules` and
:meth:`~MockProvider.set_default`):

=============  ===========================================================================
``responses``  the script: one item per chat call, consumed in order
``rules``      ``(pattern, response)`` pairs matched against the last user message
``default``    echo (``"echo: " + last user text``; for a ``json_schema`` response format,
               a JSON value that fits the schema), a fixed response, or a function
=============  ===========================================================================

When things happen, for a call started at ``t0`` with ``L = provider.latency +
response.latency``, ``c = response.chunk_latency`` and ``n`` stream chunks (a *chunk* is
any event before the usage trailer: a reasoning or text delta, or a tool-call start,
argument fragment or end):

=====================================  ====================================================
``complete()`` returns or raises       ``t0 + L``
``stream()`` enters                    ``t0`` (an upfront ``error`` raises here, at ``t0 + L``)
chunk ``i`` (from 0) is available      ``t0 + L + i*c``
``UsageEvent`` and ``Done``            ``t0 + L + n*c``
``error_after_chunks=k`` raises        ``t0 + L + min(k, n)*c``
=====================================  ====================================================

Stream times are fixed when the stream opens, as a server sends regardless of its reader:
a slow reader finds the events that are due already buffered.  Only trio's clock is read,
so under ``autojump_clock`` every one of these times is exact.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypeAlias

import msgspec
import trio

from ._base import EventStream
from ._errors import ConnectionFailed, LLMError, ServerError, StreamInterrupted, UnsupportedFeature
from ._types import (
    Capabilities,
    ChatRequest,
    ChatResponse,
    Done,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    ModelInfo,
    ReasoningDelta,
    StreamAccumulator,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
    validate_request,
)

__all__ = ["MockCall", "MockProvider", "MockResponse"]

# A word with the whitespace before it; trailing whitespace is added to the last word.
_WORD = re.compile(r"\s*\S+")


class MockResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One scripted answer: its content, its timing and the failure to inject.

    Attributes:
        text: The answer's text.
        tool_calls: Tool calls to make.  A call whose ``id`` is ``""`` gets a unique
            one per answer (``"call_<n>_<index>"``, where ``mock-<n>`` is the response id).
        reasoning: Visible thinking, streamed before the text.
        error: Raised instead of answering, after ``latency`` (a fresh copy each time,
            see :class:`MockProvider`).  From ``stream()`` it is raised on entering,
            like an HTTP error status, unless ``error_after_chunks`` is set.
        latency: Seconds before the answer, or before the first stream event; the
            provider's own ``latency`` is added.  ``math.inf`` hangs until cancelled.
        chunk_latency: Seconds between stream chunks (and from the last chunk to the
            usage trailer); ``math.inf`` stalls the stream after its first chunk.
            ``complete()`` ignores it.
        chunk_words: Words per text or reasoning delta, and per tool-argument fragment;
            whitespace is kept, so the deltas concatenate to the exact text.
        error_after_chunks: Make the stream fail after this many chunks: with
            :class:`~providers.StreamInterrupted` (caused by ``error``, or by a
            :class:`~providers.ServerError` when there is none) if content was
            delivered, with that error itself at 0 chunks.  ``complete()`` raises the
            error itself after ``latency``.
        finish_reason: ``None`` means ``"tool_calls"`` when there are tool calls, else
            ``"stop"``.
        usage: ``None`` means estimated: input is the characters of all messages / 4,
            output the words of the text, reasoning and tool arguments (each at least
            1); ``reasoning_tokens`` the words of the reasoning.

    Example::

        MockResponse(text="Paris is lovely.", latency=0.4, chunk_latency=0.05)
        MockResponse.tool_call("get_weather", {"city": "Paris"})
        MockResponse(text="half an answer", error=Overloaded("busy"), error_after_chunks=2)
    """

    text: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    reasoning: str | None = None
    error: LLMError | None = None
    latency: float = 0.0
    chunk_latency: float = 0.0
    chunk_words: int = 1
    error_after_chunks: int | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None

    def __post_init__(self) -> None:
        if not self.latency >= 0.0 or not self.chunk_latency >= 0.0:
            raise ValueError("`latency` and `chunk_latency` must be non-negative seconds")
        if self.chunk_words < 1:
            raise ValueError(f"`chunk_words` must be at least 1, got {self.chunk_words}")
        if self.error_after_chunks is not None and self.error_after_chunks < 0:
            raise ValueError(
                f"`error_after_chunks` must be non-negative, got {self.error_after_chunks}"
            )
        if self.error is not None and not isinstance(self.error, LLMError):
            raise TypeError(
                f"`error` must be an LLMError (providers raise nothing else), "
                f"got {type(self.error).__name__}"
            )

    @classmethod
    def tool_call(
        cls,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        text: str = "",
        latency: float = 0.0,
        chunk_latency: float = 0.0,
    ) -> MockResponse:
        """An answer that calls one tool (``id=None``: a unique id per answer).

        Example::

            MockResponse.tool_call("get_weather", {"city": "Paris"}, id="call_1")
        """
        call = ToolCall(id=id or "", name=name, arguments=arguments or {})
        return cls(text=text, tool_calls=[call], latency=latency, chunk_latency=chunk_latency)


#: What a script item, a rule or a default may be: an answer, a text answer, or an error.
_Reply: TypeAlias = MockResponse | str | LLMError
#: A rule's pattern: a substring, a compiled regex (``search``), or a request predicate.
_Pattern: TypeAlias = str | re.Pattern[str] | Callable[[ChatRequest], bool]
_Matcher: TypeAlias = Callable[[ChatRequest, str], bool]

_Outcome: TypeAlias = Literal["ok", "error", "cancelled", "pending"]


class MockCall(msgspec.Struct, kw_only=True):
    """The record of one call, updated in place while it runs.

    Attributes:
        method: ``"complete"``, ``"stream"`` or ``"embed"``.
        request: What the caller sent.
        started_at: ``trio.current_time()`` when the call began.
        ended_at: When it returned, raised, was cancelled, or (a stream) delivered
            ``Done``; ``None`` while pending.
        outcome: ``"pending"``, then ``"ok"``, ``"error"`` (``error`` says which) or
            ``"cancelled"`` (trio cancelled it, or a stream was closed before ``Done``).
        error: The error the caller saw.
        response: The answer (a stream's is the one in ``Done``).

    Example::

        call = provider.calls[-1]
        assert (call.outcome, call.ended_at) == ("cancelled", 1.0)
    """

    method: Literal["complete", "stream", "embed"]
    request: ChatRequest | EmbeddingRequest
    started_at: float
    ended_at: float | None = None
    outcome: _Outcome = "pending"
    error: LLMError | None = None
    response: ChatResponse | EmbeddingResponse | None = None

    @property
    def duration(self) -> float | None:
        """``ended_at - started_at``, or ``None`` while pending."""
        return None if self.ended_at is None else self.ended_at - self.started_at


class MockProvider:
    """An in-process provider: scripted, rule-based or echoing answers, with recording.

    Every chat request is validated first with
    :func:`~providers.validate_request` against ``capabilities``, like a real adapter
    (an image sent to a mock without vision raises
    :class:`~providers.UnsupportedFeature`), then answered by the next script item, else
    the first matching rule, else the default (see the module docs for the timeline).
    Scripted errors are raised as a fresh shallow copy, with ``provider`` filled in when
    unset, so one error instance can serve many concurrent calls.  After :meth:`aclose`,
    every call raises :class:`~providers.ConnectionFailed`.

    Args:
        responses: The script: :class:`MockResponse`, ``str`` (a text answer) or
            :class:`~providers.LLMError` (raised) items, one per chat call.
        rules: ``(pattern, response)`` pairs consulted when the script is exhausted;
            the pattern is a substring or a compiled regex searched in the last user
            message, or a predicate on the request.  The first match wins.
        default: The answer when nothing else applies: ``None`` echoes the last user
            message (``"echo: " + text``, like the fake upstream), or answers a
            ``json_schema`` response format with a value that fits the schema (the fake
            upstream's :func:`~providers.testing._scenario.schema_example`); or a fixed
            response; or a function of the request returning one.
        name: The configured provider name (responses' ``provider``, errors').
        latency: Seconds added to every call's latency; may be changed at any time.
        capabilities: What the mock accepts; ``streaming`` and ``embeddings`` gate
            :meth:`stream` and :meth:`embed`.
        models: The ids :meth:`list_models` reports.
        record: Keep a :class:`MockCall` per call in :attr:`calls`; turn it off for
            long benchmarks, which would otherwise hold every request in memory (also
            settable later, as :attr:`record`).

    Synopsis::

        mock = MockProvider(
            responses=["Hello!", RateLimited("slow down", retry_after=2.0)],
            rules=[("weather", MockResponse.tool_call("get_weather", {"city": "Paris"}))],
            default=MockResponse(text="I don't know.", latency=0.5, chunk_latency=0.1),
        )
        request = ChatRequest(model="m", messages=[Message.user("hi")])
        assert (await mock.complete(request)).text == "Hello!"   # the script, in order
        with pytest.raises(RateLimited):
            await mock.complete(request)
        async with mock.stream(request) as events:                # then rules, then default
            async for event in events: ...
        assert [c.outcome for c in mock.calls] == ["ok", "error", "ok"]
    """

    def __init__(
        self,
        *,
        responses: Iterable[_Reply] = (),
        rules: Iterable[tuple[_Pattern, _Reply]] = (),
        default: _Reply | Callable[[ChatRequest], _Reply] | None = None,
        name: str = "mock",
        latency: float = 0.0,
        capabilities: Capabilities | None = None,
        models: Sequence[str] = ("mock-model",),
        record: bool = True,
    ) -> None:
        if not latency >= 0.0:
            raise ValueError(f"`latency` must be non-negative seconds, got {latency}")
        self._name = name
        self.latency = latency
        self._capabilities = capabilities if capabilities is not None else Capabilities()
        self.models = list(models)
        self._script: deque[MockResponse] = deque(_coerce(r) for r in responses)
        self._rules: list[tuple[_Matcher, MockResponse]] = []
        for pattern, reply in rules:
            self.add_rule(pattern, reply)
        self._default_fn: Callable[[ChatRequest], _Reply] | None = None
        self._default: MockResponse | None = None
        if callable(default):
            self._default_fn = default
        elif default is not None:
            self._default = _coerce(default)
        self.calls: list[MockCall] = []
        self._record = record
        self._seq = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"MockProvider(name={self._name!r}, calls={len(self.calls)})"

    # -- the Provider protocol --------------------------------------------------------

    @property
    def name(self) -> str:
        """The configured provider name."""
        return self._name

    @property
    def kind(self) -> str:
        """The wire format: always ``"mock"``."""
        return "mock"

    @property
    def capabilities(self) -> Capabilities:
        """What this mock accepts."""
        return self._capabilities

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer ``request`` after the latency, or raise the scripted error.

        Raises:
            InvalidRequest: ``request`` fails validation (nothing is consumed).
            ConnectionFailed: the provider is closed.
            LLMError: the scripted error.

        Example::

            resp = await MockProvider().complete(req)   # "echo: <last user text>"
        """
        call = self._begin("complete", request)
        try:
            self._admit(request)
            reply, seq = self._choose(request)
            await _wait(self.latency + reply.latency)
            if reply.error is not None or reply.error_after_chunks is not None:
                raise self._failure(reply)
            response = self._respond(reply, request, seq)
        except LLMError as exc:
            self._end(call, "error", error=exc)
            raise
        except BaseException:
            self._end(call, "cancelled")
            raise
        self._end(call, "ok", response=response)
        return response

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[EventStream]:
        """Stream the answer to ``request`` as typed events, on the module's timeline.

        The request is validated and its answer chosen on entering.  Events: reasoning
        deltas, text deltas, then per tool call a start, at least one argument fragment
        and an end; then :class:`~providers.UsageEvent` and :class:`~providers.Done`.

        Raises:
            InvalidRequest: on entering, if ``request`` fails validation.
            UnsupportedFeature: on entering, if ``capabilities.streaming`` is off.
            ConnectionFailed: on entering, if the provider is closed.
            LLMError: on entering (after the latency) for an upfront ``error``; from
                iteration for ``error_after_chunks``.

        Example::

            async with mock.stream(req) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        print(event.text, end="")
        """
        return self._open_stream(request)

    @asynccontextmanager
    async def _open_stream(self, request: ChatRequest) -> AsyncIterator[EventStream]:
        call = self._begin("stream", request)
        try:
            self._admit(request)
            if not self._capabilities.streaming:
                raise UnsupportedFeature("this target cannot stream; use complete()")
            reply, seq = self._choose(request)
            delay = self.latency + reply.latency
            if reply.error is not None and reply.error_after_chunks is None:
                await _wait(delay)
                raise self._fresh(reply.error)
            events = self._plan_stream(call, reply, request, seq, trio.current_time() + delay)
            await trio.lowlevel.checkpoint()
        except LLMError as exc:
            self._end(call, "error", error=exc)
            raise
        except BaseException:
            self._end(call, "cancelled")
            raise
        try:
            yield events
        finally:
            events._closed = True
            # Left before Done or an error: the caller (or trio) abandoned the stream.
            if call.outcome == "pending":
                self._end(call, "cancelled")

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Deterministic unit vectors from a hash of each input, after ``latency``.

        A vector depends only on its input text and length (``request.dimensions``, or
        8), never on the process: it is SHAKE-128 of the UTF-8 text, read as 32-bit
        integers, scaled to [-1, 1) and normalised.  Usage counts characters / 4 (at
        least 1) per input.  The script and rules are for chat calls only.

        Raises:
            UnsupportedFeature: ``capabilities.embeddings`` is off.
            ConnectionFailed: the provider is closed.

        Example::

            resp = await mock.embed(EmbeddingRequest(model="e", inputs=["a", "b"]))
            assert len(resp.vectors[0]) == 8
        """
        call = self._begin("embed", request)
        try:
            self._check_open()
            if not self._capabilities.embeddings:
                raise UnsupportedFeature("this target cannot embed")
            dims = request.dimensions or 8
            response = EmbeddingResponse(
                model=request.model,
                provider=self._name,
                vectors=[_embedding(text, dims) for text in request.inputs],
                usage=Usage(input_tokens=sum(max(1, len(t) // 4) for t in request.inputs)),
            )
            await _wait(self.latency)
        except LLMError as exc:
            self._end(call, "error", error=exc)
            raise
        except BaseException:
            self._end(call, "cancelled")
            raise
        self._end(call, "ok", response=response)
        return response

    async def list_models(self) -> list[ModelInfo]:
        """The ``models`` given at construction, owned by ``"mock"``.

        Example::

            [m.id for m in await MockProvider(models=["a", "b"]).list_models()]  # ["a", "b"]
        """
        self._check_open()
        await trio.lowlevel.checkpoint()
        return [ModelInfo(id=m, provider=self._name, owned_by="mock") for m in self.models]

    async def aclose(self) -> None:
        """Close the provider: later calls raise ``ConnectionFailed`` (idempotent)."""
        self._closed = True
        await trio.lowlevel.checkpoint()

    # -- scripting and inspection -----------------------------------------------------

    def enqueue(self, *responses: _Reply) -> None:
        """Append items to the script.

        Example::

            mock.enqueue("first", MockResponse(text="second", latency=1.0), Overloaded("busy"))
        """
        self._script.extend(_coerce(r) for r in responses)

    def script(self, *responses: _Reply) -> None:
        """Replace what is left of the script with ``responses`` (none: clear it).

        Use it part-way through a test to change what the next calls get.  A call in
        flight keeps the answer it already chose (a stream's times are fixed when it
        opens); the next call takes ``responses[0]``.  Every item is checked first, so a
        bad one raises ``TypeError`` and leaves the script as it was.

        Example::

            mock.script("patched", Overloaded("busy"))   # the next two calls, then rules
        """
        self._script = deque([_coerce(r) for r in responses])

    def set_rules(self, rules: Iterable[tuple[_Pattern, _Reply]]) -> None:
        """Replace every rule with ``rules`` (see ``rules`` in the class docs; ``[]`` clears).

        Example::

            mock.set_rules([("weather", "sunny")])
        """
        self._rules = [(_matcher(pattern), _coerce(reply)) for pattern, reply in rules]

    def set_default(self, default: _Reply | Callable[[ChatRequest], _Reply] | None) -> None:
        """Replace the default answer (``None``: echo), as ``default`` in the class docs.

        Example::

            mock.set_default(ServerError("down"))   # every unscripted call fails from now on
        """
        if callable(default):
            self._default_fn, self._default = default, None
        elif default is not None:
            self._default_fn, self._default = None, _coerce(default)
        else:
            self._default_fn = self._default = None

    def add_rule(self, pattern: _Pattern, response: _Reply) -> None:
        """Add a rule after the existing ones (see ``rules`` in the class docs).

        Example::

            mock.add_rule("weather", MockResponse.tool_call("get_weather", {"city": "Paris"}))
        """
        self._rules.append((_matcher(pattern), _coerce(response)))

    @property
    def record(self) -> bool:
        """Whether each call is kept in :attr:`calls`; may be turned on or off at any time.

        A mock the router builds from its configuration (``kind = "mock"``) starts with
        it off, as a long run would otherwise hold every request in memory.
        """
        return self._record

    @record.setter
    def record(self, value: bool) -> None:
        self._record = value

    @property
    def remaining(self) -> int:
        """How many script items are still unused."""
        return len(self._script)

    @property
    def requests(self) -> list[ChatRequest]:
        """The chat requests received (``complete`` and ``stream``), in order."""
        return [c.request for c in self.calls if isinstance(c.request, ChatRequest)]

    @property
    def cancelled(self) -> int:
        """How many calls were cancelled (or, for streams, abandoned before ``Done``)."""
        return sum(1 for c in self.calls if c.outcome == "cancelled")

    @property
    def in_flight(self) -> int:
        """Calls started and not yet finished, now."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most calls in flight at once since construction or :meth:`reset`."""
        return self._max_in_flight

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def reset(self) -> None:
        """Forget the recorded calls and restart the ids at ``mock-1``.

        The script, rules, default and closed state are unchanged; calls still in
        flight finish normally but are no longer in :attr:`calls`.
        """
        self.calls = []
        self._seq = 0
        self._max_in_flight = self._in_flight

    # -- internals --------------------------------------------------------------------

    def _begin(
        self,
        method: Literal["complete", "stream", "embed"],
        request: ChatRequest | EmbeddingRequest,
    ) -> MockCall:
        call = MockCall(method=method, request=request, started_at=trio.current_time())
        if self._record:
            self.calls.append(call)
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight
        return call

    def _end(
        self,
        call: MockCall,
        outcome: _Outcome,
        *,
        error: LLMError | None = None,
        response: ChatResponse | EmbeddingResponse | None = None,
    ) -> None:
        call.outcome = outcome
        call.ended_at = trio.current_time()
        call.error = error
        call.response = response
        self._in_flight -= 1

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionFailed("the provider is closed", provider=self._name)

    def _admit(self, request: ChatRequest) -> None:
        self._check_open()
        validate_request(request, self._capabilities)

    def _choose(self, request: ChatRequest) -> tuple[MockResponse, int]:
        self._seq += 1
        if self._script:
            return self._script.popleft(), self._seq
        if self._rules:
            text = request.last_user_text
            for matches, reply in self._rules:
                if matches(request, text):
                    return reply, self._seq
        if self._default is not None:
            return self._default, self._seq
        if self._default_fn is not None:
            return _coerce(self._default_fn(request)), self._seq
        fmt = request.response_format
        if fmt is not None and fmt.schema is not None:
            # Structured output: a value that fits the schema, as the fake upstream sends.
            from .testing._scenario import schema_example

            return MockResponse(text=_json_text(schema_example(fmt.schema))), self._seq
        return MockResponse(text="echo: " + request.last_user_text), self._seq

    def _fresh(self, error: LLMError) -> LLMError:
        # A copy per raise: one instance may serve many calls at once, and raising the
        # same object repeatedly would chain their tracebacks and contexts together.
        exc = copy.copy(error)
        if exc.provider is None:
            exc.provider = self._name
        return exc

    def _failure(self, reply: MockResponse) -> LLMError:
        if reply.error is not None:
            return self._fresh(reply.error)
        return ServerError(
            f"scripted failure after {reply.error_after_chunks} chunks", provider=self._name
        )

    def _respond(self, reply: MockResponse, request: ChatRequest, seq: int) -> ChatResponse:
        calls = _tool_calls(reply, seq)
        return ChatResponse(
            id=f"mock-{seq}",
            model=request.model,
            provider=self._name,
            text=reply.text,
            tool_calls=calls,
            finish_reason=_finish_reason(reply, calls),
            usage=reply.usage or _estimate(request, reply, [_arguments(c) for c in calls]),
            reasoning=reply.reasoning or None,
        )

    def _plan_stream(
        self, call: MockCall, reply: MockResponse, request: ChatRequest, seq: int, first: float
    ) -> _MockStream:
        calls = _tool_calls(reply, seq)
        raw_args = [_arguments(c) for c in calls]
        per = reply.chunk_words
        chunks: list[StreamEvent] = []
        if reply.reasoning:
            chunks += [ReasoningDelta(text=t) for t in _split(reply.reasoning, per)]
        chunks += [TextDelta(text=t) for t in _split(reply.text, per)]
        for index, (tool_call, raw) in enumerate(zip(calls, raw_args, strict=True)):
            chunks.append(ToolCallStart(index=index, id=tool_call.id, name=tool_call.name))
            pieces = _split(raw, per) or [raw]
            chunks += [ToolCallDelta(index=index, arguments=p) for p in pieces]
            chunks.append(ToolCallEnd(index=index, call=tool_call))
        n_chunks = len(chunks)
        if reply.error_after_chunks is not None:
            # The stream fails where the trailer would have been, or earlier.
            delivered = chunks[: reply.error_after_chunks]
            return _MockStream(self, call, reply, delivered, first=first, n_chunks=len(delivered))
        acc = StreamAccumulator(provider=self._name, model=request.model, id=f"mock-{seq}")
        for event in chunks:
            acc.add(event)
        usage = UsageEvent(usage=reply.usage or _estimate(request, reply, raw_args))
        acc.add(usage)
        done = Done(response=acc.response(finish_reason=_finish_reason(reply, calls)))
        chunks += (usage, done)
        return _MockStream(self, call, reply, chunks, first=first, n_chunks=n_chunks)


class _MockStream:
    """The events of one mock stream; an explicit async iterator, not an async generator.

    Event ``i`` is due at ``first + min(i, n_chunks) * chunk_latency``.  A failing stream
    holds only the chunks it delivers, and raises where the next event would have been.
    """

    __slots__ = (
        "_call",
        "_closed",
        "_events",
        "_failing",
        "_first",
        "_n_chunks",
        "_next",
        "_owner",
        "_reply",
        "_step",
    )

    def __init__(
        self,
        owner: MockProvider,
        call: MockCall,
        reply: MockResponse,
        events: list[StreamEvent],
        *,
        first: float,
        n_chunks: int,
    ) -> None:
        self._owner = owner
        self._call = call
        self._reply = reply
        self._events = events
        self._failing = reply.error_after_chunks is not None
        self._n_chunks = n_chunks
        self._first = first
        self._step = reply.chunk_latency
        self._next = 0
        self._closed = False

    def __aiter__(self) -> _MockStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._closed:
            raise trio.ClosedResourceError("this stream's `async with` block has exited")
        i = self._next
        events = self._events
        if i > len(events) or (i == len(events) and not self._failing):
            raise StopAsyncIteration
        k = min(i, self._n_chunks)
        # (The product is skipped at k == 0 so an infinite chunk_latency cannot make NaN.)
        due = self._first + self._step * k if k else self._first
        if trio.current_time() < due:
            await trio.sleep_until(due)
        else:
            await trio.lowlevel.checkpoint()
        self._next = i + 1
        if i < len(events):
            event = events[i]
            if isinstance(event, Done):
                self._owner._end(self._call, "ok", response=event.response)
            return event
        # One past the delivered chunks of a failing stream: fail now.
        owner = self._owner
        cause = owner._failure(self._reply)
        if i == 0:
            owner._end(self._call, "error", error=cause)
            raise cause
        error = StreamInterrupted(
            f"the stream failed after content was delivered: {cause}",
            provider=owner.name,
            status_code=cause.status_code,
            request_id=cause.request_id,
        )
        owner._end(self._call, "error", error=error)
        raise error from cause


# --------------------------------------------------------------------------- helpers


async def _wait(delay: float) -> None:
    # Every call is a checkpoint, even with no latency, as trio's own operations are.
    if delay > 0.0:
        await trio.sleep(delay)
    else:
        await trio.lowlevel.checkpoint()


def _coerce(item: _Reply) -> MockResponse:
    if isinstance(item, MockResponse):
        return item
    if isinstance(item, str):
        return MockResponse(text=item)
    if isinstance(item, LLMError):
        return MockResponse(error=item)
    raise TypeError(
        f"a mock response is a MockResponse, a str or an LLMError, not {type(item).__name__}"
    )


def _matcher(pattern: _Pattern) -> _Matcher:
    # Each rule becomes one closure at construction, so matching costs no dispatch.
    if isinstance(pattern, str):
        needle = pattern

        def contains(_request: ChatRequest, text: str) -> bool:
            return needle in text

        return contains
    if isinstance(pattern, re.Pattern):
        search = pattern.search

        def searches(_request: ChatRequest, text: str) -> bool:
            return search(text) is not None

        return searches
    if callable(pattern):
        predicate = pattern

        def satisfies(request: ChatRequest, _text: str) -> bool:
            return bool(predicate(request))

        return satisfies
    raise TypeError(
        f"a rule's pattern is a str, a re.Pattern or a callable, not {type(pattern).__name__}"
    )


def _split(text: str, per_chunk: int) -> list[str]:
    """``text`` in pieces of ``per_chunk`` words that concatenate back to it exactly."""
    if not text:
        return []
    words: list[str] = _WORD.findall(text)
    if not words:  # whitespace only
        return [text]
    used = sum(map(len, words))
    if used < len(text):
        words[-1] += text[used:]
    if per_chunk == 1:
        return words
    return ["".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)]


def _tool_calls(reply: MockResponse, seq: int) -> list[ToolCall]:
    calls = reply.tool_calls
    if not calls or all(c.id for c in calls):
        return calls
    return [
        c if c.id else msgspec.structs.replace(c, id=f"call_{seq}_{i}") for i, c in enumerate(calls)
    ]


def _arguments(call: ToolCall) -> str:
    """The JSON a vendor would stream for ``call`` (spaced, so it splits into words)."""
    if call.raw_arguments is not None:
        return call.raw_arguments
    return msgspec.json.format(msgspec.json.encode(call.arguments), indent=0).decode()


def _finish_reason(reply: MockResponse, calls: list[ToolCall]) -> FinishReason:
    if reply.finish_reason is not None:
        return reply.finish_reason
    return "tool_calls" if calls else "stop"


def _estimate(request: ChatRequest, reply: MockResponse, raw_args: list[str]) -> Usage:
    chars = sum(len(m.text) for m in request.messages)
    reasoning = len(reply.reasoning.split()) if reply.reasoning else 0
    output = len(reply.text.split()) + reasoning + sum(len(a.split()) for a in raw_args)
    return Usage(
        input_tokens=max(1, chars // 4), output_tokens=max(1, output), reasoning_tokens=reasoning
    )


def _embedding(text: str, dims: int) -> list[float]:
    digest = hashlib.shake_128(text.encode("utf-8", "surrogatepass")).digest(4 * dims)
    raw = [x / 2147483648.0 - 1.0 for x in struct.unpack(f"<{dims}I", digest)]
    norm = math.sqrt(math.fsum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()
