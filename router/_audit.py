"""The audit log: one JSON line per request, written from a thread, never with a key.

Configured by ``[audit]`` (:class:`~router.config.AuditConfig`).  The router calls
:meth:`AuditLog.listen` with each ``RequestFinished`` event; that only appends the event
to a bounded in-memory queue (a full queue drops it, counted).  A task in the router's
nursery takes the queue in batches (what arrived within ``BATCH_WINDOW`` of the first
record) and hands each batch to a worker thread
(``trio.to_thread.run_sync``), which builds the records, scrubs and writes them, and
rotates the file; the event loop never waits on the disk.  When the router closes, the
task makes a last flush (shielded) and closes the file.

One record, one line (fields that do not apply are ``null``)::

    {"time": "2025-01-01T12:00:00.000Z",       request start, UTC
     "request_id": "1f3a9c2e-42", "operation": "chat", "stream": false,
     "model": "fast",                            the model string as requested
     "outcome": "succeeded",                     succeeded | failed | cancelled
     "provider": "openai", "provider_model": "gpt-4o-mini",   the winning target
     "response_model": "gpt-4o-mini-2024-07-18", "finish_reason": "stop",
     "latency": 0.532, "ttft": null,             seconds; ttft for streams
     "usage": {"input_tokens": 12, "output_tokens": 40, ...},
     "cost": 0.0000258, "spend": 0.0000261,      the answer's; all attempts'
     "attempts": [{"provider": ..., "kind": "primary", "outcome": "failed", ...}],
     "error": null,                              {"type": ..., "message": ...}
     "metadata": {...},                          the request's metadata
     "content": "hashed",                        the content mode of input/output
     "input": [{"role": "user", "content": "<sha256 hex>"}],
     "output": {"text": "<sha256 hex>", "tool_calls": []}}

Every text written (content, error messages, attempt reasons, metadata) first has the
router's API keys replaced by ``***`` and every ``redact`` pattern's matches by
``[REDACTED]``; only then is it truncated or hashed.  The encoded line is scrubbed of
the keys once more before it is written.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, BinaryIO

import msgspec
import trio

from providers import Attempt, ChatRequest, ChatResponse, ConfigError, Message, Usage
from providers._errors import scrub

from ._config import AuditConfig
from ._events import RequestFinished, RouterEvent

__all__ = ["AuditLog", "AuditStatistics"]

logger = logging.getLogger("trio_llm_router")

_REDACTED = "[REDACTED]"

#: Seconds the writer task lets records gather after the first one arrives, so a busy
#: router hands the thread one batch per window rather than one per request.
BATCH_WINDOW = 0.05


class AuditStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen view of the audit log: records written, dropped, waiting; file size."""

    path: str
    written: int
    dropped: int
    pending: int
    errors: int
    rotations: int
    bytes: int


class AuditLog:
    """The audit log's listener, writer task and file (made by ``open_router``)."""

    def __init__(self, config: AuditConfig, secrets: Sequence[str]) -> None:
        self._config = config
        self._path = config.path
        self._secrets = [s for s in secrets if len(s) >= 4]
        self._secret_bytes = [s.encode() for s in self._secrets]
        self._patterns = [re.compile(p) for p in config.redact]
        self._pending: list[RequestFinished] = []
        self._writing = 0
        self._wakeup = trio.Event()
        self._closed = False
        self._file: BinaryIO | None = None
        self._size = 0
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.rotations = 0
        self._warned_drop = False
        self._warned_error = False
        # Wall-clock time through trio's clock (as the actors read vendors' reset
        # times): read once, then advanced by trio time, so records made under a
        # virtual clock carry consistent timestamps.
        self._wall0 = datetime.datetime.now(datetime.UTC).timestamp()
        self._trio0 = trio.current_time()

    # -- the event loop's side: cheap

    def listen(self, event: RouterEvent) -> None:
        """The router's listener: queue a finished request's record, or count a drop."""
        if type(event) is not RequestFinished:
            return
        if self._closed or len(self._pending) >= self._config.max_pending:
            self.dropped += 1
            if not self._warned_drop:
                self._warned_drop = True
                logger.warning(
                    "audit log %s: %s; dropping records (counted in statistics().audit.dropped)",
                    self._path,
                    "closed" if self._closed else f"{len(self._pending)} records waiting",
                    extra={"audit_path": self._path},
                )
            return
        self._pending.append(event)
        self._wakeup.set()

    def statistics(self) -> AuditStatistics:
        """A frozen snapshot of the log's counters."""
        return AuditStatistics(
            path=self._path,
            written=self.written,
            dropped=self.dropped,
            pending=len(self._pending) + self._writing,
            errors=self.errors,
            rotations=self.rotations,
            bytes=self._size,
        )

    async def open(self) -> None:
        """Open the file for appending (in a thread), or raise ConfigError."""
        try:
            await trio.to_thread.run_sync(self._open)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the audit log {self._path!r}: {exc.strerror}", path="$.audit.path"
            ) from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches as they come until cancelled; then a last flush, and close."""
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                await trio.sleep(BATCH_WINDOW)
                self._wakeup = trio.Event()
                await self._flush()
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                await self._flush()
                await trio.to_thread.run_sync(self.close)

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        self._writing = len(batch)
        started = False

        def write() -> None:
            nonlocal started
            started = True
            self._write(batch)

        try:
            await trio.to_thread.run_sync(write)
        except BaseException:
            if not started:
                # Cancelled before the thread took it (the router is closing): the
                # final flush writes it.
                self._pending[:0] = batch
            raise
        finally:
            self._writing = 0

    # -- the worker thread's side

    def _open(self) -> None:
        if self._file is None:
            self._file = open(self._path, "ab")  # noqa: SIM115 - closed by close()
            self._size = self._file.tell()

    def close(self) -> None:
        """Close the file (idempotent)."""
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def _write(self, batch: list[RequestFinished]) -> None:
        try:
            lines = [self._line(event) for event in batch]
            self._open()
            limit = self._config.rotate_bytes
            chunk: list[bytes] = []
            for line in lines:
                if limit is not None and self._size and self._size + len(line) > limit:
                    self._write_chunk(chunk)
                    chunk = []
                    self._rotate()
                chunk.append(line)
                self._size += len(line)
            self._write_chunk(chunk)
            self.written += len(lines)
        except Exception as exc:
            self.errors += len(batch)
            if not self._warned_error:
                self._warned_error = True
                logger.error(
                    "audit log %s: cannot write (%s: %s); records are lost (counted in "
                    "statistics().audit.errors)",
                    self._path,
                    type(exc).__name__,
                    exc,
                    extra={"audit_path": self._path},
                )

    def _write_chunk(self, chunk: list[bytes]) -> None:
        if chunk and self._file is not None:
            self._file.write(b"".join(chunk))
            self._file.flush()

    def _rotate(self) -> None:
        """``path`` → ``path.1`` → ... → ``path.<keep>``; the oldest is dropped."""
        self.close()
        path, keep = self._path, self._config.keep
        if keep == 0:
            os.remove(path)
        else:
            for i in range(keep - 1, 0, -1):
                if os.path.exists(f"{path}.{i}"):
                    os.replace(f"{path}.{i}", f"{path}.{i + 1}")
            os.replace(path, f"{path}.1")
        self.rotations += 1
        self._open()

    # -- building a record

    def _clean(self, text: str) -> str:
        text = scrub(text, self._secrets)
        for pattern in self._patterns:
            text = pattern.sub(_REDACTED, text)
        return text

    def _content(self, text: str) -> str:
        text = self._clean(text)
        mode = self._config.content
        if mode == "hashed":
            return hashlib.sha256(text.encode()).hexdigest()
        if mode == "truncated":
            limit = self._config.max_chars
            if len(text) > limit:
                return f"{text[:limit]}…[{len(text) - limit} more chars]"
        return text

    def _message(self, message: Message) -> dict[str, Any]:
        out: dict[str, Any] = {"role": message.role, "content": self._content(message.text)}
        images = len(message.images)
        if images:
            out["images"] = images
        if message.tool_calls:
            out["tool_calls"] = [
                {"name": call.name, "arguments": self._content(_arguments(call.arguments))}
                for call in message.tool_calls
            ]
        return out

    def _input(self, event: RequestFinished) -> list[Any] | None:
        if event.request is not None:
            return [self._message(m) for m in event.request.messages]
        if event.inputs is not None:
            return [self._content(text) for text in event.inputs]
        return None

    def _output(self, event: RequestFinished) -> dict[str, Any] | None:
        response = event.response
        if response is not None:
            return {
                "text": self._content(response.text),
                "tool_calls": [
                    {"name": call.name, "arguments": self._content(_arguments(call.arguments))}
                    for call in response.tool_calls
                ],
            }
        if event.streamed_text is not None:
            return {"text": self._content(event.streamed_text), "partial": True}
        return None

    def _attempt(self, attempt: Attempt) -> dict[str, Any]:
        return {
            "provider": attempt.provider,
            "model": attempt.model,
            "kind": attempt.kind,
            "outcome": attempt.outcome,
            "start": attempt.start,
            "end": attempt.end,
            "retries": attempt.retries,
            "error_type": attempt.error_type,
            "reason": None if attempt.reason is None else self._clean(attempt.reason),
            "usage": _usage(attempt.usage),
            "cost": attempt.cost,
            "wasted_tokens": attempt.wasted_tokens,
            "hedge_delay": attempt.hedge_delay,
        }

    def _line(self, event: RequestFinished) -> bytes:
        started = self._wall0 + (event.time - event.latency - self._trio0)
        request: ChatRequest | None = event.request
        response: ChatResponse | None = event.response
        with_content = self._config.content != "none"
        record = {
            "time": _iso(started),
            "request_id": self._clean(event.request_id),
            "operation": event.operation,
            "stream": event.stream,
            "model": self._clean(event.model),
            "outcome": event.outcome,
            "provider": event.provider,
            "provider_model": event.provider_model,
            "response_model": event.response_model,
            "finish_reason": event.finish_reason,
            "latency": round(event.latency, 6),
            "ttft": None if event.ttft is None else round(event.ttft, 6),
            "usage": _usage(event.usage),
            "cost": event.cost,
            "spend": event.spend,
            "attempts": [self._attempt(a) for a in event.attempts],
            "error": None
            if event.error_type is None
            else {"type": event.error_type, "message": self._clean(event.error or "")},
            "metadata": {}
            if request is None
            else {k: self._clean(v) for k, v in request.metadata.items()},
            "vendor_request_id": None if response is None else response.request_id,
            "content": self._config.content,
            "input": self._input(event) if with_content else None,
            "output": self._output(event) if with_content else None,
        }
        line = msgspec.json.encode(record) + b"\n"
        for secret in self._secret_bytes:
            if secret in line:
                line = line.replace(secret, b"***")
        return line


def _usage(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def _arguments(arguments: dict[str, Any]) -> str:
    return msgspec.json.encode(arguments).decode()


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
