"""The stateful harness: a hypothesis state machine over a router on virtual time.

:class:`RouterMachine` opens a router over scripted :class:`~providers.testing.MockProvider`
targets on trio's ``MockClock`` and lets hypothesis drive it: send requests (one or
several at once), let time pass, flip a provider between answering, failing, being rate
limited and being slow.  After every step it checks the invariants a router with a sound
policy keeps; a subclass adds its own (``@invariant()`` methods) and chooses providers,
strategy and budget (class attributes, or :meth:`RouterMachine.make_config`).

How trio and hypothesis meet.  Hypothesis calls rules synchronously, one after another,
on a machine it builds per example; a router lives inside ``async with open_router()``,
inside one ``trio.run``.  So each machine runs its own ``trio.run`` (on a
``MockClock``) in a worker thread, holding the router open for the whole example, and
each rule hands one step to it with ``trio.from_thread.run`` and waits for it: exactly
one side runs at a time.  Virtual time moves only inside a step: the clock autojumps
(threshold 0) while a step runs and is frozen (threshold ``inf``) between steps, so
timers in the router (breakers, supervision) fire at the same virtual instants whatever
the host thread does.  With hypothesis loaded trio's scheduler is deterministic and
seeded by hypothesis, and the router is opened with a fixed seed: an example replays
exactly.  Every step ends with no request in flight (a request still running after
``step_timeout`` virtual seconds is itself a failure: a hang).
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import msgspec
import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from providers import ChatRequest, LLMError, Message
from providers.testing import MockProvider, MockResponse

from ._config import RouterConfig, validate_config
from ._events import AttemptStarted, RequestStarted, RouterEvent
from ._policy import Candidate, Needs, Plan, Strategy, TargetHealth
from ._router import Router, open_router
from ._scripted import RequestResult, harness_config
from ._strategies import resolve, strategy_name
from .errors import RateLimited, ServerError
from .stats import RouterStatistics

__all__ = ["BEHAVIOURS", "Behaviour", "RouterMachine"]

T = TypeVar("T")

#: How a scripted provider behaves until the next flip.
Behaviour = Literal["ok", "slow", "fail", "rate_limited"]
BEHAVIOURS: tuple[Behaviour, ...] = ("ok", "slow", "fail", "rate_limited")


def _recording(inner: Strategy, machine: RouterMachine) -> Strategy:
    """The route's strategy, recording each plan with the breakers' states it was made
    against (the plan is the inner strategy's, unchanged; errors name the inner one)."""

    def record(
        candidates: Sequence[Candidate],
        needs: Needs,
        health: Mapping[str, TargetHealth],
        now: float,
        rng: Any,
    ) -> Plan:
        plan = inner(candidates, needs, health, now, rng)
        machine._planned(plan, now)
        return plan

    module, colon, qualname = strategy_name(inner).partition(":")
    record.__module__, record.__qualname__ = (module, qualname) if colon else ("?", module)
    return record


class RouterMachine(RuleBasedStateMachine):
    """A hypothesis state machine over a router on virtual time, for your own invariants.

    Subclass it, choose what it routes (class attributes, or override
    :meth:`make_config`), add ``@invariant()`` methods, and run it as a test with
    ``TestMine = Mine.TestCase``.  Rules: :meth:`send` (1 to ``max_load`` requests at
    once to :attr:`route`), :meth:`advance` (let virtual time pass), :meth:`flip` (set a
    provider's :data:`Behaviour`).  Built-in invariants, checked after every step:

    * every request ended with an answer or a typed :class:`~providers.LLMError`
      (anything else, or no end within :attr:`step_timeout`, fails the step);
    * no first attempt went to a provider whose breaker was open when the request was
      planned, unless the plan was in panic (or marked that target ``panic``);
    * no spend cap's spend exceeds its limit;
    * the strategy never failed (raised, or returned an invalid plan);
    * the statistics add up: ``requests == succeeded + failed + cancelled``, and
      ``succeeded`` is the number of answers the machine received.

    Inside your invariants and rules, :attr:`results`, :attr:`events` and
    :attr:`violations` are plain lists; :meth:`statistics`, :meth:`health` and
    :meth:`run` reach the router in its trio thread.
    """

    #: Provider names (each a scripted MockProvider).
    providers: ClassVar[Sequence[str]] = ("alpha", "beta", "gamma")
    #: The route's strategy: a built-in name, an import path, or a Strategy object.
    strategy: ClassVar[str | Strategy] = "fallback"
    #: The route the machine sends to.
    route: ClassVar[str] = "policy"
    #: A spend cap on the route, dollars per day (``None``: no cap).
    budget: ClassVar[float | None] = None
    #: Seconds a healthy answer takes (virtual); ``slow`` is 20 times this.
    latency: ClassVar[float] = 1.0
    #: The router's seed.
    seed: ClassVar[int] = 0
    #: Most requests one ``send`` step sends at once.
    max_load: ClassVar[int] = 4
    #: Virtual seconds a step may take before its requests count as hung.
    step_timeout: ClassVar[float] = 3600.0

    def make_config(self) -> RouterConfig:
        """The router's configuration; override to configure anything else.

        Every configured provider is given a scripted MockProvider; :attr:`route` must
        be one of its routes (or a ``provider:model`` target).  The constructor
        validates it as ``open_router`` does: a mistake (a strategy that cannot be
        resolved...) is a ``ConfigError`` naming the field's path.  The default is
        :func:`harness_config` of the class attributes.
        """
        # Read from the class as written: a plain function assigned to ``strategy``
        # would otherwise come back as a bound method.
        strategy = inspect.getattr_static(type(self), "strategy")
        if isinstance(strategy, staticmethod):
            strategy = strategy.__func__
        return harness_config(
            self.providers, route=self.route, strategy=strategy, budget=self.budget
        )

    def __init__(self) -> None:
        super().__init__()
        # Validated before the strategies are resolved and wrapped, so that a bad one is
        # the ConfigError at its path (``$.routes.policy.strategy``) open_router gives.
        config = validate_config(self.make_config())
        if self.route not in config.routes and ":" not in self.route:
            raise ValueError(
                f"{type(self).__name__}.route is {self.route!r}, which make_config() does "
                f"not configure; its routes: {sorted(config.routes)}"
            )
        # Each route's strategy, resolved and wrapped to record its plans.
        routes = {}
        for name, rc in config.routes.items():
            threshold = config.panic_threshold if rc.panic_threshold is None else rc.panic_threshold
            wrapped = _recording(resolve(rc.strategy, threshold), self)
            routes[name] = msgspec.structs.replace(rc, strategy=wrapped)
        self.config = msgspec.structs.replace(config, routes=routes)
        #: The scripted providers, by name.
        self.mocks: dict[str, MockProvider] = {
            name: MockProvider(name=name, default=self._reply("ok"))
            for name in self.config.providers
        }
        #: Each provider's behaviour now.
        self.behaviours: dict[str, Behaviour] = dict.fromkeys(self.mocks, "ok")
        #: Every request's result, in the order they ended.
        self.results: list[RequestResult] = []
        #: Every event the router emitted.
        self.events: list[RouterEvent] = []
        #: Broken invariants found by the event listener (reported by an invariant).
        self.violations: list[str] = []
        self.sent = 0
        self._clock = trio.testing.MockClock(autojump_threshold=0)
        self._router: Router | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.CancelScope | None = None
        self._failure: BaseException | None = None
        self._planning: str | None = None
        self._plans: dict[str, tuple[Plan, Mapping[str, str]]] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._trio_thread, name="RouterMachine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._router is None:
            self._thread.join()
            assert self._failure is not None
            raise self._failure

    # -- the trio side

    def _trio_thread(self) -> None:
        try:
            trio.run(self._main, clock=self._clock)
        except BaseException as exc:  # reported to the host thread
            self._failure = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with open_router(self.config, providers=self.mocks, seed=self.seed) as router:
            router.add_listener(self._listen)
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._stop:
                self._router = router
                self._clock.autojump_threshold = math.inf  # frozen between steps
                self._ready.set()
                await trio.sleep_forever()

    async def _step(self, fn: Callable[[Router], Awaitable[T]]) -> T:
        self._clock.autojump_threshold = 0
        try:
            assert self._router is not None
            with trio.move_on_after(self.step_timeout):
                return await fn(self._router)
            raise AssertionError(
                f"a step was still running after {self.step_timeout:g} s of virtual time: a hang"
            )
        finally:
            self._clock.autojump_threshold = math.inf

    def _listen(self, event: RouterEvent) -> None:
        self.events.append(event)
        if isinstance(event, RequestStarted):
            self._planning = event.request_id
        elif isinstance(event, AttemptStarted) and event.number == 1:
            planned = self._plans.pop(event.request_id, None)
            if planned is None:
                return
            plan, breakers = planned
            if breakers.get(event.provider) != "open" or plan.panic:
                return
            if any(c.panic for c in plan.targets if c.provider == event.provider):
                return
            self.violations.append(
                f"request {event.request_id}: first attempt to {event.provider!r} at "
                f"t={event.time:g}, whose breaker was open when it was planned (not in panic)"
            )

    def _planned(self, plan: Plan, now: float) -> None:
        if self._planning is None or self._router is None:
            return
        actors = self._router._actors
        breakers: dict[str, str] = {n: actor.breaker.state(now) for n, actor in actors.items()}
        self._plans[self._planning] = (plan, breakers)
        self._planning = None

    def _reply(self, behaviour: Behaviour) -> MockResponse:
        if behaviour == "ok":
            return MockResponse(text="ok", latency=self.latency)
        if behaviour == "slow":
            return MockResponse(text="slow", latency=20 * self.latency)
        if behaviour == "fail":
            return MockResponse(error=ServerError("scripted failure"), latency=self.latency / 10)
        return MockResponse(
            error=RateLimited("scripted rate limit", retry_after=30 * self.latency),
            latency=self.latency / 10,
        )

    # -- the host side: what rules and invariants call

    def run(self, fn: Callable[[Router], Awaitable[T]]) -> T:
        """Run ``await fn(router)`` in the router's trio thread, on virtual time (which
        moves only while it runs); return its result or raise its exception.  A step
        still running after :attr:`step_timeout` virtual seconds is cancelled and
        fails with ``AssertionError``."""
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError(f"the machine's router is not running: {self._failure!r}")
        return trio.from_thread.run(self._step, fn, trio_token=self._token)

    def statistics(self) -> RouterStatistics:
        """``router.statistics()``, read in the router's thread."""

        async def read(router: Router) -> RouterStatistics:
            return router.statistics()

        return self.run(read)

    def now(self) -> float:
        """``trio.current_time()`` of the machine's run."""
        return self._clock.current_time()

    def teardown(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.cancel, trio_token=self._token)
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    # -- rules

    def request(self) -> ChatRequest:
        """The request ``send`` sends; override to send something else."""
        return ChatRequest(model=self.route, messages=[Message.user("hi")])

    @rule(load=st.integers(min_value=1, max_value=64))
    def send(self, load: int) -> None:
        """Send ``load`` (at most :attr:`max_load`) requests at once; wait for them all."""
        count = min(load, self.max_load)
        self.sent += count
        request = self.request()
        problems: list[str] = []

        async def one(router: Router) -> None:
            sent = trio.current_time()
            try:
                response = await router.complete(request)
            except LLMError as exc:
                self.results.append(RequestResult(sent=sent, ended=trio.current_time(), error=exc))
            except Exception as exc:
                problems.append(f"a request raised {type(exc).__name__}: {exc}, not an LLMError")
            else:
                self.results.append(
                    RequestResult(sent=sent, ended=trio.current_time(), response=response)
                )

        async def step(router: Router) -> None:
            # A hang fails the step in run(), after step_timeout.
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one, router)

        self.run(step)
        assert not problems, "; ".join(problems)

    @rule(seconds=st.floats(min_value=0.0, max_value=120.0))
    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass with nothing sent."""

        async def sleep(router: Router) -> None:
            await trio.sleep(seconds)

        self.run(sleep)

    @rule(which=st.integers(min_value=0, max_value=63), behaviour=st.sampled_from(BEHAVIOURS))
    def flip(self, which: int, behaviour: Behaviour) -> None:
        """Set provider number ``which`` (modulo their number) to ``behaviour``."""
        names = sorted(self.mocks)
        name = names[which % len(names)]
        self.behaviours[name] = behaviour
        self.mocks[name].set_default(self._reply(behaviour))

    # -- the built-in invariants

    @invariant()
    def every_request_ended(self) -> None:
        """Every request sent has ended with an answer or a typed error."""
        assert len(self.results) == self.sent, (self.sent, len(self.results))
        for result in self.results:
            assert (result.response is None) != (result.error is None), result

    @invariant()
    def no_first_attempt_to_an_open_breaker(self) -> None:
        """No first attempt to a provider whose breaker was open at plan time, unless
        in panic."""
        assert not self.violations, self.violations

    @invariant()
    def spend_within_caps(self) -> None:
        """No spend cap's spend (in its current window) exceeds its limit."""
        for budget in self.statistics().budgets:
            assert budget.spent <= budget.limit * (1 + 1e-9), budget

    @invariant()
    def strategy_never_failed(self) -> None:
        """The strategy never raised or returned an invalid plan (``strategy_errors``)."""
        failed = self.statistics().strategy_errors
        assert failed == 0, f"the strategy failed {failed} time(s): {self._strategy_errors()}"

    def _strategy_errors(self) -> list[str]:
        return [
            str(r.error) for r in self.results if r.error is not None and "strategy" in str(r.error)
        ][:3]

    @invariant()
    def statistics_add_up(self) -> None:
        """requests == succeeded + failed + cancelled; succeeded == answers received."""
        s = self.statistics()
        assert s.requests == s.succeeded + s.failed + s.cancelled, s
        answered = sum(1 for r in self.results if r.response is not None)
        assert s.succeeded == answered, (s.succeeded, answered)
