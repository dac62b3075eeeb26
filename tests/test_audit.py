"""The audit log: one JSON line per request, matching the results, never with a secret.

The big test runs 200 requests on virtual time — half through MockProviders scripted to
fail over (and sometimes to fail everywhere), half through the real OpenAI and Anthropic
adapters, holding real ``Secret`` keys, over the fake upstream on loopback — with prompts
that carry an API key, card numbers and social security numbers, and then reads the
file's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing

from providers import AnthropicProvider, OpenAIProvider, Secret
from providers.testing import Fault, Scenario, open_fake_upstream
from router import ChatRequest, Message, Router, TextDelta, open_router
from router.config import (
    AuditConfig,
    BreakerConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
    decode_config,
)
from router.errors import ConfigError, LLMError, ServerError
from router.testing import MockProvider, MockResponse

NO_RETRY = RetryConfig(max_attempts=1)
LENIENT = BreakerConfig(minimum_calls=1000)
OPENAI_KEY = "sk-test-AUDIT-openai-5c1d2e3f4a5b6c7d"
ANTHROPIC_KEY = "sk-ant-test-AUDIT-9f8e7d6c5b4a3f2e"
CARD = r"\b(?:\d{4}[ -]?){3}\d{4}\b"
SSN = r"\b\d{3}-\d{2}-\d{4}\b"


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every line of the audit file, decoded."""
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def cleaned(text: str) -> str:
    """``text`` as the audit log must write it: keys scrubbed, patterns redacted."""
    for key in (OPENAI_KEY, ANTHROPIC_KEY):
        text = text.replace(key, "***")
    for pattern in (CARD, SSN):
        text = re.sub(pattern, "[REDACTED]", text)
    return text


def prompt(i: int) -> str:
    """The i-th prompt: a card number, an SSN, and (every third) a pasted API key."""
    key = f" my key is {OPENAI_KEY}" if i % 3 == 0 else ""
    return f"q{i} card 4111-1111-1111-{i:04d} ssn 123-45-{i:04d}{key} please"


@asynccontextmanager
async def audited_router(
    path: Path, *, content: str = "full", **audit: Any
) -> AsyncIterator[Router]:
    """A router over mocks ("mock" route) and real adapters on the fake upstream ("wire")."""
    scenarios = {
        # The OpenAI deployment fails some requests (500, 401): they fail over.
        "oa": Scenario(
            faults=[
                Fault("status", status=500, on_requests=list(range(3, 100, 7))),
                Fault("status", status=401, on_requests=[5, 50]),
            ]
        ),
        # The Anthropic deployment is overloaded on its 2nd and 9th requests: those
        # requests fail everywhere.
        "an": Scenario(faults=[Fault("status", status=529, on_requests=[2, 9])]),
    }
    async with open_fake_upstream(scenarios) as up, httpx.AsyncClient(timeout=60.0) as client:
        adapters: dict[str, Any] = {
            "oa": OpenAIProvider(
                name="oa",
                api_key=Secret(OPENAI_KEY),
                base_url=up.base_url("oa", "openai"),
                client=client,
            ),
            "an": AnthropicProvider(
                name="an",
                api_key=Secret(ANTHROPIC_KEY),
                base_url=up.base_url("an", "anthropic"),
                client=client,
            ),
            # m1 fails prompts marked FAIL; m2 fails those marked FAILALL too.
            "m1": MockProvider(
                name="m1",
                rules=[("FAIL", MockResponse(error=ServerError("m1 down"), latency=0.5))],
                default=lambda r: MockResponse(text=f"m1 says {r.last_user_text}", latency=1.0),
            ),
            "m2": MockProvider(
                name="m2",
                rules=[("FAILALL", MockResponse(error=ServerError("m2 down"), latency=0.25))],
                default=lambda r: MockResponse(text=f"m2 says {r.last_user_text}", latency=2.0),
            ),
        }
        config = RouterConfig(
            providers={
                "oa": ProviderConfig(kind="openai", retry=NO_RETRY),
                "an": ProviderConfig(kind="anthropic", retry=NO_RETRY),
                # Breakers that never trip: every scripted failure fails over.
                "m1": ProviderConfig(kind="mock", retry=NO_RETRY, breaker=LENIENT),
                "m2": ProviderConfig(kind="mock", retry=NO_RETRY, breaker=LENIENT),
            },
            routes={
                "wire": RouteConfig(targets=["oa:gpt-4o-mini", "an:claude-3-5-haiku-latest"]),
                "mock": RouteConfig(targets=["m1:m", "m2:m"]),
            },
            audit=AuditConfig(path=str(path), content=content, redact=[CARD, SSN], **audit),  # type: ignore[arg-type]
        )
        async with open_router(config, providers=adapters, seed=5) as router:
            yield router


async def send(router: Router, i: int) -> dict[str, Any]:
    """Request i (even: the mock route, odd: the wire route; every 5th a stream); what the
    caller saw, in the audit record's terms."""
    route = "mock" if i % 2 == 0 else "wire"
    text = prompt(i)
    if route == "mock" and i % 8 == 0:
        text += " FAILALL"
    elif route == "mock" and i % 4 == 2:
        text += " FAIL"
    request = ChatRequest(
        model=route,
        messages=[Message.system("be brief"), Message.user(text)],
        max_tokens=64,
        metadata={"request_id": f"req-{i}", "customer": f"c{i % 7}"},
    )
    seen: dict[str, Any] = {"request_id": f"req-{i}", "model": route, "stream": i % 5 == 0}
    try:
        if i % 5 == 0:
            async with router.stream(request) as stream:
                async for event in stream:
                    assert not isinstance(event, str)
                response = stream.response
                assert response is not None
        else:
            response = await router.complete(request)
    except LLMError as exc:
        seen.update(
            outcome="failed",
            provider=None,
            error_type=type(exc).__name__,
            attempts=[(a.provider, a.outcome) for a in exc.attempts],
            output=None,
            usage=None,
        )
    else:
        seen.update(
            outcome="succeeded",
            provider=response.provider,
            error_type=None,
            attempts=[(a.provider, a.outcome) for a in response.attempts],
            output=cleaned(response.text),
            usage=response.usage.input_tokens,
        )
    seen["input"] = [cleaned("be brief"), cleaned(text)]
    return seen


async def test_two_hundred_requests_two_hundred_records_and_no_secret(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """200 requests (fail-overs, total failures, streams, real adapters with real keys):
    exactly 200 records, each matching what its caller saw; no key, card or SSN in the file."""
    path = tmp_path / "audit.jsonl"
    results: dict[str, dict[str, Any]] = {}
    async with audited_router(path) as router:

        async def worker(first: int) -> None:
            for i in range(first, 200, 20):
                seen = await send(router, i)
                results[seen["request_id"]] = seen

        async with trio.open_nursery() as nursery:
            for first in range(20):
                nursery.start_soon(worker, first)
        stats = router.statistics()
    assert stats.audit is not None
    assert (stats.audit.dropped, stats.audit.errors) == (0, 0)

    data = path.read_bytes()
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, OPENAI_KEY[-12:], ANTHROPIC_KEY[-12:]):
        assert secret.encode() not in data
    assert re.search(CARD.encode(), data) is None
    assert re.search(SSN.encode(), data) is None
    assert b"4111" not in data
    assert b"[REDACTED]" in data
    assert b"***" in data

    records = read_records(path)
    assert len(records) == 200
    assert {r["request_id"] for r in records} == set(results)
    outcomes = {"succeeded": 0, "failed": 0}
    fell_over = {"mock": 0, "wire": 0}
    for record in records:
        seen = results[record["request_id"]]
        outcomes[record["outcome"]] += 1
        attempts = [(a["provider"], a["outcome"]) for a in record["attempts"]]
        fell_over[record["model"]] += len(attempts) > 1
        assert attempts == seen["attempts"], record["request_id"]
        assert record["outcome"] == seen["outcome"]
        assert record["provider"] == seen["provider"]
        assert record["model"] == seen["model"]
        assert record["stream"] == seen["stream"]
        assert (record["error"] or {}).get("type") == seen["error_type"]
        assert [m["content"] for m in record["input"]] == seen["input"]
        assert (record["output"] or {}).get("text") == seen["output"]
        assert (record["usage"] or {}).get("input_tokens") == seen["usage"]
        assert record["metadata"]["customer"].startswith("c")
        assert record["content"] == "full"
        assert record["time"].endswith("Z")
        if record["stream"] and record["outcome"] == "succeeded":
            assert record["ttft"] is not None
    # 25 FAILALL prompts fail on both mocks, 50 FAIL ones fail over; on the wire the
    # scripted 500s, 401s and 529s fail over too (which requests meet them depends on
    # the order the upstream receives them in).
    assert outcomes["failed"] >= 25
    assert fell_over["mock"] == 75
    assert fell_over["wire"] > 5


async def test_content_modes(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """truncated keeps ``max_chars`` (after redaction), hashed writes SHA-256 hex of the
    redacted text, none writes no content."""
    expected_prompt = cleaned(prompt(1))
    expected_output = cleaned("m2 says " + prompt(1))
    for content, check in [
        ("truncated", lambda s, full: s == full[:10] + f"…[{len(full) - 10} more chars]"),
        ("hashed", lambda s, full: s == hashlib.sha256(full.encode()).hexdigest()),
    ]:
        path = tmp_path / f"{content}.jsonl"
        async with audited_router(path, content=content, max_chars=10) as router:
            request = ChatRequest(model="m2:m", messages=[Message.user(prompt(1))])
            await router.complete(request)
        (record,) = read_records(path)
        assert record["content"] == content
        assert check(record["input"][0]["content"], expected_prompt), content
        assert check(record["output"]["text"], expected_output), content
    path = tmp_path / "none.jsonl"
    async with audited_router(path, content="none") as router:
        await router.complete(ChatRequest(model="m2:m", messages=[Message.user(prompt(1))]))
    (record,) = read_records(path)
    assert (record["input"], record["output"], record["outcome"]) == (None, None, "succeeded")


async def test_rotation_keeps_the_newest_files(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With ``rotate_bytes`` and ``keep=2``: path, path.1, path.2, each under the limit;
    the newest records in path, the oldest ones gone."""
    path = tmp_path / "audit.jsonl"
    async with audited_router(path, content="none", rotate_bytes=2000, keep=2) as router:
        for i in range(30):
            await router.complete(
                ChatRequest(
                    model="m2:m",
                    messages=[Message.user("x")],
                    metadata={"request_id": f"r{i}"},
                )
            )
            await trio.lowlevel.checkpoint()
    stats = router.statistics().audit  # after the final flush
    assert stats is not None
    files = sorted(os.listdir(tmp_path))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2000
    ids = [r["request_id"] for name in files[::-1] for r in read_records(tmp_path / name)]
    assert ids == [f"r{i}" for i in range(30 - len(ids), 30)]  # contiguous, newest last
    assert stats.rotations >= 3
    assert stats.written == 30


async def test_a_full_queue_drops_records_and_counts_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``max_pending=2``: requests finishing while the writer is busy beyond two are
    dropped and counted; the file has exactly the others."""
    path = tmp_path / "audit.jsonl"
    async with (
        audited_router(path, content="none", max_pending=2) as router,
        trio.open_nursery() as nursery,
    ):
        for i in range(10):
            nursery.start_soon(
                router.complete,
                ChatRequest(model="m2:m", messages=[Message.user(f"{i}")]),
            )
    stats = router.statistics().audit  # after the final flush
    assert stats is not None
    records = read_records(path)
    assert stats.dropped == 8
    assert len(records) == stats.written == 2


async def test_records_are_flushed_when_the_router_closes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A record queued just before the block exits is in the file once open_router returns."""
    path = tmp_path / "audit.jsonl"
    async with audited_router(path) as router:
        await router.complete(ChatRequest(model="m2:m", messages=[Message.user("last")]))
        assert router.statistics().audit.pending == 1  # type: ignore[union-attr]
    assert [r["output"]["text"] for r in read_records(path)] == ["m2 says last"]


async def test_embeddings_and_refused_requests_are_audited(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Embeddings record their inputs; a request for an unknown model records its NoRoute."""
    path = tmp_path / "audit.jsonl"
    async with audited_router(path) as router:
        await router.embed("m1:e", ["card 4111 1111 1111 1111", "plain"])
        with pytest.raises(LLMError):
            await router.complete(ChatRequest(model="nowhere:m", messages=[Message.user("x")]))
    embedded, refused = read_records(path)
    assert (embedded["operation"], embedded["input"], embedded["output"]) == (
        "embeddings",
        ["card [REDACTED]", "plain"],
        None,
    )
    assert (refused["outcome"], refused["error"]["type"], refused["attempts"]) == (
        "failed",
        "NoRoute",
        [],
    )


async def test_partial_stream_output_is_recorded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream the caller leaves early: cancelled, with the text it had delivered."""
    path = tmp_path / "audit.jsonl"
    async with (
        audited_router(path) as router,
        router.stream(ChatRequest(model="m1:m", messages=[Message.user("a b c")])) as stream,
    ):
        async for event in stream:
            if isinstance(event, TextDelta):
                break
    (record,) = read_records(path)
    assert (record["outcome"], record["output"]) == ("cancelled", {"text": "m1", "partial": True})


async def test_an_unwritable_path_is_a_config_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A path that cannot be opened fails ``open_router`` with a ConfigError naming it."""
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock")},
        audit=AuditConfig(path=str(tmp_path / "missing" / "audit.jsonl")),
    )
    with pytest.raises(ConfigError, match="cannot open the audit log") as info:
        async with open_router(config):
            pass  # pragma: no cover
    assert info.value.path == "$.audit.path"


def test_audit_config_from_toml_and_its_checks() -> None:
    """``[audit]`` decodes from TOML; bad values are ConfigErrors with their path."""
    config = decode_config(
        """
        [providers.a]
        kind = "mock"
        [audit]
        path = "audit.jsonl"
        content = "truncated"
        max_chars = 200
        redact = ['\\d{16}']
        rotate_bytes = 1_000_000
        keep = 3
        """
    )
    assert config.audit == AuditConfig(
        path="audit.jsonl",
        content="truncated",
        max_chars=200,
        redact=[r"\d{16}"],
        rotate_bytes=1_000_000,
        keep=3,
    )
    for bad, field in [
        ('content = "everything"', "content"),
        ("redact = ['(']", "redact"),
        ("keep = -1", "keep"),
        ("rotate_bytes = 0", "rotate_bytes"),
    ]:
        with pytest.raises(ConfigError) as info:
            decode_config(f'[providers.a]\nkind = "mock"\n[audit]\npath = "x"\n{bad}\n')
        assert info.value.path == f"$.audit.{field}"
