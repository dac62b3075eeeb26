"""Gateway keys: who is calling, which models they may use, and how much.

``[gateway.keys.NAME]`` (:class:`~router.config.GatewayKeyConfig`) defines a key by
name.  Its value comes from the environment (``key_env``) or is given only as its
sha256 (``key_sha256``); either way the gateway keeps nothing but the 32-byte digest.

Identifying a caller (:meth:`GatewayKeys.identify`)
    The key comes as ``Authorization: Bearer <key>`` (OpenAI's SDK) or ``x-api-key:
    <key>`` (Anthropic's SDK).  Its sha256 is compared with *every* configured digest
    by ``hmac.compare_digest``, with no early exit, so the time taken says nothing
    about which key, or how much of one, matched.  Comparing digests rather than the
    values also makes the comparison's length fixed.  A missing or unknown key is a
    401; the presented value is never repeated (in the reply, a log line or an error).

Admitting a request (:meth:`GatewayKeys.admit`), in this order, each refusal undoing
what the earlier steps took:

1. **routes**: the model string must be one the key may use (403).  A route name is
   matched against the key's ``routes`` as it is; anything else against its
   ``provider:model`` target (a bare model id is resolved as the router resolves it).
   Patterns are fnmatch's (``openai:*``).  The verdict is cached per key and model.
2. **rpm**: a token bucket of capacity ``rpm_burst`` (default ``rpm``) refilling at
   ``rpm / 60`` per second, one token per request (429 with ``retry-after``: the
   seconds until a token is there, rounded up).
3. **tpm**: a bucket counted in tokens: the request's estimated input plus its output
   budget (``max_tokens``, or the router's ``default_max_tokens``), taken at admission
   and corrected to the usage reported when the answer comes (no usage: the output
   part is refunded).  A request larger than the bucket can never pass: a 400.
4. **spend cap**: a :class:`~router._budget.Budget` (the router's own cap arithmetic):
   the request *reserves* an upper bound of what it may cost before it is routed, and
   *settles* with what the router charged once it ends.  Because admission holds
   ``spent + reserved + estimate <= cap`` and no await separates the check from the
   reservation, concurrent requests of one key never cross its cap together while
   each costs no more than it reserved.  The reservation is what the router's own
   accounting can charge when every planned target is tried once::

       reserve = max_t full(t) + (n - 1) · max_t prompt(t)

   over the ``n`` targets of the request's plan (``full``: the estimated input and the
   output budget, priced; ``prompt``: the input alone, which is what the router charges
   an attempt that lost a race or failed).  A request whose cost is unknown when it
   ends (cancelled before its answer, with no trace) is charged its reservation.
   Unpriced models cost nothing here, as under the router's own caps.  A request
   without ``max_tokens`` of a key with a tpm or a cap is sent with the router's
   ``default_max_tokens`` (:meth:`GatewayKeys.prepare`), the output it was charged for.

All of it is O(1) per request once built (a handful of keys: the digest loop is over
them), and none of it exists when no key is configured.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec
import trio

from providers import Attempt, BudgetExceeded, ChatRequest, ConfigError, Message, RateLimited, Usage
from router.config import GatewayKeyConfig, RouterConfig
from router.policy import Needs, estimated_cost

from .._budget import Budget, period_seconds
from .._limiter import TokenBucket
from ._gateway_wire import BadRequest

if TYPE_CHECKING:
    from router import Router
    from router._shared._client import SharedClient
    from router._shared._keys import SharedKeyLimits

__all__ = [
    "GatewayKeys",
    "KeyState",
    "KeyStatistics",
    "Ticket",
    "key_digest",
    "key_sha256",
    "new_key",
]

logger = logging.getLogger("trio_llm_router")

#: Keys shorter than this are refused at start: a short key can be guessed.
MIN_KEY_LENGTH = 16

#: Cached (key, model) verdicts per key before the cache starts again.
_MAX_VERDICTS = 1024


def key_digest(value: str) -> bytes:
    """The sha256 of a key's value (UTF-8): all the gateway keeps of it."""
    # surrogatepass: a str from an in-process caller may hold lone surrogates; they
    # hash (and then match nothing) instead of raising from here.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def key_sha256(value: str) -> str:
    """What ``key_sha256`` takes for the key ``value``: its sha256, lower-case hex.

    Example::

        >>> key_sha256("sk-gw-example-0123456789")[:16]
        'cdfba9cbf84ac6f2'
    """
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A new random gateway key: ``sk-gw-`` and 256 bits from :mod:`secrets`."""
    return "sk-gw-" + secrets.token_urlsafe(32)


class KeyState:
    """One configured key: its digest, its patterns and its limits' state.

    The key's *value* is not here (nor anywhere in the process): only its digest.
    """

    __slots__ = (
        "budget",
        "config",
        "digest",
        "name",
        "patterns",
        "refused",
        "requests",
        "rpm",
        "shared",
        "spent",
        "tpm",
        "verdicts",
    )

    def __init__(self, name: str, config: GatewayKeyConfig, digest: bytes, now: float) -> None:
        self.name = name
        self.config = config
        self.digest = digest
        self.patterns = None if config.routes is None else tuple(config.routes)
        self.rpm = _bucket(config.rpm, config.rpm_burst, now)
        self.tpm = _bucket(config.tpm, config.tpm_burst, now)
        self.budget: Budget | None = None
        if config.spend_cap is not None:
            period = (
                math.inf if config.spend_period is None else period_seconds(config.spend_period)
            )
            self.budget = Budget(
                f"gateway key {name!r}", limit=config.spend_cap, period=period, start=now
            )
        self.verdicts: dict[str, bool] = {}
        #: ``[shared]``: this key's limits on Redis (its buckets above are then the
        #: fallback at the process's fair share).
        self.shared: SharedKeyLimits | None = None
        #: Requests admitted, refused (any limit), and dollars settled: for statistics.
        self.requests = 0
        self.refused = 0
        self.spent = 0.0

    def __repr__(self) -> str:
        return f"<gateway key {self.name!r}>"


def _bucket(limit: int | None, burst: int | None, now: float) -> TokenBucket | None:
    if limit is None:
        return None
    return TokenBucket(rate=limit / 60.0, capacity=float(burst or limit), now=now)


class KeyStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen view of one gateway key (never its value).

    ``requests``, ``refused`` and ``spent`` count this process's requests.
    ``rpm_tokens`` and ``tpm_tokens`` are this process's own buckets: with ``[shared]``
    they decide only while ``limits`` is ``"local"`` (at the fair share); while it is
    ``"shared"`` Redis decides and they are not drawn from (Redis's buckets are not read
    for a snapshot).  ``reserved`` is the cap's reservations (with ``[shared]``: every
    worker's, as Redis last said).
    """

    name: str
    requests: int
    refused: int
    spent: float
    reserved: float
    rpm_tokens: float | None
    tpm_tokens: float | None
    #: ``[shared]``, a key with an rpm or tpm: ``"shared"`` (Redis decides) or
    #: ``"local"`` (this process's buckets, at its fair share); else ``None``.
    limits: str | None = None


class GatewayKeys:
    """The configured keys: identify a caller, admit its requests, settle them.

    Built when the gateway starts (inside trio): each ``key_env`` is read then, hashed,
    and forgotten.

    Raises:
        ConfigError: a ``key_env`` variable is not set (or is empty, or shorter than
            16 characters), or two keys have the same value; the path names the key's
            field and the message the variable, never a value.
    """

    def __init__(
        self,
        config: RouterConfig,
        environ: Mapping[str, str] | None = None,
        *,
        shared: Mapping[str, SharedKeyLimits] | None = None,
        client: SharedClient | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        now = trio.current_time()
        self.config = config
        self.states: tuple[KeyState, ...] = ()
        self.by_name: dict[str, KeyState] = {}
        seen: dict[bytes, str] = {}
        for name, key in config.gateway.keys.items():
            path = f"$.gateway.keys.{name}"
            if key.key_env is not None:
                value = env.get(key.key_env, "").strip()  # as a presented key is
                if not value:
                    raise ConfigError(
                        f"gateway key {name!r}: the environment variable {key.key_env} "
                        "is not set (or is empty)",
                        path=f"{path}.key_env",
                    )
                if len(value) < MIN_KEY_LENGTH:
                    raise ConfigError(
                        f"gateway key {name!r}: the value of {key.key_env} is shorter than "
                        f"{MIN_KEY_LENGTH} characters, which can be guessed; use a long "
                        "random one (llm-router key new)",
                        path=f"{path}.key_env",
                    )
                digest = key_digest(value)
            else:
                assert key.key_sha256 is not None  # the config's validation says so
                digest = bytes.fromhex(key.key_sha256)
            other = seen.setdefault(digest, name)
            if other != name:
                raise ConfigError(
                    f"gateway keys {other!r} and {name!r} have the same value: a caller "
                    "must be one key or the other",
                    path=f"{path}.key_env" if key.key_env else f"{path}.key_sha256",
                )
            state = KeyState(name, key, digest, now)
            limits = None if shared is None else shared.get(name)
            if limits is None and client is not None and _limited(key):
                raise ConfigError(
                    f"gateway key {name!r}: it has limits the router's own configuration "
                    "does not give it, so they are not shared on Redis (each worker "
                    "would keep its own); serve the router's configuration",
                    path=path,
                )
            if limits is not None:
                if limits.config != key:
                    raise ConfigError(
                        f"gateway key {name!r}: its limits differ from those of the "
                        "router's own configuration, which its shared limits (Redis) "
                        "were made from; serve the router's configuration",
                        path=path,
                    )
                state.shared = limits
                if limits.budget is not None:
                    state.budget = limits.budget
            self.by_name[name] = state
        self.states = tuple(self.by_name.values())
        if client is not None and any(s.shared is not None for s in self.states):
            client.add_listener(self)  # the fair share, while Redis does not answer

    # -- the shared limits' listener ([shared]) -------------------------------------------

    def switched(self, shared: bool, processes: int) -> None:
        """Size each shared key's local buckets to 1/``processes`` of its limits: what
        decides while Redis does not answer (a no-op for the shared state itself)."""
        now = trio.current_time()
        n = max(1, processes)
        for state in self.states:
            if state.shared is None:
                continue
            config = state.config
            if state.rpm is not None and config.rpm is not None:
                state.rpm.resize(config.rpm / 60.0 / n, (config.rpm_burst or config.rpm) / n, now)
            if state.tpm is not None and config.tpm is not None:
                state.tpm.resize(config.tpm / 60.0 / n, (config.tpm_burst or config.tpm) / n, now)

    async def heartbeat(self) -> None:
        """Nothing to renew: a key holds no leases."""

    # -- who -------------------------------------------------------------------------

    def identify(self, headers: Mapping[str, str]) -> KeyState:
        """The key the request carries; :class:`BadRequest` 401 when none or unknown."""
        presented = None
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                presented = value.strip()
        if presented is None:
            presented = headers.get("x-api-key", "").strip() or None
        if presented is None:
            raise BadRequest(
                "You didn't provide an API key. Send your gateway key as "
                "'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                status=401,
                code="missing_api_key",
            )
        digest = key_digest(presented)
        found: KeyState | None = None
        for state in self.states:  # every one, no early exit: constant time in the keys
            if hmac.compare_digest(digest, state.digest):
                found = state
        if found is None:
            raise BadRequest(
                "Incorrect API key provided: it is not one of this gateway's keys.",
                status=401,
                code="invalid_api_key",
            )
        return found

    # -- what ------------------------------------------------------------------------

    def allows_listed(self, state: KeyState, model: str) -> bool:
        """Whether ``state`` may use ``model``, a route name or a ``provider:model``."""
        patterns = state.patterns
        if patterns is None:
            return True
        return any(fnmatch.fnmatchcase(model, p) for p in patterns)

    def check_model(self, state: KeyState, router: Router, model: str) -> None:
        """Refuse with a 403 when ``state`` may not use ``model`` (cached per model)."""
        if state.patterns is None:
            return
        verdict = state.verdicts.get(model)
        if verdict is None:
            if model in self.config.routes or ":" in model:
                target = model
            else:  # a bare model id: the target the router resolves it to
                plan = router.plan(model)
                found = [c.target for c in plan.targets] + [e.target for e in plan.excluded]
                target = found[0] if found else model
            verdict = self.allows_listed(state, target)
            if len(state.verdicts) >= _MAX_VERDICTS:
                state.verdicts.clear()
            state.verdicts[model] = verdict
        if not verdict:
            state.refused += 1
            raise BadRequest(
                f"gateway key {state.name!r} may not use model {model[:200]!r}; it may use: "
                f"{', '.join(state.patterns) or 'nothing'}",
                status=403,
                code="model_not_allowed",
                param="model",
            )

    # -- how much ----------------------------------------------------------------------

    def prepare(self, state: KeyState, request: ChatRequest) -> ChatRequest:
        """``request`` as the key sends it: its name in the metadata (``gateway_key``,
        replacing one the client sent), which the audit record and the events carry;
        and, when the key has a ``tpm`` or a spend cap, an output budget.

        Without ``max_tokens`` an upstream may answer at any length (OpenAI's API sets
        no default), while the key was charged for ``default_max_tokens``: so such a
        request is sent with ``max_tokens = default_max_tokens``, what it was charged
        for, and the reservation is a real bound.
        """
        metadata = {**request.metadata, "gateway_key": state.name}
        if request.max_tokens is None and (state.tpm is not None or state.budget is not None):
            return msgspec.structs.replace(
                request, metadata=metadata, max_tokens=self.config.default_max_tokens
            )
        return msgspec.structs.replace(request, metadata=metadata)

    async def admit(
        self,
        state: KeyState,
        router: Router,
        model: str,
        *,
        request: ChatRequest | None = None,
        inputs: Sequence[str] | None = None,
        streaming: bool = False,
    ) -> Ticket:
        """Check ``model`` and take the key's limits for one request, or refuse.

        With ``[shared]`` the rpm/tpm and the spend cap are asked of Redis (one round
        trip each, within the shared client's bound); without it, or while Redis does
        not answer, this process's buckets decide (at its fair share).  No checkpoint
        when nothing is shared.

        Raises:
            BadRequest: 403, the key may not use ``model``; 400, the request is larger
                than the key's tpm bucket (it could never pass).
            RateLimited: the key's rpm or tpm bucket is short (``retry_after`` set).
            BudgetExceeded: the key's spend cap has no room for the request.
        """
        self.check_model(state, router, model)
        config = state.config
        needs: Needs | None = None
        if state.tpm is not None or state.budget is not None:
            needs = _needs(router, self.config, model, request, inputs, streaming)
        tokens = 0.0
        if state.tpm is not None:
            assert needs is not None
            assert config.tpm is not None
            tokens = float(needs.input_tokens + needs.output_tokens)
            capacity = float(config.tpm_burst or config.tpm)
            if tokens > capacity:
                state.refused += 1
                raise BadRequest(
                    f"this request needs ~{tokens:.0f} tokens (input estimate + max_tokens), "
                    f"more than gateway key {state.name!r} may use at once under its tpm "
                    f"limit ({capacity:.0f}); lower max_tokens or shorten the prompt",
                    param="max_tokens",
                )
        limits = state.shared
        on_redis = False
        if limits is not None and limits.shared:
            decision = await limits.admit(tokens)  # shielded: its outcome is known
            try:
                # Cancelled while Redis answered (a deadline, a disconnect): the grant
                # goes back, as one cancelled during the reservation below does.
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                if decision is not None and decision.granted:
                    limits.undo(tokens)
                raise
            if decision is not None:
                if not decision.granted:
                    state.refused += 1
                    self._refused(state, decision.hold)
                    raise self._over_rate(state, decision.hold, decision.retry_after, tokens)
                on_redis = True
        now = trio.current_time()
        if not on_redis:
            self._take_local(state, tokens, now)
        reserved = 0.0
        budget = state.budget
        if budget is not None:
            assert needs is not None
            reserved = _reservation(router, model, request, needs)
            try:
                if limits is not None and limits.budget is not None:
                    fits = await limits.reserve(reserved)
                    now = trio.current_time()
                else:
                    fits = budget.try_reserve(reserved, now)
            except BaseException:
                self._undo(state, now, on_redis, tokens)
                raise
            if not fits:
                self._undo(state, now, on_redis, tokens)
                state.refused += 1
                self._refused(state, "spend cap")
                raise BudgetExceeded(
                    _over_cap(state, budget, reserved, now), retry_after=_reset(state, now)
                )
        state.requests += 1
        return Ticket(state, needs, tokens, reserved, on_redis)

    def _take_local(self, state: KeyState, tokens: float, now: float) -> None:
        """Take one request and ``tokens`` from this process's buckets, or refuse."""
        rpm = state.rpm
        if rpm is not None and not rpm.try_take(1.0, now):
            state.refused += 1
            self._refused(state, "rpm")
            raise self._over_rate(state, "rpm", rpm.wait_time(1.0, now), tokens)
        tpm = state.tpm
        if tpm is not None and (tokens > tpm.capacity or not tpm.try_take(tokens, now)):
            # (More than the bucket holds: only while its fair share is a fraction
            # of the limit, Redis not answering; it is back within a heartbeat.)
            wait = tpm.wait_time(tokens, now) if tokens <= tpm.capacity else 1.0
            if rpm is not None:
                rpm.give(1.0, now)
            state.refused += 1
            self._refused(state, "tpm")
            raise self._over_rate(state, "tpm", wait, tokens)

    @staticmethod
    def _over_rate(state: KeyState, hold: str, wait: float, tokens: float) -> RateLimited:
        config = state.config
        if hold == "tpm":
            return RateLimited(
                f"gateway key {state.name!r} is over its rate limit of {config.tpm} tokens "
                f"per minute (this request needs ~{tokens:.0f}); retry after {wait:.1f}s",
                retry_after=wait,
            )
        return RateLimited(
            f"gateway key {state.name!r} is over its rate limit of {config.rpm} requests "
            f"per minute; retry after {wait:.1f}s",
            retry_after=wait,
        )

    @staticmethod
    def _undo(state: KeyState, now: float, on_redis: bool, tokens: float) -> None:
        """Give back what a refused (or cancelled) request took of the rate limits."""
        if on_redis:
            assert state.shared is not None
            state.shared.undo(tokens)
            return
        if state.rpm is not None:
            state.rpm.give(1.0, now)
        if tokens and state.tpm is not None:
            state.tpm.give(tokens, now)

    @staticmethod
    def _refused(state: KeyState, limit: str) -> None:
        logger.info(
            "gateway key %s: request refused by its %s limit",
            state.name,
            limit,
            extra={"gateway_key": state.name, "limit": limit},
        )

    def statistics(self) -> dict[str, KeyStatistics]:
        """A frozen snapshot of every key: requests, refusals, spend (never a value)."""
        now = trio.current_time()
        return {
            s.name: KeyStatistics(
                name=s.name,
                requests=s.requests,
                refused=s.refused,
                spent=s.spent,
                reserved=0.0 if s.budget is None else s.budget.statistics(now).reserved,
                rpm_tokens=None if s.rpm is None else s.rpm.tokens(now),
                tpm_tokens=None if s.tpm is None else s.tpm.tokens(now),
                limits=_limits(s),
            )
            for s in self.states
        }


class Ticket:
    """One admitted request's hold on its key's limits, settled exactly once."""

    __slots__ = ("_needs", "_on_redis", "_reserved", "_settled", "_state", "_tokens")

    def __init__(
        self,
        state: KeyState,
        needs: Needs | None,
        tokens: float,
        reserved: float,
        on_redis: bool = False,
    ) -> None:
        self._state = state
        self._needs = needs
        self._tokens = tokens
        self._reserved = reserved
        #: The rate limits were taken on Redis (reconciled there).
        self._on_redis = on_redis
        self._settled = False

    def settle(self, attempts: Sequence[Attempt] | None, usage: Usage | None) -> None:
        """Replace the holds with what the request used: the usage reported (tpm) and
        what the router charged its attempts (spend).  ``attempts`` ``None``: unknown
        (charged the reservation, and the tokens stay taken)."""
        if self._settled:
            return
        self._settled = True
        state = self._state
        now = trio.current_time()
        tpm = state.tpm
        if tpm is not None and self._needs is not None:
            if usage is not None and (usage.input_tokens or usage.output_tokens):
                actual = float(usage.input_tokens + usage.output_tokens)
            elif attempts is None:
                actual = self._tokens
            else:  # no usage: the prompt was most likely read; the output refunded
                actual = float(self._needs.input_tokens)
            if self._on_redis:
                assert state.shared is not None
                state.shared.release(actual - self._tokens)
            elif actual > self._tokens:
                tpm.take(actual - self._tokens, now)
            else:
                tpm.give(self._tokens - actual, now)
        budget = state.budget
        if budget is not None:
            if attempts is None:
                cost = self._reserved
            else:
                cost = math.fsum(a.cost for a in attempts if a.cost is not None)
            budget.settle(self._reserved, cost, now)
            state.spent += cost


def _limits(state: KeyState) -> str | None:
    """What decides the key's rpm/tpm: ``"shared"``, ``"local"`` or (unshared) ``None``."""
    shared = state.shared
    if shared is None or shared.gate is None:
        return None
    return "shared" if shared.shared else "local"


def _limited(key: GatewayKeyConfig) -> bool:
    """Whether ``key`` has a limit that ``[shared]`` puts on Redis."""
    return key.rpm is not None or key.tpm is not None or key.spend_cap is not None


def _needs(
    router: Router,
    config: RouterConfig,
    model: str,
    request: ChatRequest | None,
    inputs: Sequence[str] | None,
    streaming: bool,
) -> Needs:
    if request is not None:
        return Needs.of(request, streaming=streaming, default_max_tokens=config.default_max_tokens)
    # Embeddings: the texts counted as one prompt (a slight overestimate: message
    # overheads), no output.
    texts = ChatRequest(model=model, messages=[Message.user(t) for t in inputs or ()])
    counted = Needs.of(texts, streaming=False, default_max_tokens=1)
    return Needs(embeddings=True, input_tokens=counted.input_tokens, output_tokens=0)


def _reservation(router: Router, model: str, request: ChatRequest | None, needs: Needs) -> float:
    """An upper bound of what the router charges the request: see the module doc."""
    plan = router.plan(request if request is not None else model, needs)
    prompt_only = msgspec.structs.replace(needs, output_tokens=0)
    full = 0.0
    prompt = 0.0
    for c in plan.targets:
        full = max(full, estimated_cost(c, needs) or 0.0)
        prompt = max(prompt, estimated_cost(c, prompt_only) or 0.0)
    return full + max(0, len(plan.targets) - 1) * prompt


def _reset(state: KeyState, now: float) -> float | None:
    """Seconds until the key's cap resets; ``None``: never (no ``spend_period``; shared,
    its one window ends in decades, which is not a wait to announce)."""
    assert state.budget is not None
    if state.config.spend_period is None:
        return None
    resets_at = state.budget.statistics(now).resets_at
    return None if math.isinf(resets_at) else max(0.0, resets_at - now)


def _over_cap(state: KeyState, budget: Budget, reserved: float, now: float) -> str:
    stats = budget.statistics(now)
    period = state.config.spend_period
    per = "for this gateway process's lifetime" if period is None else f"per {period}"
    if period is None and state.shared is not None:
        per = "in all (every worker of this gateway together; it never resets)"
    if isinstance(period, float):
        per = f"per {period:g}s"
    wait = _reset(state, now)
    when = "" if wait is None else f"; it resets in {wait:.0f}s"
    return (
        f"gateway key {state.name!r} has reached its spend cap of ${stats.limit:g} {per}: "
        f"${stats.spent:.4f} spent, ${stats.reserved:.4f} reserved by requests in flight, "
        f"and this request may cost up to ${reserved:.4f}{when}"
    )
