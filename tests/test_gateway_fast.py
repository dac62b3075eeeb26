"""The gateway's request path: what it writes per reply, what it waits for, and what an
unexpected exception (a bug of ours) becomes.

Over real loopback sockets (hypercorn's trio worker, as ``llm-router serve`` runs it)
where the framing is the point; the ASGI app driven directly where a test needs a client
that no HTTP library would be (a body whose end-of-body message never comes).
"""

from __future__ import annotations

import io
import logging
from collections.abc import MutableMapping
from typing import Any

import httpx
import msgspec
import pytest
import trio

from router import open_router
from router._tools._gateway import Caller, Gateway, Inbound, Reply
from router._tools._serve import _log_warnings_to
from router.config import ProviderConfig, RouterConfig
from router.gateway import GatewayApp
from router.testing import MockProvider

from .test_gateway import KEY, running_gateway, user

CLIENT_KEY = "sk-client-key-that-must-not-be-logged-0123"


async def test_whole_replies_carry_their_length_and_are_not_chunked() -> None:
    """An answer, an error and a probe each go out with ``content-length`` equal to the
    body's size and no ``transfer-encoding: chunked`` (which costs the gateway a third
    write per reply, the last chunk, and the client a third read); a stream stays
    chunked."""
    async with running_gateway() as gw, httpx.AsyncClient() as client:
        answered = await client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "oa:gpt-4o-mini", "messages": user("hi")},
        )
        refused = await client.post(
            f"{gw.url}/v1/messages",
            json={"model": "nope:x", "max_tokens": 5, "messages": user("hi")},
        )
        probe = await client.get(f"{gw.url}/healthz")
        head = await client.head(f"{gw.url}/v1/models")
        for response, status in ((answered, 200), (refused, 404), (probe, 200)):
            assert response.status_code == status, response.text
            assert "transfer-encoding" not in response.headers
            assert response.headers["content-length"] == str(len(response.content))
        models = await client.get(f"{gw.url}/v1/models")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == str(len(models.content))
        async with client.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "oa:gpt-4o-mini", "stream": True, "messages": user("hi")},
        ) as streamed:
            assert streamed.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in streamed.headers
            assert (await streamed.aread()).endswith(b"data: [DONE]\n\n")


async def test_a_body_that_arrived_whole_is_answered_without_waiting_for_its_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A body whose ``content-length`` bytes came in the first message is handled at
    once: the gateway does not wait for the end-of-body message (the server's next
    event, one more pass of the event loop per request); here it never comes, and the
    request is answered all the same, at virtual time 0."""
    config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    body = msgspec.json.encode({"model": "m:echo", "messages": user("hello")})
    sent: list[MutableMapping[str, Any]] = []
    calls = 0

    async def receive() -> MutableMapping[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": True}
        await trio.sleep_forever()  # the end-of-body message never comes
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 5000),
    }
    async with open_router(config, providers={"m": MockProvider()}) as router:
        start = trio.current_time()
        with trio.fail_after(5):
            await GatewayApp(router, config)(scope, receive, send)
        assert trio.current_time() == start
    assert sent[0]["status"] == 200
    assert msgspec.json.decode(sent[1]["body"])["choices"][0]["message"]["content"]


class _Broken(Gateway):
    """A gateway with a bug: its ``authenticate`` seam raises what no handler expects,
    the message naming the upstream key and the client's key."""

    def authenticate(self, inbound: Inbound) -> Caller:
        raise RuntimeError(f"bug near {KEY.reveal()} and {inbound.headers['authorization']}")


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/v1/chat/completions", {"model": "oa:gpt-4o-mini", "messages": user("hi")}, "openai"),
        (
            "/v1/messages",
            {"model": "an:claude-3-5-haiku-latest", "max_tokens": 5, "messages": user("hi")},
            "anthropic",
        ),
    ],
)
async def test_an_unexpected_exception_is_a_logged_500_in_the_vendor_shape(
    caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any], shape: str
) -> None:
    """A bug in the gateway (an exception no handler expects) is answered with a 500 in
    the endpoint's vendor error shape, naming the request id and nothing of the
    exception; the exception and its traceback are logged at ERROR, with neither the
    upstream key nor the client's key in the log line.  (Before: hypercorn's bare 500,
    nothing logged.)"""
    async with running_gateway() as gw, httpx.AsyncClient() as client:
        gw.app.gateway = _Broken(gw.router, gw.app.gateway.config, secrets_=(KEY.reveal(),))
        with caplog.at_level(logging.ERROR, logger="trio_llm_router"):
            response = await client.post(
                f"{gw.url}{path}", json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"}
            )
    assert response.status_code == 500
    request_id = response.headers["x-llm-router-request-id"]
    error = response.json()
    if shape == "openai":
        assert error["error"]["type"] == "server_error"
        assert error["error"]["code"] == "internal_error"
        message = error["error"]["message"]
    else:
        assert error["type"] == "error"
        assert error["error"]["type"] == "api_error"
        message = error["error"]["message"]
    assert request_id in message
    assert "bug" not in message
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    logged = record.getMessage()
    assert request_id in logged
    assert "RuntimeError: bug near" in logged
    assert "Traceback" in logged
    assert KEY.reveal() not in logged
    assert CLIENT_KEY not in logged
    assert record.exc_info is None  # the handler cannot re-render it unscrubbed


async def test_an_unexpected_exception_mid_stream_ends_it_with_an_error_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug after a stream's first byte (its encoder raising) ends the stream with the
    dialect's in-stream error event and no terminator, and is logged at ERROR."""

    class Exploding:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.done = False

        def start(self) -> bytes:
            return bytes(self.inner.start())

        def event(self, event: Any) -> bytes:
            raise ValueError("encoder bug")

    class BrokenEncoder(Gateway):
        def _streamed(self, events: Any, model: str, encoder: Any, *args: Any) -> Reply:
            return super()._streamed(events, model, Exploding(encoder), *args)

    async with running_gateway() as gw, httpx.AsyncClient() as client:
        gw.app.gateway = BrokenEncoder(gw.router, gw.app.gateway.config, secrets_=(KEY.reveal(),))
        with caplog.at_level(logging.ERROR, logger="trio_llm_router"):
            response = await client.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "oa:gpt-4o-mini", "stream": True, "messages": user("hi")},
            )
    assert response.status_code == 200
    assert b'"code":"internal_error"' in response.content
    assert not response.content.endswith(b"data: [DONE]\n\n")
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "ValueError: encoder bug" in record.getMessage()


def test_serve_shows_the_routers_warnings_and_errors_on_its_stderr() -> None:
    """``llm-router serve`` puts the router's log records of WARNING and above on its
    stderr (the library alone has only a NullHandler, which drops them), INFO not."""
    err = io.StringIO()
    handler = _log_warnings_to(err)
    log = logging.getLogger("trio_llm_router")
    try:
        log.info("an info line")
        log.error("gateway: unexpected error answering gw-1 (/v1/chat/completions)")
    finally:
        log.removeHandler(handler)
    assert err.getvalue() == (
        "llm-router gateway: ERROR: gateway: unexpected error answering gw-1 "
        "(/v1/chat/completions)\n"
    )


class _BrokenRefusal(Gateway):
    """A gateway whose 413 (built outside ``handle``, before the body is read) raises."""

    def body_too_large(self, path: str, size: int) -> Reply | None:
        raise RuntimeError(f"refusal bug near {KEY.reveal()}")


async def test_an_unexpected_exception_outside_handle_is_logged_and_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in the ASGI layer itself (outside ``Gateway.handle``) is logged at ERROR,
    scrubbed, and the client gets the server's 500 rather than a hang."""
    async with running_gateway() as gw:
        gw.app.gateway = _BrokenRefusal(gw.router, gw.app.gateway.config, secrets_=(KEY.reveal(),))
        host, _, port = gw.url.removeprefix("http://").rpartition(":")
        with caplog.at_level(logging.ERROR, logger="trio_llm_router"):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"content-length: 999999999999\r\n\r\n"
            )
            received = b""
            with trio.fail_after(5):
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some()
            await stream.aclose()
    assert received.startswith(b"HTTP/1.1 500")
    (record,) = [r for r in caplog.records if r.name == "trio_llm_router"]
    logged = record.getMessage()
    assert "RuntimeError: refusal bug near" in logged
    assert KEY.reveal() not in logged
