"""The one owner of the Redis connection: key names, the time bound, up or down.

:class:`SharedClient` holds the coredis client, the key prefix and the per-operation
bound (``SharedConfig.timeout``).  Every Redis operation of the router goes through
:meth:`SharedClient.call`, which runs a registered Lua script (EVALSHA, reloaded on
NOSCRIPT by coredis) inside ``trio.move_on_after(timeout)``.  Whatever goes wrong there
— a timeout, a refused connection, an error reply — is one thing to the caller:
:class:`SharedUnavailable`, and the client switches the whole process to *local* limits
(``shared = False``), tells its listeners (each provider's gate), and emits a
:class:`~router.events.SharedLimitsChanged` event.

Its own task (:meth:`SharedClient.run`) keeps the state honest:

- while Redis answers, every ``heartbeat`` seconds it records this process as alive
  (a sorted set of process ids scored by Redis's clock; an id silent for three
  heartbeats is dropped) and learns how many processes are alive: the divisor of the
  fair share each process falls back to;
- while Redis does not, it retries with exponential backoff (:func:`reconnect_delay`)
  and switches back to shared limits at the first heartbeat that succeeds.

Listeners (:class:`Listener`) also hear each heartbeat, to renew their leases.
Closers (:meth:`SharedClient.add_closer`) run as the client closes: what the gates,
budgets and breakers still have queued for Redis (releases, settles, opens and probe
tokens) goes then, whenever it was queued — even after their own tasks ended, and even
when the router is cancelled from outside: coredis's connection runs in a shielded task
of the client's (:meth:`SharedClient._hold`), so a deadline around the router does not
end it before the closers have sent what is queued.

Secrets: the URL's password never appears in a repr, an event, a log line or an
error this module makes; the reason a switch happened names the exception type and
its message with the URL and password scrubbed out.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Protocol
from urllib.parse import unquote, unquote_plus, urlsplit

import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from providers import Scrubber

from .._config import SharedConfig, redact_url
from .._events import SharedLimitsChanged
from ._stats import SharedStatistics

__all__ = [
    "Listener",
    "SharedClient",
    "SharedStatistics",
    "SharedUnavailable",
    "load_script",
    "reconnect_delay",
]

logger = logging.getLogger("trio_llm_router")

#: The ``password`` query parameter's values (coredis authenticates with them too).
_QUERY_PASSWORD = re.compile(r"(?:^|&)password=([^&#]*)")

#: A process silent for this many heartbeats is no longer counted as alive.
HEARTBEATS_TO_DIE = 3

#: The first reconnection attempt waits about this long; each next one twice as long.
FIRST_BACKOFF = 0.05


class SharedUnavailable(Exception):
    """Redis did not answer within the bound (or answered with an error): use local limits.

    Internal: never reaches a caller of the router.
    """


def load_script(name: str, *, prelude: Sequence[str] = ()) -> str:
    """The text of ``router/_shared/<name>.lua``, after the ``prelude`` files' texts."""
    folder = resources.files(__package__ or "router._shared")
    parts = [(folder / f"{n}.lua").read_text("utf-8") for n in (*prelude, name)]
    return "\n".join(parts)


def reconnect_delay(attempt: int, max_backoff: float, rng: random.Random) -> float:
    """Seconds before reconnection attempt ``attempt`` (0, 1, ...): exponential, jittered.

    ``min(max_backoff, FIRST_BACKOFF · 2^attempt)``, scaled by a factor drawn in
    [0.5, 1): processes that lost Redis together do not all knock at the same instant.
    """
    base = min(max_backoff, FIRST_BACKOFF * 2.0 ** min(attempt, 60))
    return base * (0.5 + rng.random() / 2.0)


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception in ``group`` (however nested) besides the cancellations it
    caused, or ``group`` itself."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


class Listener(Protocol):
    """What the client tells each provider's gate."""

    def switched(self, shared: bool, processes: int) -> None:
        """Limits are now shared (Redis answers) or local at 1/``processes`` of each."""

    async def heartbeat(self) -> None:
        """A heartbeat succeeded: renew what needs renewing (bounded by the client)."""


class SharedClient:
    """The coredis client, the key prefix, the time bound and the shared/local state.

    Synopsis::

        client = SharedClient(config.shared, url, on_event=hub.emit)
        async with client:
            await nursery.start(client.run)
            script = client.script("admit", prelude=("gcra",))
            try:
                reply = await client.call(script, keys, args)
            except SharedUnavailable:
                ...  # local limits now
    """

    def __init__(
        self,
        config: SharedConfig,
        url: str,
        *,
        on_event: Callable[[SharedLimitsChanged], None] | None = None,
        rng: random.Random | None = None,
        process_id: str | None = None,
    ) -> None:
        self.config = config
        self.prefix = config.prefix
        self.timeout = config.timeout
        self.process_id = process_id or secrets.token_hex(8)
        self._on_event = on_event
        self._rng = rng or random.Random()
        parts = urlsplit(url)
        hidden = [url, redact_url(url)]
        for password in (parts.password, *_QUERY_PASSWORD.findall(parts.query)):
            if password:
                hidden += [password, unquote(password), unquote_plus(password)]
        self._scrub = Scrubber([h for h in hidden if h])
        self._shown = redact_url(url)
        self._redis: coredis.Redis[bytes] = coredis.Redis.from_url(
            url,
            retry_policy=NoRetryPolicy(),
            decode_responses=False,
            connect_timeout=config.timeout,
        )
        #: The one connection every operation is written to (coredis multiplexes
        #: requests on it); ``None`` until the first operation, or after it failed.
        self._connection: Any = None
        self._listeners: list[Listener] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._scripts: dict[str, Any] = {}
        #: True while Redis decides the limits.
        self.shared = False
        #: Live processes last seen through heartbeats (1 until one is seen).
        self.processes = 1
        self.reason: str | None = "not connected to Redis yet"
        self._since = trio.current_time()
        self._switches = 0
        self._failures = 0
        self._lost = trio.Event()
        self._closed = trio.Event()
        self._host: Any = None
        self._heartbeat = self.script("heartbeat")

    def __repr__(self) -> str:
        state = "shared" if self.shared else "local"
        return f"<SharedClient {self._shown} prefix={self.prefix!r} {state}>"

    async def __aenter__(self) -> SharedClient:
        # coredis's connections run in a task group it opens as it is entered: entered
        # in a task of ours, under a shield, so a cancellation from outside (a deadline
        # around the router, as it fires) does not end the connection before the
        # client's close has sent what is queued.  The body stays cancellable.
        self._host = trio.open_nursery()
        nursery = await self._host.__aenter__()
        try:
            await nursery.start(self._hold)
        except BaseException:
            self._closed.set()
            await self._host.__aexit__(None, None, None)
            raise
        return self

    async def _hold(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Hold coredis's client open, shielded, until the client has closed (then
        coredis closes within ``timeout``)."""
        with trio.CancelScope(shield=True) as scope:
            async with self._redis:
                task_status.started()
                await self._closed.wait()
                scope.deadline = trio.current_time() + self.timeout

    async def __aexit__(self, *exc: object) -> None:
        try:
            with trio.CancelScope(shield=True):
                # One bound for all the close sends to Redis: the closers, then the
                # leave from the live set with whatever the closers left of it.
                deadline = trio.current_time() + self.timeout
                # What is still queued for Redis goes first (a lease freed, a settle
                # made after the task that sends them ended): the closers together, on
                # the one connection.
                with trio.move_on_at(deadline):
                    try:
                        async with trio.open_nursery() as nursery:
                            for closer in self._closers:
                                nursery.start_soon(closer)
                    except BaseExceptionGroup as group:
                        # Closers raise nothing: what comes is one exception from
                        # outside (a KeyboardInterrupt delivered mid-close), to come
                        # out as itself rather than wrapped.
                        raise _sole(group) from None
                if self.shared:
                    # Leave the live set at once, so the others' fair share grows now
                    # rather than three heartbeats from now.  Best effort, bounded.
                    with trio.move_on_at(deadline):
                        try:
                            await self._redis.zrem(self.key("processes"), [self.process_id])
                        except (coredis.exceptions.RedisError, OSError):
                            pass
        finally:
            self._closed.set()  # coredis's client closes in its own task
            await self._host.__aexit__(None, None, None)

    # -- keys and scripts -----------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A key in this deployment's namespace: ``prefix:part:part``."""
        return ":".join((self.prefix, *parts))

    def script(self, name: str, *, prelude: Sequence[str] = ()) -> Any:
        """The registered script ``router/_shared/<name>.lua`` (after ``prelude``)."""
        cached = self._scripts.get(name)
        if cached is None:
            cached = self._redis.register_script(load_script(name, prelude=prelude))
            self._scripts[name] = cached
        return cached

    def add_listener(self, listener: Listener) -> None:
        """Tell ``listener`` of every switch, and of each heartbeat."""
        self._listeners.append(listener)
        listener.switched(self.shared, self.processes)

    def add_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Await ``closer`` as the client closes, before it leaves Redis: to send what
        its owner still has queued.  Closers run together, shielded, within one
        ``timeout``; each sends through :meth:`call` (so nothing goes while limits are
        local) and raises nothing."""
        self._closers.append(closer)

    # -- one bounded operation --------------------------------------------------------

    async def call(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` within the bound; its reply.

        Raises:
            SharedUnavailable: limits are local (already, or from now: Redis timed out
                or failed, and the switch has happened).
        """
        if not self.shared:
            raise SharedUnavailable(self.reason)
        # One bound for the whole operation, however it goes: a NOSCRIPT answered late
        # leaves the reload only what is left of it, never a second ``timeout``.
        deadline = trio.current_time() + self.timeout
        try:
            connection = self._connection
            if connection is not None and connection.usable:
                try:
                    # The common case, the hot path: one request on the held
                    # connection, bounded by the request's own response timeout (no
                    # cancel scope of ours to make per admission).
                    return await connection.create_request(
                        b"EVALSHA", script.sha, len(keys), *keys, *args, timeout=self.timeout
                    )
                except coredis.exceptions.NoScriptError:
                    pass  # Redis restarted or its scripts were flushed
            with trio.move_on_at(deadline):
                return await self._evalsha(script, keys, args)
            raise TimeoutError
        except TimeoutError:
            self._fail(f"Redis did not answer within {self.timeout * 1000:g} ms")
            raise SharedUnavailable(self.reason) from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            self._fail(self._describe(exc))
            raise SharedUnavailable(self.reason) from None

    async def _evalsha(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``script`` (SCRIPT LOAD and again on NOSCRIPT), connecting first if
        the held connection is gone; the caller bounds it.

        Every request is written to one connection, taken from coredis's pool once and
        kept while it is usable, rather than through the client's command layer (pool
        checkout, retry policy, telemetry span, per-command callbacks): that layer was
        about half of a round trip's cost on loopback, and every admission pays it.
        coredis multiplexes requests on a connection in order, and a request whose
        caller has gone still consumes its reply, so the connection stays in step.
        """
        connection = self._connection
        if connection is None or not connection.usable:
            self._connection = None
            pool = self._redis.connection_pool
            connection = await pool.get_connection()
            pool.release(connection)  # held by this client, shared with the pool's users
            self._connection = connection
        try:
            return await connection.create_request(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except coredis.exceptions.NoScriptError:
            await connection.create_request(b"SCRIPT", b"LOAD", script.script)
            return await connection.create_request(b"EVALSHA", script.sha, len(keys), *keys, *args)

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(f"Redis failed: {type(exc).__name__}: {exc}")

    def _fail(self, reason: str) -> None:
        """An operation failed: count it; switch to local limits if they were shared."""
        self._failures += 1
        if self.shared:
            self._switch(False, reason)
            self._lost.set()
        else:
            self.reason = reason

    def _switch(self, shared: bool, reason: str | None) -> None:
        self.shared = shared
        self.reason = reason
        now = trio.current_time()
        self._since = now
        self._switches += 1
        if shared:
            logger.info(
                "shared limits: Redis answers again; limits are shared (%d processes)",
                self.processes,
            )
        else:
            logger.warning(
                "shared limits: %s; falling back to local limits at 1/%d of each",
                reason,
                self.processes,
            )
        for listener in self._listeners:
            listener.switched(shared, self.processes)
        if self._on_event is not None:
            self._on_event(
                SharedLimitsChanged(
                    time=now,
                    state="shared" if shared else "local",
                    reason=reason,
                    processes=self.processes,
                )
            )

    # -- the maintenance task -------------------------------------------------------------

    async def _beat(self) -> bool:
        """One heartbeat, bounded: the live-process count, or ``False`` on failure."""
        ttl = int(self.config.heartbeat * HEARTBEATS_TO_DIE * 1_000_000)
        with trio.move_on_after(self.timeout):
            try:
                live = await self._evalsha(
                    self._heartbeat, [self.key("processes")], [self.process_id, ttl]
                )
            except (coredis.exceptions.RedisError, OSError) as exc:
                self._fail(self._describe(exc))
                return False
            if type(live) is not int or not 0 <= live <= 1_000_000:
                self._fail(
                    self._scrub(
                        "Redis answered heartbeat.lua with a malformed reply: "
                        f"expected a process count, got {str(live)[:40]!r}"
                    )
                )
                return False
            processes = max(1, live)
            if processes != self.processes:
                self.processes = processes
                for listener in self._listeners:
                    listener.switched(self.shared, processes)
            return True
        self._fail(f"Redis did not answer within {self.timeout * 1000:g} ms")
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeats while Redis answers; reconnection with backoff while it does not.

        The first heartbeat is tried before ``task_status.started()``: a router whose
        Redis is up starts with shared limits.  Runs until cancelled.
        """
        if await self._beat():
            self._switch(True, None)
        else:
            self._switch(False, self.reason)  # said once: the router starts on local limits
        task_status.started()
        attempt = 0
        while True:
            if self.shared:
                attempt = 0
                for listener in list(self._listeners):
                    await listener.heartbeat()
                self._lost = trio.Event()
                with trio.move_on_after(self.config.heartbeat):
                    await self._lost.wait()
                if self.shared:
                    await self._beat()
                continue
            await trio.sleep(reconnect_delay(attempt, self.config.max_backoff, self._rng))
            attempt += 1
            if await self._beat():
                self._switch(True, None)

    def statistics(self) -> SharedStatistics:
        """A frozen snapshot of the connection's state."""
        return SharedStatistics(
            state="shared" if self.shared else "local",
            reason=self.reason,
            processes=self.processes,
            since=self._since,
            switches=self._switches,
            failures=self._failures,
            process_id=self.process_id,
        )
