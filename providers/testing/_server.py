"""A fake LLM-vendor HTTP server on loopback, with scripted latency and faults.

:func:`open_fake_upstream` starts a trio HTTP/1.1 server (``h11`` over
``trio.serve_tcp``, real sockets, keep-alive) that speaks five wire formats natively —
OpenAI, Anthropic, Gemini, Ollama and Azure OpenAI — in JSON and as streams, faithfully
enough that the vendors' official SDKs parse every response, stream and error it sends.
Each URL starts with a scenario name that selects a :class:`~._scenario.Scenario`
(latency, streaming pace, reply, faults)::

    OpenAI (also OpenRouter, Groq, Together, any compatible server)
    /{scenario}/v1/chat/completions                              POST  SSE, data: [DONE]
    /{scenario}/v1/embeddings                                    POST
    /{scenario}/v1/models[/{id}]                                 GET   (*)

    Anthropic
    /{scenario}/v1/messages                                      POST  SSE, event: names
    /{scenario}/v1/messages/count_tokens                         POST
    /{scenario}/v1/models[/{id}]                                 GET   (*)

    Gemini (key: x-goog-api-key or ?key=; base URL {url}/{scenario}/v1beta)
    /{scenario}/v1beta/models/{model}:generateContent            POST
    /{scenario}/v1beta/models/{model}:streamGenerateContent      POST  ?alt=sse: SSE with
                                                                       CRLF, no terminator;
                                                                       else one JSON array
    /{scenario}/v1beta/models/{model}:countTokens                POST
    /{scenario}/v1beta/models/{model}:embedContent               POST
    /{scenario}/v1beta/models/{model}:batchEmbedContents         POST  (at most 100)
    /{scenario}/v1beta/models[/{model}]                          GET   paged: pageSize,
                                                                       pageToken
    Ollama (no key; base URL {url}/{scenario})
    /{scenario}/api/chat                                         POST  NDJSON unless
                                                                       "stream": false
    /{scenario}/api/embed                                        POST
    /{scenario}/api/tags                                         GET

    Azure OpenAI (endpoint {url}/{scenario}; OpenAI bodies, Azure errors)
    /{scenario}/openai/deployments/{deployment}/chat/completions POST  ?api-version= and
    /{scenario}/openai/deployments/{deployment}/embeddings       POST  api-key required
    /{scenario}/openai/models                                    GET   (?api-version=)
    /{scenario}/openai/v1/chat/completions                       POST  api-key or Bearer
    /{scenario}/openai/v1/embeddings                             POST
    /{scenario}/openai/v1/models                                 GET

    (*) Anthropic's shape if the request has an ``anthropic-version`` or ``x-api-key``
        header, else OpenAI's.

Unknown scenario names behave like ``Scenario()`` (an instant echo); a path that starts
with ``/v1/``, ``/v1beta/`` or ``/api/`` has no scenario and uses ``"default"`` (so
those three cannot be scenario names).  Every request is recorded
(:class:`RecordedRequest`) with its headers, body and addressed model (the Azure
deployment, the Gemini model in the path, or the body's ``model``), including how its
exchange ended, so tests can prove that cancelling a client call really closed its HTTP
response.

Each format keeps its vendor's traps: Gemini refuses unknown field names (OpenAI's
``max_tokens``), roles other than ``user``/``model``, ``data:`` URLs as base64, arguments
that are strings, function responses that do not answer the previous turn one for one,
and a missing key with a 400 ``API_KEY_INVALID`` (not a 401); its 429 carries the wait
in a ``google.rpc.RetryInfo`` detail, not a header, and its usage counts leave zeros out.
Ollama streams unless told not to, takes images as bare base64 and arguments as objects,
and reports errors as ``{"error": "..."}``, also as a line inside a 200 stream.

One exchange, in order: record the request, pick the scenario's fault for this request
number, sample the latency, build the answer (validation errors included), sleep the
latency (racing a read on the socket, so a client that hangs up is noticed at once),
then send the answer, or inject the fault instead.

The server is this module: the h11 connection, the routing of a path to a scenario and a
wire format, the scenario's latency and faults, the recording.  What each vendor says
(bodies, streams, errors, headers) is its format's, in :mod:`._formats`.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote

import h11
import msgspec
import trio

from ._formats import FORMATS, UPSTREAM_KINDS
from ._formats._base import (
    ANTHROPIC_VERSION_HEADER,
    Answer,
    Endpoint,
    Reply,
    RequestError,
    Route,
    Shape,
    StreamReply,
    VendorFormat,
    Wire,
    format_seconds,
)
from ._records import RecordedRequest, ScenarioState, UpstreamStats
from ._scenario import Fault, Scenario, filter_plan, plan_reply, select_fault

__all__ = ["FakeUpstream", "open_fake_upstream", "serve_fake_upstream"]

_RECEIVE_SIZE = 65536
_DEFAULT_DRIP_INTERVAL = 0.01

_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus} | {529: b"Overloaded"}

# One counter for every instance in the process: ids stay unique when a test runs
# several upstreams side by side.
_ids = itertools.count(1)

_decode_any = msgspec.json.Decoder().decode


# --------------------------------------------------------------------------- the HTTP connection


class _Connection:
    """One TCP connection: h11 state, bytes read ahead, and how to write or kill it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self.read_ahead: list[bytes] = []
        self.eof = False
        self.closing = False  # we are closing it ourselves: EOF is not the client's doing
        self._eof_fed = False

    async def next_request(self) -> tuple[h11.Request, bytes] | None:
        """Read one request and its body; None when the client closes the connection."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:  # curl, for big bodies
                    await self.stream.send_all(
                        self.frame(
                            h11.InformationalResponse(
                                status_code=100, headers=[], reason=b"Continue"
                            )
                        )
                    )
                if self.read_ahead:
                    self.h11.receive_data(self.read_ahead.pop(0))
                    continue
                if self.eof:
                    if self._eof_fed:
                        return None
                    self._eof_fed = True
                    self.h11.receive_data(b"")
                    continue
                data = await self.stream.receive_some(_RECEIVE_SIZE)
                if data:
                    self.h11.receive_data(data)
                else:
                    self.eof = True
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return request, bytes(body)
            else:  # ConnectionClosed, PAUSED
                return None

    async def watch(self, on_eof: Callable[[], None]) -> None:
        """Read while a response is in progress; call ``on_eof`` when the client hangs up.

        Bytes that arrive (a pipelined next request) are kept for :meth:`next_request`.
        """
        while True:
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if self.closing:
                return
            if not data:
                self.eof = True
                on_eof()
                return
            self.read_ahead.append(data)

    def frame(self, event: h11.Event) -> bytes:
        return self.h11.send(event) or b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def drip(self, data: bytes, size: int, interval: float) -> None:
        for start in range(0, len(data), size):
            if start:
                await trio.sleep(interval)
            await self.stream.send_all(data[start : start + size])

    async def close(self) -> None:
        self.closing = True
        await self.stream.aclose()

    async def reset(self) -> None:
        """Close with an RST (SO_LINGER 0) rather than a FIN."""
        self.closing = True
        try:
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # pragma: no cover - platform without SO_LINGER
            pass
        await self.stream.aclose()


_UNSCOPED = frozenset({"v1", "v1beta", "api"})
_GEMINI_METHODS: dict[str, Endpoint] = {
    "generateContent": "generate",
    "streamGenerateContent": "stream_generate",
    "countTokens": "count_tokens",
    "embedContent": "embed_content",
    "batchEmbedContents": "batch_embed",
}


def _route(method: str, path: str, headers: Mapping[str, str]) -> Route:
    parts = path.split("/")
    # "/{scenario}/v1/..." -> ["", scenario, "v1", ...]; "/v1/..." -> scenario "default".
    if len(parts) > 1 and parts[1] in _UNSCOPED:
        scenario, rest = "default", parts[1:]
    else:
        scenario, rest = unquote(parts[1]) if len(parts) > 1 else "", parts[2:]
    # Gemini's v1 surface shares "/v1/models/..." with OpenAI; its POST methods have a
    # ":verb" suffix no OpenAI path has (fine-tuned OpenAI model ids contain colons too,
    # but are only ever read with GET).
    if rest[:1] == ["v1beta"] or (
        method == "POST"
        and len(rest) == 3
        and rest[:2] == ["v1", "models"]
        and unquote(rest[2]).partition(":")[2] in _GEMINI_METHODS
    ):
        return _gemini_route(scenario, method, rest)
    if rest[:1] == ["api"]:
        endpoint: Endpoint = "unknown"
        if method == "POST" and rest == ["api", "chat"]:
            endpoint = "chat"
        elif method == "POST" and rest == ["api", "embed"]:
            endpoint = "embed"
        elif method == "GET" and rest == ["api", "tags"]:
            endpoint = "tags"
        return Route(scenario, "ollama", endpoint)
    if rest[:1] == ["openai"]:
        return _azure_route(scenario, method, rest)
    anthropic = ANTHROPIC_VERSION_HEADER in headers or "x-api-key" in headers
    by_header: Wire = "anthropic" if anthropic else "openai"
    if method == "POST":
        if rest == ["v1", "chat", "completions"]:
            return Route(scenario, "openai", "chat")
        if rest == ["v1", "embeddings"]:
            return Route(scenario, "openai", "embeddings")
        if rest == ["v1", "messages"]:
            return Route(scenario, "anthropic", "messages")
        if rest == ["v1", "messages", "count_tokens"]:
            return Route(scenario, "anthropic", "count_tokens")
    elif method == "GET":
        if rest == ["v1", "models"]:
            return Route(scenario, by_header, "models")
        if len(rest) == 3 and rest[:2] == ["v1", "models"] and rest[2]:
            return Route(scenario, by_header, "model", unquote(rest[2]))
    if rest[:2] == ["v1", "messages"]:
        by_header = "anthropic"
    return Route(scenario, by_header, "unknown")


def _gemini_route(scenario: str, method: str, rest: list[str]) -> Route:
    """``v1beta/models[/{model}[:{method}]]``: the model, and the method after the colon."""
    if len(rest) == 3 and rest[1] == "models":
        model, colon, verb = unquote(rest[2]).partition(":")
        if colon and method == "POST" and verb in _GEMINI_METHODS and model:
            return Route(scenario, "gemini", _GEMINI_METHODS[verb], model)
        if not colon and method == "GET" and model:
            return Route(scenario, "gemini", "model", model)
    if rest == [rest[0], "models"] and method == "GET":
        return Route(scenario, "gemini", "models")
    return Route(scenario, "gemini", "unknown")


def _azure_route(scenario: str, method: str, rest: list[str]) -> Route:
    """``openai/deployments/{deployment}/...`` (dated API) or ``openai/v1/...``."""
    if method == "POST" and len(rest) >= 4 and rest[1] == "deployments" and rest[2]:
        deployment = unquote(rest[2])
        if rest[3:] == ["chat", "completions"]:
            return Route(scenario, "azure", "chat", deployment, deployment, dated=True)
        if rest[3:] == ["embeddings"]:
            return Route(scenario, "azure", "embeddings", deployment, deployment, dated=True)
    if method == "GET" and rest == ["openai", "models"]:
        return Route(scenario, "azure", "models", dated=True)
    if method == "POST" and rest == ["openai", "v1", "chat", "completions"]:
        return Route(scenario, "azure", "chat")
    if method == "POST" and rest == ["openai", "v1", "embeddings"]:
        return Route(scenario, "azure", "embeddings")
    if method == "GET" and rest == ["openai", "v1", "models"]:
        return Route(scenario, "azure", "models")
    return Route(scenario, "azure", "unknown")


class FakeUpstream:
    """A running fake upstream; get one from :func:`open_fake_upstream`.

    Attributes:
        url: ``"http://127.0.0.1:PORT"``.
        requests: every request received, in order (empty if recording is off).

    Example::

        async with open_fake_upstream({"slow": Scenario(latency=Fixed(5.0))}) as up:
            with trio.move_on_after(0.1):
                await client.post(up.base_url("slow", "openai") + "/chat/completions", ...)
            await up.requests[-1].finished.wait()
            assert up.requests[-1].outcome == "client_disconnected"
            up.set_scenario("slow", Scenario())          # fast from now on
            assert up.stats("slow").client_disconnected == 1
    """

    url: str
    requests: list[RecordedRequest]

    def __init__(
        self, scenarios: Mapping[str, Scenario] | None, *, seed: int, record: bool
    ) -> None:
        now = trio.current_time()
        self.url = ""
        self.requests = []
        self._seed = seed
        self._record = record
        self._states: dict[str, ScenarioState] = {
            name: ScenarioState(name, scenario, seed, now)
            for name, scenario in (scenarios or {}).items()
        }
        self._default = Scenario()
        self._open_connections = 0
        # One wall-clock read, then trio's clock: "created" and reset timestamps advance
        # with virtual time under a MockClock.
        self._clock_origin = now
        self._wall_origin = datetime.now(UTC).timestamp()

    # -- public API ------------------------------------------------------------------

    def base_url(self, scenario: str, kind: str) -> str:
        """The ``base_url`` to give a client for ``scenario`` in the ``kind`` wire format.

        ``kind`` is a provider kind, as in the router's configuration; the URL is what
        that adapter (or the vendor's SDK) expects, since each appends its own paths:

        =====================================================  ==========================
        kind                                                   base URL
        =====================================================  ==========================
        ``openai``, ``openrouter``, ``groq``, ``together``,    ``{url}/{scenario}/v1``
        ``openai-compatible`` (+ ``/chat/completions``)
        ``anthropic`` (+ ``/v1/messages``)                     ``{url}/{scenario}``
        ``gemini`` (+ ``/models/{model}:generateContent``)     ``{url}/{scenario}/v1beta``
        ``ollama`` (+ ``/api/chat``)                           ``{url}/{scenario}``
        ``azure``: the resource endpoint (+ ``/openai/...``)   ``{url}/{scenario}``
        =====================================================  ==========================

        The scenario name is percent-encoded into one path segment.

        Raises:
            ValueError: ``kind`` is none of these (``"mock"`` included: the mock provider
                is in-process and has no URL).

        Example::

            openai.AsyncOpenAI(base_url=upstream.base_url("slow", "openai"), api_key="sk-x")
            GeminiProvider(api_key="k", base_url=upstream.base_url("slow", "gemini"))
            AzureOpenAIProvider(api_key="k", endpoint=upstream.base_url("slow", "azure"))
        """
        try:
            _, path = UPSTREAM_KINDS[kind]
        except KeyError:
            expected = ", ".join(map(repr, UPSTREAM_KINDS))
            raise ValueError(f"unknown wire format {kind!r}; expected one of {expected}") from None
        return f"{self.url}/{quote(scenario, safe='')}{path}"

    def stats(self, scenario: str | None = None) -> UpstreamStats:
        """A frozen snapshot of ``scenario``'s counters, or of all scenarios together."""
        if scenario is not None:
            state = self._states.get(scenario)
            if state is None:
                return UpstreamStats(open_connections=self._open_connections)
            return state.snapshot(self._open_connections)
        faults: dict[str, int] = {}
        for state in self._states.values():
            for kind, count in state.faults.items():
                faults[kind] = faults.get(kind, 0) + count
        states = self._states.values()
        return UpstreamStats(
            requests=sum(s.requests for s in states),
            completed=sum(s.completed for s in states),
            client_disconnected=sum(s.client_disconnected for s in states),
            faults=faults,
            in_flight=sum(s.in_flight for s in states),
            open_connections=self._open_connections,
        )

    def scenario(self, name: str) -> Scenario:
        """The scenario now installed under ``name`` (``Scenario()`` if none)."""
        state = self._states.get(name)
        return state.scenario if state is not None else self._default

    def set_scenario(self, name: str, scenario: Scenario) -> None:
        """Install ``scenario`` under ``name`` from the next request on.

        Fault request numbers and the random streams restart; counters carry on.
        Exchanges already in progress finish with the scenario they started with.
        """
        state = self._states.get(name)
        if state is None:
            self._states[name] = ScenarioState(name, scenario, self._seed, trio.current_time())
        else:
            state.install(scenario, trio.current_time())

    # -- plumbing --------------------------------------------------------------------

    def _state(self, name: str) -> ScenarioState:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = ScenarioState(
                name, self._default, self._seed, trio.current_time()
            )
        return state

    def _wall(self) -> float:
        return self._wall_origin + (trio.current_time() - self._clock_origin)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection(stream)
        self._open_connections += 1
        try:
            while True:
                try:
                    got = await conn.next_request()
                except h11.RemoteProtocolError as exc:
                    await self._reject_garbage(conn, exc)
                    return
                if got is None:
                    return
                request, body = got
                keep_alive = await self._exchange(conn, request, body)
                if not keep_alive or conn.h11.our_state is not h11.DONE:
                    return
                if conn.h11.their_state is not h11.DONE:
                    return
                conn.h11.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self._open_connections -= 1

    async def _reject_garbage(self, conn: _Connection, exc: h11.RemoteProtocolError) -> None:
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = str(exc).encode()
        headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
        headers.append(("connection", "close"))
        try:
            data = conn.frame(h11.Response(status_code=exc.error_status_hint, headers=headers))
            data += conn.frame(h11.Data(data=body)) + conn.frame(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        await conn.send(data)

    async def _exchange(self, conn: _Connection, request: h11.Request, raw_body: bytes) -> bool:
        """Answer one request; return whether the connection may serve another."""
        method = request.method.decode("ascii", "replace")
        path, _, query = request.target.decode("latin-1").partition("?")
        headers: dict[str, str] = {}
        for name_bytes, value_bytes in request.headers:
            name, value = name_bytes.decode("latin-1"), value_bytes.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body: Any = None
        body_error = False
        if raw_body:
            try:
                body = _decode_any(raw_body)
            except (msgspec.DecodeError, RecursionError):
                # RecursionError: nested deeper than msgspec decodes.  A bad body, not a
                # crash of the whole server.
                body_error = True

        route = _route(method, path, headers)
        state = self._state(route.scenario)
        scenario = state.scenario
        record = RecordedRequest(
            scenario=route.scenario,
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            model=_addressed_model(route, body),
            received_at=trio.current_time(),
        )
        if self._record:
            self.requests.append(record)
        state.requests += 1
        state.served += 1
        state.in_flight += 1
        keep_alive = False
        try:
            fault = select_fault(scenario.faults, state.served, state.fault_rng)
            delay = scenario.latency.sample(state.latency_rng)
            answer = self._answer(route, record, scenario, state, body, body_error, fault)
            if fault is not None and not _applies(fault, answer, route):
                fault = None
            fault_reply: Reply | None = None
            if fault is not None and (
                fault.kind == "status"
                or (fault.kind in ("midstream_error", "error_chunk") and isinstance(answer, Reply))
            ):
                fault_reply = self._status_fault(route.vendor, fault, state)

            deliver = partial(self._deliver, conn, record, state, answer, fault, fault_reply, delay)
            paced = isinstance(answer, StreamReply) and scenario.chunk_interval > 0
            if delay > 0 or fault is not None or paced:
                keep_alive = await _watching_for_hangup(conn, deliver)
            else:  # nothing to wait for: skip the watcher (the benchmarks' hot path)
                try:
                    keep_alive = await deliver()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.eof = True
        finally:
            state.in_flight -= 1
            if record.outcome == "pending" and conn.eof:
                record.outcome = "client_disconnected"
            if record.outcome == "completed":
                state.completed += 1
            elif record.outcome == "client_disconnected":
                state.client_disconnected += 1
            record.finished.set()
        return keep_alive and not conn.eof

    async def _deliver(
        self,
        conn: _Connection,
        record: RecordedRequest,
        state: ScenarioState,
        answer: Answer,
        fault: Fault | None,
        fault_reply: Reply | None,
        delay: float,
    ) -> bool:
        """Wait the latency, then send ``answer`` or inject ``fault``; set the outcome.

        Returns whether the connection is still usable.  A client that hangs up
        meanwhile cancels this (see :func:`_watching_for_hangup`), leaving the outcome
        "pending" for :meth:`_exchange` to turn into "client_disconnected".
        """
        interval = state.scenario.chunk_interval
        if fault is None or fault.kind == "content_filter":
            # The filter already shaped the answer; it is delivered like any other.
            if fault is not None:
                record.fault = fault.kind
                state.faults[fault.kind] = state.faults.get(fault.kind, 0) + 1
            if delay > 0:
                await trio.sleep(delay)
            if isinstance(answer, Reply):
                await self._send_reply(conn, record, answer)
            else:
                await self._send_stream(conn, record, answer, None, interval)
            record.outcome = "completed" if fault is None else f"fault:{fault.kind}"
            return True

        record.fault = fault.kind
        state.faults[fault.kind] = state.faults.get(fault.kind, 0) + 1
        if fault.kind == "hang":
            await trio.sleep_forever()
        if delay > 0:
            await trio.sleep(delay)
        keep_alive = True
        if fault.kind == "reset":
            await conn.reset()
            keep_alive = False
        elif fault_reply is not None:  # "status"; in-stream errors without a stream
            await self._send_reply(conn, record, fault_reply)
        elif isinstance(answer, StreamReply):
            keep_alive = await self._send_stream(conn, record, answer, fault, interval)
        elif fault.kind == "truncate":
            head = self._reply_head(conn, record, answer)
            half = answer.body[: len(answer.body) // 2]
            await conn.send(head + conn.frame(h11.Data(data=half)))
            await conn.close()
            keep_alive = False
        elif fault.kind == "malformed":
            broken = answer.body[: max(1, len(answer.body) // 2)]
            headers = [(k, v) for k, v in answer.headers if k != "content-length"]
            headers.append(("content-length", str(len(broken))))
            await self._send_reply(conn, record, Reply(answer.status, headers, broken))
        else:  # slow_drip
            await conn.send(self._reply_head(conn, record, answer))
            body = conn.frame(h11.Data(data=answer.body)) + conn.frame(h11.EndOfMessage())
            await conn.drip(body, fault.drip_bytes, interval or _DEFAULT_DRIP_INTERVAL)
        record.outcome = f"fault:{fault.kind}"
        return keep_alive

    def _reply_head(self, conn: _Connection, record: RecordedRequest, reply: Reply) -> bytes:
        record.status = reply.status
        reason = _REASONS.get(reply.status, b"")
        return conn.frame(
            h11.Response(status_code=reply.status, headers=reply.headers, reason=reason)
        )

    async def _send_reply(self, conn: _Connection, record: RecordedRequest, reply: Reply) -> None:
        data = self._reply_head(conn, record, reply)
        if record.method != "HEAD":  # HEAD: the headers of the answer, no body
            data += conn.frame(h11.Data(data=reply.body))
        data += conn.frame(h11.EndOfMessage())
        await conn.send(data)

    async def _send_stream(
        self,
        conn: _Connection,
        record: RecordedRequest,
        reply: StreamReply,
        fault: Fault | None,
        interval: float,
    ) -> bool:
        """Send an SSE stream; a fault strikes just before content chunk ``after_chunks``.

        ``interval`` separates content chunks; events with no pause between them go out
        in one write.  With ``slow_drip`` the whole body goes out ``drip_bytes`` at a
        time instead.  Returns whether the connection is still usable.
        """
        record.status = 200
        head = conn.frame(h11.Response(status_code=200, headers=reply.headers, reason=b"OK"))
        events = reply.head + reply.content + reply.tail
        if fault is not None and fault.kind == "slow_drip":
            await conn.send(head)
            body = conn.frame(h11.Data(data=b"".join(events))) + conn.frame(h11.EndOfMessage())
            await conn.drip(body, fault.drip_bytes, interval or _DEFAULT_DRIP_INTERVAL)
            return True

        first_content = len(reply.head)
        end_content = first_content + len(reply.content)
        strike = -1
        if fault is not None:
            strike = first_content + min(fault.after_chunks, len(reply.content))
        out = bytearray(head)  # framed bytes ready for the socket
        batch: list[bytes] = []  # SSE events not framed yet: one HTTP chunk per write

        def framed() -> bytes:
            if batch:
                out.extend(conn.frame(h11.Data(data=b"".join(batch))))
                batch.clear()
            data = bytes(out)
            out.clear()
            return data

        for index, event in enumerate(events):
            if index == strike:
                assert fault is not None
                if fault.kind == "truncate":
                    await conn.send(framed())
                    await conn.close()
                    return False
                if fault.kind in ("midstream_error", "error_chunk"):
                    if fault.kind == "error_chunk" and reply.error_chunk is not None:
                        batch.append(reply.error_chunk(fault.status))
                    else:
                        batch.append(reply.error_event)
                    await conn.send(framed() + conn.frame(h11.EndOfMessage()))
                    return True
                batch.append(reply.malformed_event)
            if interval > 0 and first_content < index < end_content:
                await conn.send(framed())
                await trio.sleep(interval)
            batch.append(event)
        await conn.send(framed() + conn.frame(h11.EndOfMessage()))
        return True

    # -- building answers --------------------------------------------------------------

    def _answer(
        self,
        route: Route,
        record: RecordedRequest,
        scenario: Scenario,
        state: ScenarioState,
        body: Any,
        body_error: bool,
        fault: Fault | None,
    ) -> Answer:
        vendor = FORMATS[route.vendor]
        request_id = f"req_fake{next(_ids):010d}"
        try:
            if route.endpoint == "unknown":
                return vendor.unknown_url_reply(record.method, record.path, request_id)
            headers, query = record.headers, record.query
            if scenario.require_auth and not vendor.authorized(headers, query, route):
                raise vendor.auth_error()
            vendor.check_request(headers, query, route)
            if body_error:
                raise RequestError(400, vendor.bad_json_message)
            return self._success(route, vendor, scenario, state, body, request_id, record, fault)
        except RequestError as exc:
            return vendor.error_reply(exc, request_id)

    def _success(
        self,
        route: Route,
        vendor: VendorFormat,
        scenario: Scenario,
        state: ScenarioState,
        body: Any,
        request_id: str,
        record: RecordedRequest,
        fault: Fault | None,
    ) -> Answer:
        now = trio.current_time()
        if route.endpoint in ("models", "model", "tags"):
            state.request_bucket.take(1, now)
            return vendor.models_reply(
                scenario, route.model_id, request_id, self._wall(), record.query
            )
        if route.endpoint in ("embeddings", "embed", "embed_content", "batch_embed"):
            reply, tokens = vendor.embeddings_reply(route, body, request_id)
            state.request_bucket.take(1, now)
            state.token_bucket.take(tokens, now)
            if scenario.ratelimit_headers:
                reply.headers += vendor.ratelimit_headers(state, self._wall(), None)
            return reply

        chat = vendor.read_chat(route, body, record.query)
        if route.endpoint == "count_tokens":
            return vendor.count_tokens_reply(chat.view.input_tokens, request_id)
        window = scenario.context_window
        if window is not None and chat.view.input_tokens > window:
            raise vendor.context_error(window, chat.view.input_tokens)

        plan = plan_reply(chat.view, scenario)
        if fault is not None and fault.kind == "content_filter" and vendor.has_filter:
            plan = filter_plan(plan, fault.after_chunks)
            blocked = vendor.prompt_blocked_error() if plan.prompt_blocked else None
            if blocked is not None:
                reply = vendor.error_reply(blocked, request_id)
                reply.filtered = True
                return reply
        state.request_bucket.take(1, now)
        state.token_bucket.take(plan.input_tokens + plan.output_tokens, now)
        extra = (
            vendor.ratelimit_headers(state, self._wall(), None)
            if scenario.ratelimit_headers
            else []
        )
        shape = Shape(
            chat=chat,
            n=next(_ids),
            created=int(self._wall()),
            cached=min(scenario.cached_tokens, plan.input_tokens),
            request_id=request_id,
            scenario=scenario,
            wall=self._wall(),
        )
        if chat.stream:
            return vendor.stream_reply(plan, shape, extra)
        reply = vendor.chat_reply(plan, shape)
        reply.headers += extra
        return reply

    def _status_fault(self, wire: Wire, fault: Fault, state: ScenarioState) -> Reply:
        vendor = FORMATS[wire]
        request_id = f"req_fake{next(_ids):010d}"
        status = fault.status
        retry_after = fault.retry_after
        if status == 429 and retry_after is None:
            retry_after = 1.0
        reply = vendor.error_reply(vendor.fault_error(status, state, retry_after), request_id)
        if retry_after is not None and vendor.retry_after_header:
            reply.headers.append(("retry-after", format_seconds(retry_after)))
            if vendor.retry_after_ms_header:
                reply.headers.append(("retry-after-ms", str(round(retry_after * 1000))))
        if status == 429:
            reply.headers += vendor.ratelimit_headers(state, self._wall(), retry_after)
        return reply


async def _watching_for_hangup(conn: _Connection, deliver: Callable[[], Awaitable[bool]]) -> bool:
    """Run ``deliver`` while reading the socket; a client hang-up cancels it at once.

    Without the read, a client that gives up during a long latency or a slow stream
    would go unnoticed until the next write fails (or forever, for a hang).
    """
    keep_alive = False
    done = False

    def on_eof() -> None:
        if not done:
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.watch, on_eof)
        try:
            keep_alive = await deliver()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.eof = True
        done = True
        nursery.cancel_scope.cancel()
    return keep_alive


_CHAT_ENDPOINTS = frozenset({"chat", "messages", "generate", "stream_generate"})


def _applies(fault: Fault, answer: Answer, route: Route) -> bool:
    """Faults that shape a body only strike answers that would have succeeded."""
    if fault.kind in ("status", "reset", "hang"):
        return True
    if fault.kind == "content_filter":
        if not FORMATS[route.vendor].has_filter or route.endpoint not in _CHAT_ENDPOINTS:
            return False
        if isinstance(answer, Reply) and answer.filtered:
            return True
    return isinstance(answer, StreamReply) or answer.status < 400


def _addressed_model(route: Route, body: Any) -> str | None:
    """The model a request addressed: Azure's deployment, Gemini's path, or the body's."""
    if route.model_id:
        return route.model_id
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return str(body["model"])
    return None


# --------------------------------------------------------------------------- entry points


@asynccontextmanager
async def open_fake_upstream(
    scenarios: Mapping[str, Scenario] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    record: bool = True,
) -> AsyncIterator[FakeUpstream]:
    """Start a fake upstream (every wire format above) in a nursery of its own.

    Args:
        scenarios: behaviours by name; any other name in a URL gets ``Scenario()``.
        host: the address to listen on.
        port: the port; 0 picks a free one (see :attr:`FakeUpstream.url`).
        seed: seeds every scenario's random streams (faults, latency).
        record: keep every request in :attr:`FakeUpstream.requests` (turn off for long
            benchmarks; the counters are kept either way).

    On exit the server stops and every connection is closed.

    Example::

        async with open_fake_upstream({"flaky": Scenario(faults=[Fault("reset", rate=0.2)])}) as up:
            async with httpx.AsyncClient() as client:
                r = await client.post(
                    up.base_url("flaky", "openai") + "/chat/completions",
                    headers={"authorization": "Bearer sk-test"},
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
    """
    upstream = FakeUpstream(scenarios, seed=seed, record=record)
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, upstream._serve_connection, port, host=host)
        )
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        upstream.url = f"http://{shown}:{bound_port}"
        try:
            yield upstream
        except BaseException as exc:
            # Re-raised outside the nursery so a user's error is not wrapped in a group.
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None


async def serve_fake_upstream(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    scenarios: Mapping[str, Scenario] | None = None,
    seed: int = 0,
    task_status: trio.TaskStatus[FakeUpstream] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a fake upstream until cancelled; ``nursery.start`` returns the :class:`FakeUpstream`.

    Requests are not recorded (a long-running server would grow without bound).

    Example::

        upstream = await nursery.start(partial(serve_fake_upstream, port=8080))
        print("listening on", upstream.url)
    """
    async with open_fake_upstream(
        scenarios, host=host, port=port, seed=seed, record=False
    ) as upstream:
        task_status.started(upstream)
        await trio.sleep_forever()
