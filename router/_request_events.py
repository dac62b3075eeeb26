"""One request's events: built only while someone listens, and the race's observer.

The router makes a :class:`RequestEvents` for a request when a listener or subscriber
is registered (never otherwise: no event object is built for nobody), and hands it to
the race, which tells it of each attempt in the task where the attempt runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from providers import Attempt, ChatRequest, ChatResponse, EmbeddingResponse

from ._events import (
    AttemptAdmitted,
    AttemptFinished,
    AttemptStarted,
    BudgetRefused,
    FallbackLaunched,
    HedgeLaunched,
    Listener,
    Operation,
    RequestFinished,
    RequestOutcome,
    RequestStarted,
    RetryScheduled,
)
from ._race import AttemptRecord

if TYPE_CHECKING:
    from ._stream import RouterStream

__all__ = ["RequestEvents"]


class RequestEvents:
    """One request's events (the race's observer), made only while someone listens."""

    __slots__ = (
        "emit",
        "inputs",
        "model",
        "operation",
        "request",
        "request_id",
        "stream",
        "t0",
    )

    def __init__(
        self,
        emit: Listener,
        request_id: str,
        model: str,
        operation: Operation,
        stream: bool,
        t0: float,
        request: ChatRequest | None,
        inputs: list[str] | None,
    ) -> None:
        self.emit = emit
        self.request_id = request_id
        self.model = model
        self.operation: Operation = operation
        self.stream = stream
        self.t0 = t0
        self.request = request
        self.inputs = inputs

    def started(self) -> None:
        self.emit(
            RequestStarted(
                time=self.t0,
                request_id=self.request_id,
                model=self.model,
                operation=self.operation,
                stream=self.stream,
            )
        )

    # -- the race's observer

    def attempt_started(self, record: AttemptRecord) -> None:
        c = record.candidate
        self.emit(
            AttemptStarted(
                time=trio.current_time() if record.start is None else record.start,
                request_id=self.request_id,
                model=self.model,
                provider=c.provider,
                provider_model=c.model,
                kind=record.kind,
                number=record.number,
            )
        )

    def attempt_finished(self, record: AttemptRecord) -> None:
        c = record.candidate
        error = record.error
        self.emit(
            AttemptFinished(
                time=trio.current_time() if record.end is None else record.end,
                request_id=self.request_id,
                model=self.model,
                provider=c.provider,
                provider_model=c.model,
                kind=record.kind,
                number=record.number,
                outcome=record.outcome or "cancelled",
                started=record.start,
                retries=record.retries,
                error_type=None if error is None else type(error).__name__,
                reason=record.reason,
                usage=record.usage,
                cost=record.cost,
            )
        )

    def admitted(self, record: AttemptRecord, granted_at: float, waited: float) -> None:
        c = record.candidate
        self.emit(
            AttemptAdmitted(
                time=granted_at,
                request_id=self.request_id,
                model=self.model,
                provider=c.provider,
                provider_model=c.model,
                kind=record.kind,
                number=record.number,
                retry=record.retries,
                waited=waited,
            )
        )

    def launched(self, record: AttemptRecord, previous: AttemptRecord | None) -> None:
        c = record.candidate
        now = trio.current_time() if record.start is None else record.start
        if record.kind == "hedge":
            self.emit(
                HedgeLaunched(
                    time=now,
                    request_id=self.request_id,
                    model=self.model,
                    provider=c.provider,
                    provider_model=c.model,
                    previous="" if previous is None else previous.candidate.provider,
                    delay=0.0
                    if previous is None or previous.start is None
                    else now - previous.start,
                )
            )
        else:
            error = None if previous is None else previous.error
            self.emit(
                FallbackLaunched(
                    time=now,
                    request_id=self.request_id,
                    model=self.model,
                    provider=c.provider,
                    provider_model=c.model,
                    failed=None if previous is None else previous.candidate.provider,
                    error_type=None if error is None else type(error).__name__,
                )
            )

    # -- the router's own

    def retry(self, provider: str, error_type: str, retry: int, delay: float) -> None:
        self.emit(
            RetryScheduled(
                time=trio.current_time(),
                request_id=self.request_id,
                model=self.model,
                provider=provider,
                error_type=error_type,
                retry=retry,
                delay=delay,
            )
        )

    def budget_refused(self, provider: str | None, scope: str, message: str) -> None:
        self.emit(
            BudgetRefused(
                time=trio.current_time(),
                request_id=self.request_id,
                model=self.model,
                provider=provider,
                scope=scope,
                message=message,
            )
        )

    def _finished(
        self,
        outcome: RequestOutcome,
        attempts: list[Attempt],
        *,
        winner: AttemptRecord | None = None,
        response: ChatResponse | EmbeddingResponse | None = None,
        cost: float | None = None,
        error: BaseException | None = None,
        ttft: float | None = None,
        streamed_text: str | None = None,
    ) -> None:
        now = trio.current_time()
        failed = outcome == "failed" and error is not None
        usage = None
        if response is not None:
            usage = response.usage
        elif winner is not None:
            usage = winner.usage
        self.emit(
            RequestFinished(
                time=now,
                request_id=self.request_id,
                model=self.model,
                operation=self.operation,
                stream=self.stream,
                outcome=outcome,
                latency=now - self.t0,
                ttft=ttft,
                provider=None if winner is None else winner.candidate.provider,
                provider_model=None if winner is None else winner.candidate.model,
                response_model=None if response is None else response.model,
                finish_reason=response.finish_reason
                if isinstance(response, ChatResponse)
                else None,
                usage=usage,
                cost=cost,
                spend=sum((a.cost for a in attempts if a.cost), 0.0),
                attempts=attempts,
                error_type=type(error).__name__ if failed else None,
                error=str(error) if failed else None,
                request=self.request,
                inputs=self.inputs,
                response=response if isinstance(response, ChatResponse) else None,
                streamed_text=streamed_text,
            )
        )

    def succeeded(
        self,
        winner: AttemptRecord,
        attempts: list[Attempt],
        response: ChatResponse | EmbeddingResponse,
        cost: float | None,
    ) -> None:
        self._finished("succeeded", attempts, winner=winner, response=response, cost=cost)

    def failed(self, error: BaseException, attempts: list[Attempt]) -> None:
        outcome: RequestOutcome = "failed" if isinstance(error, Exception) else "cancelled"
        self._finished(outcome, attempts, error=error)

    def stream_finished(
        self,
        stream: RouterStream,
        winner: AttemptRecord,
        attempts: list[Attempt],
        error: BaseException | None,
    ) -> None:
        response = stream.response
        outcome: RequestOutcome
        if response is not None:
            outcome = "succeeded"
        elif isinstance(error, Exception):
            outcome = "failed"
        else:
            outcome = "cancelled"  # the caller left early, or was cancelled
        texts = stream._texts
        self._finished(
            outcome,
            attempts,
            winner=winner,
            response=response,
            cost=None if response is None else response.cost,
            error=error,
            ttft=None if winner.end is None else winner.end - self.t0,
            streamed_text="".join(texts) if response is None and texts else None,
        )
