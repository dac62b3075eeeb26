"""A conformance suite every HTTP adapter passes, in the spirit of trio's ``check_two_way_stream``.

:func:`check_provider` builds an adapter against scenarios of the fake upstream, drives
it through the behaviours the router relies on, and raises :class:`AssertionError` with
a message naming the check on the first thing that is wrong.  Adapter authors run it in
their own test suite; the project runs it for every adapter it ships.

Synopsis::

    async def test_my_adapter_conforms() -> None:
        await check_provider(
            lambda *, base_url, api_key, client: MyProvider(
                api_key=api_key, base_url=base_url, client=client
            ),
            vendor="openai",          # the wire format the fake upstream should speak
        )

The checks, in order (:data:`CONFORMANCE_CHECKS`; skip some with ``skip=``):

=====================  ==================================================================
``protocol``           the adapter satisfies :class:`~providers.Provider`: a ``name``,
                       a ``kind``, :class:`~providers.Capabilities`
``complete``           a plain text answer: the echo, ``finish_reason`` "stop", usage
``stream``             text deltas join to the complete answer; exactly one ``Done``,
                       last, with the same text and usage
``tools``              a tool call, whole: name, parsed arguments, "tool_calls"; sending
                       its result back gives a text answer
``tools_stream``       a streamed tool call: start before end, argument fragments join
                       to the arguments, ``Done`` carries the call
``errors``             401 → AuthenticationError, 429 → RateLimited with ``retry_after``,
                       500 → ServerError, 503 → Overloaded; from ``complete`` and from
                       ``stream``; nothing but :class:`~providers.LLMError` escapes
``interrupted``        an in-stream error after content is StreamInterrupted (the
                       vendor's error as its cause); before content, the vendor's error
``cancellation``       cancelling mid-stream returns promptly and closes the response
                       (the upstream records the client's disconnect)
``secrets``            the key appears in no ``repr``/``str`` of the provider, of any
                       error raised during the suite (causes included) or of any log
                       record of the ``trio_llm_router`` and ``httpx`` loggers
=====================  ==================================================================

Checks that need a capability the adapter says it lacks (tools, streaming) are skipped.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

import httpx
import msgspec
import trio

from .._base import Provider
from .._errors import (
    AuthenticationError,
    LLMError,
    Overloaded,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from .._types import (
    Capabilities,
    ChatRequest,
    ChatResponse,
    Done,
    Message,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolSpec,
)
from ._scenario import Fault, Scenario
from ._server import FakeUpstream, open_fake_upstream

__all__ = ["CONFORMANCE_CHECKS", "ProviderFactory", "check_provider", "fake_base_url"]

#: Every check :func:`check_provider` knows, in the order it runs them.
CONFORMANCE_CHECKS: tuple[str, ...] = (
    "protocol",
    "complete",
    "stream",
    "tools",
    "tools_stream",
    "errors",
    "interrupted",
    "cancellation",
    "secrets",
)

# A key no vendor message could contain by accident, so any occurrence is a leak.
_KEY = "sk-conformance-SECRET-5f3a9c1e7b"
_CHECK_DEADLINE = 30.0  # a safety net: a hung check fails with a message, not a hang
_CANCEL_PROMPTNESS = 2.0  # seconds a cancelled stream may take to return
_WATCHED_LOGGERS = ("trio_llm_router", "httpx")

_WEATHER = ToolSpec(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
_SLOW_REPLY = "one two three four five six seven eight nine ten eleven twelve"
_ERROR_CASES: tuple[tuple[int, type[LLMError]], ...] = (
    (401, AuthenticationError),
    (429, RateLimited),
    (500, ServerError),
    (503, Overloaded),
)
_RETRY_AFTER = 2.0

_runs = itertools.count(1)


class ProviderFactory(Protocol):
    """Builds the adapter under test; called with keywords only.

    Args:
        base_url: where the fake upstream serves one scenario in the adapter's wire
            format (for ``vendor="azure"``, the resource endpoint).
        api_key: the key to use (the suite checks that it never leaks).
        client: the ``httpx.AsyncClient`` to use; the suite closes it.

    Example::

        def make(*, base_url: str, api_key: str, client: httpx.AsyncClient) -> Provider:
            return OpenAIProvider(api_key=api_key, base_url=base_url, client=client)
    """

    def __call__(self, *, base_url: str, api_key: str, client: httpx.AsyncClient) -> Provider: ...


# Where each wire format lives below the fake upstream's URL (the path table in
# :mod:`._formats`), for a stand-in upstream whose ``base_url`` does not know them.
_FALLBACK_BASES: dict[str, str] = {
    "azure": "{url}/{scenario}",
    "gemini": "{url}/{scenario}/v1beta",
    "ollama": "{url}/{scenario}",
}


def fake_base_url(upstream: FakeUpstream, scenario: str, vendor: str) -> str:
    """The base URL an adapter of ``vendor``'s wire format uses for ``scenario``.

    This is :meth:`FakeUpstream.base_url`, which knows every provider kind (for
    ``"azure"``, the resource endpoint: the adapter adds ``/openai/...``).  An upstream
    stand-in whose ``base_url`` refuses Azure, Gemini or Ollama gets their bases from
    the fake upstream's path table instead.

    Raises:
        ValueError: neither the upstream nor the path table knows ``vendor``.

    Example::

        OpenAIProvider(api_key="sk-test", base_url=fake_base_url(up, "flaky", "openai"))
    """
    try:
        return upstream.base_url(scenario, vendor)
    except ValueError:
        template = _FALLBACK_BASES.get(vendor)
        if template is None:
            raise ValueError(
                f"no base URL known for the wire format {vendor!r}; pass base_url_for= "
                "to check_provider"
            ) from None
        return template.format(url=upstream.url, scenario=quote(scenario, safe=""))


async def check_provider(
    make_provider: ProviderFactory,
    *,
    vendor: str = "openai",
    upstream: FakeUpstream | None = None,
    client: httpx.AsyncClient | None = None,
    model: str = "conformance-model",
    skip: Collection[str] = (),
    base_url_for: Callable[[FakeUpstream, str], str] | None = None,
) -> list[str]:
    """Run the conformance checks against an adapter; raise AssertionError on a failure.

    Args:
        make_provider: builds the adapter for one scenario (see :class:`ProviderFactory`).
        vendor: the wire format the adapter speaks: ``"openai"`` (also OpenRouter, Groq,
            Together, any compatible server), ``"anthropic"``, ``"azure"``, and any
            format the fake upstream's :meth:`~FakeUpstream.base_url` accepts.
        upstream: a running fake upstream to use (its request recording must be on);
            by default the suite starts its own.  Its scenarios are installed under
            fresh ``conformance-...`` names, so the upstream's others are untouched.
        client: the HTTP client to hand the adapter; by default one the suite opens and
            closes.
        model: the model id to request (for Azure, also the deployment name).
        skip: names from :data:`CONFORMANCE_CHECKS` not to run.
        base_url_for: ``(upstream, scenario) -> base_url``, for a wire format
            :func:`fake_base_url` does not know.

    Returns:
        The names of the checks that ran, in order.

    Raises:
        AssertionError: the first check that failed, with what was expected and got.
        ValueError: ``skip`` names an unknown check.

    Example::

        await check_provider(
            lambda *, base_url, api_key, client: AnthropicProvider(
                api_key=api_key, base_url=base_url, client=client
            ),
            vendor="anthropic",
        )
    """
    unknown = sorted(set(skip) - set(CONFORMANCE_CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {list(CONFORMANCE_CHECKS)}")
    prefix = f"conformance-{next(_runs)}-"
    scenarios = {prefix + name: scenario for name, scenario in _scenarios().items()}
    resolve = base_url_for or partial(_vendor_base_url, vendor=vendor)
    async with _upstream(upstream, scenarios) as up, _client(client) as http:
        suite = _Suite(make_provider, up, http, prefix, resolve, model)
        with _captured_logs(suite.logs):
            try:
                return await suite.run(skip)
            finally:
                await suite.close()


def _vendor_base_url(upstream: FakeUpstream, scenario: str, *, vendor: str) -> str:
    return fake_base_url(upstream, scenario, vendor)


@asynccontextmanager
async def _upstream(
    given: FakeUpstream | None, scenarios: dict[str, Scenario]
) -> AsyncIterator[FakeUpstream]:
    if given is None:
        async with open_fake_upstream(scenarios) as up:
            yield up
        return
    for name, scenario in scenarios.items():
        given.set_scenario(name, scenario)
    yield given


@asynccontextmanager
async def _client(given: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    if given is not None:
        yield given
        return
    async with httpx.AsyncClient() as client:
        yield client


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # a record whose arguments do not format: keep the template
            self.messages.append(str(record.msg))


@contextmanager
def _captured_logs(capture: _Capture) -> Iterator[None]:
    """Capture the library's and httpx's log records at every level, then restore."""
    saved: list[tuple[logging.Logger, int]] = []
    for name in _WATCHED_LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.level))
        log.addHandler(capture)
        log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for log, level in saved:
            log.removeHandler(capture)
            log.setLevel(level)


def _scenarios() -> dict[str, Scenario]:
    faults = {
        f"status-{status}": Scenario(
            faults=[
                Fault(
                    "status",
                    status=status,
                    rate=1.0,
                    retry_after=_RETRY_AFTER if status == 429 else None,
                )
            ]
        )
        for status, _ in _ERROR_CASES
    }
    return {
        "ok": Scenario(),
        "slow": Scenario(chunk_interval=0.02, reply=_SLOW_REPLY),
        "interrupted": Scenario(
            reply=_SLOW_REPLY, faults=[Fault("midstream_error", rate=1.0, after_chunks=2)]
        ),
        "early-error": Scenario(faults=[Fault("midstream_error", rate=1.0, after_chunks=0)]),
        **faults,
    }


def _fail(check: str, message: str) -> NoReturn:
    # The suite's key is fake, but a failure message is no place to show a key either.
    message = message.replace(_KEY, "<KEY>")
    raise AssertionError(f"conformance check {check!r} failed: {message}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"


class _Suite:
    def __init__(
        self,
        make_provider: ProviderFactory,
        upstream: FakeUpstream,
        client: httpx.AsyncClient,
        prefix: str,
        base_url_for: Callable[[FakeUpstream, str], str],
        model: str,
    ) -> None:
        self.make_provider = make_provider
        self.upstream = upstream
        self.client = client
        self.prefix = prefix
        self.base_url_for = base_url_for
        self.model = model
        self.providers: dict[str, Provider] = {}
        self.errors: list[BaseException] = []  # every error the adapter raised
        self.responses: list[ChatResponse] = []
        self.logs = _Capture()
        self.check = ""

    # -- plumbing ---------------------------------------------------------------------

    def provider(self, scenario: str) -> Provider:
        name = self.prefix + scenario
        if name not in self.providers:
            base_url = self.base_url_for(self.upstream, name)
            self.providers[name] = self.make_provider(
                base_url=base_url, api_key=_KEY, client=self.client
            )
        return self.providers[name]

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for provider in self.providers.values():
                await provider.aclose()

    def fail(self, message: str) -> NoReturn:
        _fail(self.check, message)

    def request(self, text: str = "hello conformance suite", **kw: Any) -> ChatRequest:
        kw.setdefault("messages", [Message.system("Be terse."), Message.user(text)])
        return ChatRequest(model=self.model, **kw)

    async def complete(self, provider: Provider, request: ChatRequest) -> ChatResponse:
        try:
            response = await provider.complete(request)
        except Exception as exc:
            self.errors.append(exc)
            self.fail(f"complete() raised {_describe(exc)}")
        self.responses.append(response)
        return response

    async def collect(self, provider: Provider, request: ChatRequest) -> list[StreamEvent]:
        try:
            async with provider.stream(request) as events:
                return [event async for event in events]
        except Exception as exc:
            self.errors.append(exc)
            self.fail(f"stream() raised {_describe(exc)}")

    async def error_from(self, call: str, provider: Provider, request: ChatRequest) -> LLMError:
        """Run ``complete`` or ``stream`` expecting a failure; return the error raised."""
        try:
            if call == "complete":
                await provider.complete(request)
            else:
                async with provider.stream(request) as events:
                    async for _ in events:
                        pass
        except LLMError as exc:
            self.errors.append(exc)
            return exc
        except Exception as exc:
            self.errors.append(exc)
            self.fail(f"{call}() let a foreign exception escape: {_describe(exc)}")
        self.fail(f"{call}() succeeded, but the upstream answered with an error")

    def done_last(self, events: list[StreamEvent], what: str) -> ChatResponse:
        dones = [i for i, e in enumerate(events) if isinstance(e, Done)]
        if len(dones) != 1 or dones[0] != len(events) - 1:
            kinds = [type(e).__name__ for e in events]
            self.fail(f"{what}: expected exactly one Done, as the last event; got {kinds}")
        last = events[-1]
        assert isinstance(last, Done)
        return last.response

    # -- the checks -------------------------------------------------------------------

    async def run(self, skip: Collection[str]) -> list[str]:
        caps = self.provider("ok").capabilities
        needs_tools = {"tools", "tools_stream"}
        needs_streaming = {"stream", "tools_stream", "interrupted", "cancellation"}
        ran: list[str] = []
        for name in CONFORMANCE_CHECKS:
            if name in skip:
                continue
            if isinstance(caps, Capabilities) and (
                (name in needs_tools and not caps.tools)
                or (name in needs_streaming and not caps.streaming)
            ):
                continue
            self.check = name
            check: Callable[[], Awaitable[None]] = getattr(self, "check_" + name)
            try:
                with trio.fail_after(_CHECK_DEADLINE):
                    await check()
            except trio.TooSlowError:
                self.fail(f"did not finish within {_CHECK_DEADLINE:g} s")
            ran.append(name)
        return ran

    async def check_protocol(self) -> None:
        p = self.provider("ok")
        if not isinstance(p, Provider):
            self.fail(f"{type(p).__name__} does not satisfy the Provider protocol")
        if not isinstance(p.name, str) or not p.name:
            self.fail(f"`name` must be a non-empty str, got {p.name!r}")
        if not isinstance(p.kind, str) or not p.kind:
            self.fail(f"`kind` must be a non-empty str, got {p.kind!r}")
        if not isinstance(p.capabilities, Capabilities):
            self.fail(f"`capabilities` must be a Capabilities, got {p.capabilities!r}")

    async def check_complete(self) -> None:
        p = self.provider("ok")
        r = await self.complete(p, self.request())
        expected = "echo: hello conformance suite"
        if r.text != expected:
            self.fail(f"expected the text {expected!r}, got {r.text!r}")
        if r.finish_reason != "stop":
            self.fail(f"expected finish_reason 'stop', got {r.finish_reason!r}")
        if r.usage.input_tokens <= 0 or r.usage.output_tokens <= 0:
            self.fail(f"expected input and output token counts, got {r.usage!r}")
        if r.provider != p.name:
            self.fail(f"response.provider is {r.provider!r}, the provider is named {p.name!r}")
        if r.tool_calls:
            self.fail(f"a plain text answer has tool calls: {r.tool_calls!r}")

    async def check_stream(self) -> None:
        p = self.provider("ok")
        whole = await self.complete(p, self.request())
        events = await self.collect(p, self.request())
        done = self.done_last(events, "a text stream")
        deltas = [e.text for e in events if isinstance(e, TextDelta)]
        if len(deltas) < 2:
            self.fail(f"the answer arrived in {len(deltas)} text delta(s): it was not streamed")
        joined = "".join(deltas)
        if joined != whole.text:
            self.fail(f"the text deltas join to {joined!r}, complete() said {whole.text!r}")
        if done.text != joined:
            self.fail(f"Done.response.text is {done.text!r}, the deltas join to {joined!r}")
        if done.finish_reason != "stop":
            self.fail(f"expected finish_reason 'stop' on Done, got {done.finish_reason!r}")
        if done.usage.input_tokens <= 0 or done.usage.output_tokens <= 0:
            self.fail(f"Done carries no usage: {done.usage!r}")
        if done.usage != whole.usage:
            self.fail(f"streamed usage {done.usage!r} differs from complete()'s {whole.usage!r}")
        self.responses.append(done)

    def tool_request(self) -> ChatRequest:
        return self.request(
            "what is the weather in Paris? use get_weather",
            tools=[_WEATHER],
            tool_choice="required",
        )

    async def check_tools(self) -> None:
        p = self.provider("ok")
        r = await self.complete(p, self.tool_request())
        calls = [(c.name, c.arguments) for c in r.tool_calls]
        if calls != [("get_weather", {"city": "value"})]:
            self.fail(f"expected one call get_weather({{'city': 'value'}}), got {calls!r}")
        if not r.tool_calls[0].id:
            self.fail("the tool call has no id")
        if r.finish_reason != "tool_calls":
            self.fail(f"expected finish_reason 'tool_calls', got {r.finish_reason!r}")
        call = r.tool_calls[0]
        follow_up = self.request(
            messages=[
                Message.user("what is the weather in Paris?"),
                r.message,
                Message.tool(call.id, "18C and cloudy", name=call.name),
            ],
            tools=[_WEATHER],
        )
        answer = await self.complete(p, follow_up)
        if answer.text != "tool result: 18C and cloudy" or answer.tool_calls:
            self.fail(
                "after sending the tool result back, expected the text 'tool result: 18C and "
                f"cloudy', got {answer.text!r} with calls {answer.tool_calls!r}"
            )

    async def check_tools_stream(self) -> None:
        p = self.provider("ok")
        events = await self.collect(p, self.tool_request())
        done = self.done_last(events, "a tool-call stream")
        starts = {e.index: i for i, e in enumerate(events) if isinstance(e, ToolCallStart)}
        ends = {e.index: (i, e) for i, e in enumerate(events) if isinstance(e, ToolCallEnd)}
        if set(starts) != set(ends) or len(starts) != 1:
            self.fail(
                f"expected one ToolCallStart and one ToolCallEnd for the same index, got starts "
                f"{sorted(starts)} and ends {sorted(ends)}"
            )
        index = next(iter(starts))
        end_at, end = ends[index]
        if starts[index] > end_at:
            self.fail("ToolCallEnd came before its ToolCallStart")
        start = events[starts[index]]
        assert isinstance(start, ToolCallStart)
        if start.name != "get_weather" or not start.id:
            self.fail(f"ToolCallStart should name get_weather with an id, got {start!r}")
        if (end.call.name, end.call.arguments) != ("get_weather", {"city": "value"}):
            self.fail(f"ToolCallEnd carries {end.call!r}")
        fragments = [e.arguments for e in events if isinstance(e, ToolCallDelta)]
        if fragments:
            joined = "".join(fragments)
            try:
                parsed = msgspec.json.decode(joined)
            except msgspec.DecodeError:
                self.fail(f"the argument fragments join to invalid JSON: {joined!r}")
            if parsed != end.call.arguments:
                self.fail(f"the argument fragments join to {joined!r}, not the call's arguments")
        if done.tool_calls != [end.call]:
            self.fail(f"Done.response.tool_calls is {done.tool_calls!r}, expected [{end.call!r}]")
        if done.finish_reason != "tool_calls":
            self.fail(f"expected finish_reason 'tool_calls' on Done, got {done.finish_reason!r}")

    async def check_errors(self) -> None:
        for status, expected in _ERROR_CASES:
            p = self.provider(f"status-{status}")
            for call in ("complete", "stream"):
                err = await self.error_from(call, p, self.request())
                where = f"HTTP {status} from {call}()"
                if not isinstance(err, expected):
                    self.fail(f"{where} should raise {expected.__name__}, got {_describe(err)}")
                if err.status_code != status:
                    self.fail(f"{where}: status_code is {err.status_code!r}")
                if err.provider != p.name:
                    self.fail(f"{where}: provider is {err.provider!r}, expected {p.name!r}")
                if status == 401 and (err.retryable or not err.is_authentication):
                    self.fail(f"{where}: must be an authentication error, not retryable")
                if status != 401 and not err.retryable:
                    self.fail(f"{where}: must be retryable")
                if status == 429 and err.retry_after != _RETRY_AFTER:
                    self.fail(
                        f"{where}: retry_after should be {_RETRY_AFTER:g} (the retry-after "
                        f"header), got {err.retry_after!r}"
                    )

    async def check_interrupted(self) -> None:
        p = self.provider("interrupted")
        seen: list[StreamEvent] = []
        try:
            async with p.stream(self.request()) as events:
                async for event in events:
                    seen.append(event)
        except StreamInterrupted as exc:
            self.errors.append(exc)
            if not isinstance(exc.__cause__, LLMError):
                self.fail(
                    f"StreamInterrupted should have the vendor's error as its cause, got "
                    f"{exc.__cause__!r}"
                )
        except Exception as exc:
            self.errors.append(exc)
            self.fail(
                f"an in-stream error after content should raise StreamInterrupted, got "
                f"{_describe(exc)}"
            )
        else:
            self.fail("the stream ended normally, but the upstream sent an in-stream error")
        if not any(isinstance(e, TextDelta) for e in seen):
            self.fail("the content before the in-stream error was not delivered")
        early = await self.error_from("stream", self.provider("early-error"), self.request())
        if isinstance(early, StreamInterrupted):
            self.fail(
                "an in-stream error before any content must be the vendor's own error "
                "(so the router can fail over), not StreamInterrupted"
            )
        if not early.retryable:
            self.fail(f"an in-stream server error should be retryable, got {_describe(early)}")

    async def check_cancellation(self) -> None:
        p = self.provider("slow")
        name = self.prefix + "slow"
        before = len(self.upstream.requests)
        cancel_at = 0.0
        with trio.CancelScope() as scope:
            try:
                async with p.stream(self.request()) as events:
                    async for event in events:
                        if isinstance(event, TextDelta) and not cancel_at:
                            # Cancel while the adapter waits for the next chunk (they come
                            # every 20 ms): the caller's deadline reaches into the read.
                            cancel_at = trio.current_time() + 0.005
                            scope.deadline = cancel_at
            except Exception as exc:
                self.errors.append(exc)
                self.fail(f"the stream raised {_describe(exc)} instead of being cancelled")
        if not cancel_at:
            self.fail("the stream delivered no text delta before it ended")
        if not scope.cancelled_caught:
            self.fail(
                "the stream ran to its end although its caller was cancelled: the "
                "cancellation never reached the read"
            )
        took = trio.current_time() - cancel_at
        if took > _CANCEL_PROMPTNESS:
            self.fail(f"leaving a cancelled stream took {took:.2f} s")
        records = [r for r in self.upstream.requests[before:] if r.scenario == name]
        if not records:
            self.fail("the upstream recorded no request: open it with record=True")
        record = records[-1]
        with trio.move_on_after(5.0):
            await record.finished.wait()
        if record.outcome != "client_disconnected":
            self.fail(
                "cancelling mid-stream must close the HTTP response; the upstream saw the "
                f"exchange end as {record.outcome!r}"
            )

    async def check_secrets(self) -> None:
        p = self.provider("status-401")
        err = await self.error_from("complete", p, self.request())
        if not isinstance(err, AuthenticationError):
            self.fail(f"HTTP 401 should raise AuthenticationError, got {_describe(err)}")
        places: list[tuple[str, str]] = []
        for provider in self.providers.values():
            places += [("repr(provider)", repr(provider)), ("str(provider)", str(provider))]
        for exc in self.errors:
            for depth, link in enumerate(_chain(exc)):
                label = f"{type(exc).__name__}" + (f" (cause #{depth})" if depth else "")
                places += [
                    (f"str({label})", str(link)),
                    (f"repr({label})", repr(link)),
                    (f"{label}.args", repr(link.args)),
                ]
                headers = getattr(link, "headers", None)
                if headers:
                    places.append((f"{label}.headers", repr(headers)))
        for response in self.responses:
            places.append(("repr(ChatResponse)", repr(response)))
        places += [("a log record", message) for message in self.logs.messages]
        for where, text in places:
            if _KEY in text:
                self.fail(f"the API key appears in {where}: {text!r}")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes and contexts, each once."""
    out: list[BaseException] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        link = todo.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        out.append(link)
        todo += [link.__cause__, link.__context__]
        if isinstance(link, BaseExceptionGroup):
            todo += list(link.exceptions)
    return out
