"""The gateway against a hostile client, over real loopback sockets (hypercorn's trio
worker in the test's nursery, as tests/test_gateway.py runs it): malformed bodies that
must be 400s naming the field (never a 500), a body announced larger than the limit,
HEAD requests, what an unauthenticated prober of a keyed gateway learns.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from providers import RateLimited
from router import open_router
from router._tools._gateway import MAX_RETRY_AFTER, retry_after_header
from router.config import GatewayConfig, ProviderConfig, RetryConfig, RouterConfig
from router.gateway import GatewayApp
from router.testing import MockProvider, MockResponse
from tests.test_gateway import running_gateway
from tests.test_gateway_keys import KEY_A, bearer, keyed_config, open_gateway, send

DEEP = 5000  # deeper than the interpreter's recursion limit (1000)


MESSAGES = '[{"role":"user","content":"hi"}]'


def _chat(extra: str) -> str:
    """A body to the route ``fast`` with ``extra`` (raw JSON members) after its messages."""
    return '{"model":"fast","messages":' + MESSAGES + extra + "}"


def _chat_to(model: str) -> bytes:
    return ('{"model":"' + model + '","messages":' + MESSAGES + "}").encode()


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


async def test_malformed_bodies_are_400s_in_the_vendor_shape_naming_the_field() -> None:
    """JSON nested past the recursion limit (in a schema, in a tool's parameters, in an
    Anthropic tool's input schema) and integers beyond 64 bits are 400s in the
    endpoint's error shape, never a 500 or a 502 blamed on the upstream; a field of the
    wrong type is named in OpenAI's ``param``."""
    deep = _nested(DEEP)
    openai_cases: list[tuple[str, str | None]] = [
        (
            _chat(
                ',"response_format":{"type":"json_schema","json_schema":{"schema":' + deep + "}}"
            ),
            None,
        ),
        (
            _chat(
                ',"tools":[{"type":"function","function":{"name":"f","parameters":' + deep + "}}]"
            ),
            None,
        ),
        (_chat(',"max_tokens":1' + "0" * 400), "max_tokens"),
        (_chat(',"seed":1' + "0" * 30), "seed"),
        (_chat(',"stream":"yes"'), "stream"),
        (_chat(',"tools":[{"type":"function","function":{"name":1}}]'), "tools[0].function.name"),
        (_chat(',"bogus":1'), "bogus"),
    ]
    anthropic_cases = [
        _chat(',"max_tokens":10,"tools":[{"name":"f","input_schema":' + deep + "}]"),
        _chat(',"max_tokens":1' + "0" * 400),
    ]
    async with running_gateway() as gw, httpx.AsyncClient() as client:
        for body, param in openai_cases:
            response = await client.post(
                f"{gw.url}/v1/chat/completions",
                content=body.encode(),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 400, (body[:80], response.text[:300])
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == param, (body[:80], error)
        for body in anthropic_cases:
            response = await client.post(
                f"{gw.url}/v1/messages",
                content=body.encode(),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 400, (body[:80], response.text[:300])
            assert response.json()["error"]["type"] == "invalid_request_error"
        assert not gw.upstream.requests  # nothing of it reached a provider


async def _raw(url: str, head: bytes) -> bytes:
    """Send ``head`` (a request without its body) and read the answer (3 s at most)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    with trio.fail_after(3):
        await stream.send_all(head)
        while b"\r\n0\r\n\r\n" not in received:
            data = await stream.receive_some()
            if not data:
                break
            received += data
    await stream.aclose()
    return received


async def test_a_body_announced_over_the_limit_is_a_413_before_it_is_sent() -> None:
    """A ``content-length`` over ``max_body_bytes`` is answered with the 413 at once,
    without waiting for the body (with ``Expect: 100-continue`` too, after hypercorn's
    own ``100``)."""
    async with running_gateway(GatewayConfig(port=0, max_body_bytes=1000)) as gw:
        for extra in (b"", b"expect: 100-continue\r\n"):
            received = await _raw(
                gw.url,
                b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 100000000\r\n" + extra + b"\r\n",
            )
            if extra:  # hypercorn's own interim answer, then ours
                assert received.startswith(b"HTTP/1.1 100 "), received[:200]
                received = received.partition(b"\r\n\r\n")[2]
            assert received.startswith(b"HTTP/1.1 413"), received[:200]
            assert b"request_too_large" in received
            assert b"1000 bytes" in received


async def test_head_is_answered_like_get_without_a_body() -> None:
    """HEAD on the GET endpoints (a load balancer's probe) is a 200 with GET's headers
    and no body; a 405 names both methods in ``allow``."""
    async with running_gateway() as gw, httpx.AsyncClient() as client:
        for path in ("/healthz", "/readyz", "/v1/models"):
            response = await client.head(f"{gw.url}{path}")
            assert response.status_code == 200, path
            assert response.headers["content-type"] == "application/json"
            assert response.content == b""
        wrong = await client.post(f"{gw.url}/v1/models")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, HEAD"
        head = await client.head(f"{gw.url}/v1/chat/completions")
        assert head.status_code == 405
        assert head.headers["allow"] == "POST"


async def test_readyz_with_keys_names_the_providers_only_to_a_key_holder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With gateway keys (a gateway reachable from anywhere), the open ``/readyz`` tells
    an anonymous or wrong-keyed prober ready or not, but not the providers' names; a
    caller with a valid key gets them."""
    monkeypatch.setenv("TEAM_A_KEY", KEY_A)
    async with open_gateway(keyed_config()) as gw:
        for headers in ({}, bearer("sk-not-a-key-0123456789")):
            got = await send(gw, "/readyz", headers=headers, method="GET", client="203.0.113.9")
            assert (got.status, got.body) == (200, {"status": "ready"})
        got = await send(gw, "/readyz", headers=bearer(KEY_A), method="GET", client="203.0.113.9")
        assert got.status == 200
        assert got.body == {"status": "ready", "providers": {"a": "healthy", "b": "healthy"}}


async def _stalled(app: GatewayApp, scope: dict[str, Any]) -> list[MutableMapping[str, Any]]:
    """Run ``app`` on a request whose client sends ``{"mo`` of its body, then stalls;
    return what the app sent."""
    sent: list[MutableMapping[str, Any]] = []
    pieces = [{"type": "http.request", "body": b'{"mo', "more_body": True}]

    async def receive() -> MutableMapping[str, Any]:
        if pieces:
            return pieces.pop()
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_body_trickled_past_body_timeout_is_a_408_at_that_moment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that sends part of its body and stalls (announced ``content-length`` not
    reached, or a chunked body) gets a 408 exactly ``body_timeout`` after its first piece,
    instead of holding its connection and task for ever."""
    config = RouterConfig(
        providers={"m": ProviderConfig(kind="mock")},
        gateway=GatewayConfig(body_timeout=7.0),
    )
    async with open_router(config, providers={"m": MockProvider()}) as router:
        app = GatewayApp(router, config)
        length: list[tuple[bytes, bytes]]
        for path, length in (
            ("/v1/chat/completions", [(b"content-length", b"100")]),
            ("/v1/messages", []),  # chunked
        ):
            scope = {"type": "http", "method": "POST", "path": path, "headers": length}
            t0 = trio.current_time()
            with trio.fail_after(60):  # virtual seconds: without the timeout, for ever
                sent = await _stalled(app, scope)
            assert trio.current_time() - t0 == 7.0
            assert sent[0]["status"] == 408
            body = msgspec.json.decode(sent[1]["body"])
            error = body["error"]
            assert "7 seconds" in error["message"]
            if path == "/v1/messages":
                assert (body["type"], error["type"]) == ("error", "timeout_error")
            else:
                assert error["code"] == "body_timeout"


@given(
    st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=0, max_value=10**300).map(float)
)
def test_retry_after_is_always_a_whole_number_of_seconds_in_range(wait: float | None) -> None:
    """Invariant: whatever wait a refusal gives (None, NaN, negative, infinite, huge),
    ``retry-after`` is an integer from 1 to a year, and never early (>= the wait)."""
    seconds = int(retry_after_header(wait))
    assert 1 <= seconds <= MAX_RETRY_AFTER
    if wait is not None and 0 <= wait <= MAX_RETRY_AFTER:
        assert seconds >= wait


async def test_an_upstream_retry_after_of_infinity_is_a_429_not_a_crash() -> None:
    """An upstream's ``retry-after: inf`` (which the adapters' parser passes on as
    ``inf``) is answered with the 429 and a year's ``retry-after``, not an
    OverflowError out of the gateway (a bare 500)."""
    config = RouterConfig(
        providers={"m": ProviderConfig(kind="mock", retry=RetryConfig(max_attempts=1))}
    )
    refusal = RateLimited("slow down", provider="m", retry_after=math.inf)
    mock = MockProvider(name="m", default=MockResponse(error=refusal))
    async with open_router(config, providers={"m": mock}) as router:
        app = GatewayApp(router, config)
        got = await send(app.gateway, "/v1/chat/completions", _chat_to("m:x"))
        assert got.status == 429
        assert got.headers["retry-after"] == str(MAX_RETRY_AFTER)
        assert got.body["error"]["code"] == "rate_limit_exceeded"
