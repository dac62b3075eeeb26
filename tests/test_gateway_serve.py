"""``llm-router serve`` as users run it: a subprocess in front of the fake upstream (itself
``llm-router upstream`` in a subprocess), driven by the vendors' sync SDKs and curl; the
signals; the refusal to serve a non-loopback address without keys.

One server pair serves the whole module (starting them is the slow part); the SIGTERM
test starts a gateway of its own, since it stops it.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import msgspec
import openai
import pytest

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_KEY = "sk-serve-test-upstream-key-0123456789"

SCENARIOS = """
[scenarios.down]
faults = [{ kind = "status", status = 500, rate = 1.0 }]
"""


def config(upstream: str) -> str:
    return f"""
[providers.oa]
kind = "openai"
base_url = "{upstream}/oa/v1"
api_key_env = "GW_SERVE_TEST_KEY"
retry = {{ max_attempts = 1 }}

[providers.an]
kind = "anthropic"
base_url = "{upstream}/an"
api_key_env = "GW_SERVE_TEST_KEY"

[providers.down]
kind = "openai"
base_url = "{upstream}/down/v1"
api_key_env = "GW_SERVE_TEST_KEY"
retry = {{ max_attempts = 1 }}

[routes.fast]
targets = ["oa:gpt-4o-mini", "an:claude-3-5-haiku-latest"]

[routes.broken]
targets = ["down:gpt-4o-mini"]

[gateway]
grace = 5.0
"""


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e["NO_PROXY"] = e["no_proxy"] = "127.0.0.1,localhost"
    e["GW_SERVE_TEST_KEY"] = UPSTREAM_KEY
    return e


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "router", *args],
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def url_from(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> str:
    """The URL the process prints after ``prefix`` on stdout (it prints it once listening)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise AssertionError(f"no {prefix!r} line; stderr: {proc.stderr.read() if proc.stderr else ''}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``llm-router serve --config`` in front of ``llm-router upstream``: the gateway's URL."""
    work = tmp_path_factory.mktemp("serve")
    (work / "scenarios.toml").write_text(SCENARIOS)
    upstream = start("upstream", "--port", "0", "--scenario", "scenarios.toml", cwd=work)
    try:
        upstream_url = url_from(upstream, "fake upstream listening on ")
        (work / "router.toml").write_text(config(upstream_url))
        server = start("serve", "--config", "router.toml", "--port", "0", cwd=work)
        try:
            yield url_from(server, "llm-router gateway listening on ")
        finally:
            stop(server)
    finally:
        stop(upstream)


def test_sync_openai_sdk_against_the_served_gateway(gateway: str) -> None:
    """The official sync OpenAI client: a completion, a stream with usage, embeddings,
    and each error's status code (404, 400, 502: the one target failed) with no upstream
    key in any body."""
    with openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0) as sdk:
        done = sdk.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hello there"}]
        )
        assert done.choices[0].message.content == "echo: hello there"
        chunks = list(
            sdk.chat.completions.create(
                model="fast",
                messages=[{"role": "user", "content": "hello there"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "echo: hello there"
        )
        assert chunks[-1].usage is not None
        vectors = sdk.embeddings.create(model="oa:text-embedding-3-small", input="a")
        assert len(vectors.data) == 1
        for model, extra, status in [
            ("nope", {}, 404),
            ("fast", {"n": 3}, 400),
            ("broken", {}, 502),
        ]:
            with pytest.raises(openai.APIStatusError) as caught:
                sdk.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "hi"}],
                    **extra,  # type: ignore[arg-type]
                )
            assert caught.value.status_code == status
            assert UPSTREAM_KEY not in caught.value.response.text
    metrics = httpx.get(f"{gateway}/metrics", timeout=30)
    assert metrics.status_code == 200
    assert 'trio_llm_router_requests_total{model="fast",operation="chat"' in metrics.text


def test_sync_anthropic_sdk_against_the_served_gateway(gateway: str) -> None:
    """The official sync Anthropic client: a message, and the same text streamed."""
    with anthropic.Anthropic(base_url=gateway, api_key="unused", max_retries=0) as sdk:
        message = sdk.messages.create(
            model="fast", max_tokens=50, messages=[{"role": "user", "content": "hi you"}]
        )
        assert message.content[0].text == "echo: hi you"  # type: ignore[union-attr]
        with sdk.messages.stream(
            model="an:claude-3-5-haiku-latest",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi you"}],
        ) as stream:
            assert "".join(stream.text_stream) == "echo: hi you"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_sees_the_exact_bytes(gateway: str) -> None:
    """curl's view: the status line, the SSE content type, the router headers, and a
    body of ``data:`` events ending ``data: [DONE]``; an error is OpenAI's JSON shape."""
    payload = msgspec.json.encode(
        {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    out = subprocess.run(
        ["curl", "-sS", "-N", "-i", f"{gateway}/v1/chat/completions", "--data-binary", "@-"],
        input=payload,
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 200")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"x-llm-router-provider"] == b"oa"
    assert body.startswith(b'data: {"id":"chatcmpl-')
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    error = subprocess.run(
        ["curl", "-sS", f"{gateway}/v1/chat/completions", "--data-binary", "{"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert msgspec.json.decode(error)["error"]["type"] == "invalid_request_error"


def test_sigterm_drains_a_stream_in_flight_then_exits_0(tmp_path: Path) -> None:
    """SIGTERM mid-stream (the keyless demo gateway): the stream still runs to [DONE],
    the server says it is draining, and it exits 0."""
    server = start("serve", "--port", "0", cwd=tmp_path)
    try:
        url = url_from(server, "llm-router gateway listening on ")
        long = " ".join(["word"] * 150)  # 150 chunks, 10 ms apart
        body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": long}]}
        received = b""
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{url}/v1/chat/completions", json=body) as response,
        ):
            for part in response.iter_bytes():
                if not received:
                    server.send_signal(signal.SIGTERM)
                received += part
        assert received.endswith(b"data: [DONE]\n\n")
        assert received.count(b"data: ") > 100
        _, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
        assert "SIGTERM: shutting down; 1 request(s) in flight" in err
    finally:
        stop(server)


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    """SIGTERM, then SIGINT, mid-stream: the stream is cut (no [DONE]) and the process
    exits 0 without waiting out the grace period."""
    server = start("serve", "--port", "0", cwd=tmp_path)
    try:
        url = url_from(server, "llm-router gateway listening on ")
        long = " ".join(["word"] * 3000)  # 30 s of stream
        body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": long}]}
        received = b""
        t0 = time.monotonic()
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{url}/v1/chat/completions", json=body) as response,
        ):
            for part in response.iter_bytes():
                if not received:
                    server.send_signal(signal.SIGTERM)
                    time.sleep(0.5)
                    server.send_signal(signal.SIGINT)
                received += part
        assert b"[DONE]" not in received
        _, err = server.communicate(timeout=30)
        assert time.monotonic() - t0 < 10  # not the 10 s grace, nor the 30 s stream
        assert server.returncode == 0, err
        assert "SIGINT again: stopping now" in err
    finally:
        stop(server)


def test_serving_a_non_loopback_address_without_keys_is_refused(tmp_path: Path) -> None:
    """``serve --host 0.0.0.0`` with no gateway keys: exit 1 and one line saying why."""
    result = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("llm-router: error: ConfigError: $.gateway.host: refusing")
    assert "no keys configured" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_python_example_of_docs_gateway_md_runs() -> None:
    """docs/gateway.md's in-process example (marked not-runnable for test_docs, which
    runs every block at once) runs in its own interpreter and prints what it says."""
    from tests.test_docs import child_env, parse_markdown

    blocks, _ = parse_markdown(ROOT / "docs" / "gateway.md")
    (block,) = [b for b in blocks if "serve_gateway" in b.code]
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", block.code],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi from the router local:mock-model\n"
