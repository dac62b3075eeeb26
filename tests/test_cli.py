"""The ``llm-router`` console commands, run for real in subprocesses.

Every subprocess has a timeout, so a command that hangs fails the test instead of the
suite.  Each command costs one interpreter start (about 0.2 s); the file takes a few
seconds in all.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests import _cli_runner

DEMO_KEY = "sk-demo-not-a-real-key"
TIMEOUT = 30.0  # generous: only a hung command gets anywhere near it

# Keep loopback traffic away from any proxy the environment configures.
ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def llm_router(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m router ARGS`` to completion and capture its output (forked
    from a warm interpreter: a process of its own, without the imports' cost)."""
    return _cli_runner.run(list(args), env=ENV, timeout=timeout)


def read_line(stream: IO[bytes] | None, deadline: float) -> str:
    """One line from a subprocess pipe, failing (not hanging) after ``deadline``.

    Reads the file descriptor directly, a byte at a time, so nothing is left in a
    Python-level buffer that a later ``communicate()`` would miss.
    """
    assert stream is not None
    fd = stream.fileno()
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0.0))
        if not ready:
            raise AssertionError(f"no complete line before the deadline; got {data!r}")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"the process closed its output; got {data!r}")
        data += chunk
    return data.decode()


@pytest.fixture
def start_upstream() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``llm-router upstream ARGS``; whatever a test leaves running is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "upstream", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=ENV,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def listening_url(proc: subprocess.Popen[bytes]) -> str:
    """The URL from the upstream's first line of output."""
    line = read_line(proc.stdout, time.monotonic() + TIMEOUT)
    prefix = "fake upstream listening on "
    assert line.startswith(prefix), line
    url = line.removeprefix(prefix).strip()
    assert url.startswith("http://127.0.0.1:"), url
    return url


def chat(client: httpx.Client, url: str, text: str) -> httpx.Response:
    """One OpenAI-format chat completion request."""
    return client.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": "Bearer sk-test"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C the upstream and check that it exits promptly and quietly, with 130."""
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = proc.communicate(timeout=TIMEOUT)
    assert time.monotonic() - start < 5.0
    assert proc.returncode == 130
    assert b"Traceback" not in err, err.decode()


def test_demo_races_both_routes_streams_an_answer_and_hides_the_key() -> None:
    """``demo --speed 0`` exits 0, compares both routes, streams one answer, hides the key."""
    result = llm_router("demo", "--speed", "0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "three simulated providers on the built-in fake upstream" in out
    assert "plain    300/300 requests done" in out
    assert "hedged   300/300 requests done" in out
    header = next(line for line in out.splitlines() if "p99" in line and "route" in line)
    assert header.split() == [
        "route",
        "p50",
        "p95",
        "p99",
        "success",
        "fallbacks",
        "hedges",
        "extra",
        "load",
        "cost",
    ]
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.strip().startswith(("plain ", "hedged "))
    }
    assert set(rows) == {"plain", "hedged"}
    assert "Structured concurrency means every task has a parent that waits for it" in out
    assert "[answered by " in out
    assert result.stderr == ""
    assert DEMO_KEY not in out
    assert DEMO_KEY not in result.stderr


def test_demo_plot_writes_a_png_or_says_how_to_get_matplotlib(tmp_path: Path) -> None:
    """``demo --plot`` writes a PNG with matplotlib, or names the extra to install without it."""
    target = tmp_path / "cdf.png"
    result = llm_router("demo", "--speed", "0", "--requests", "20", "--plot", str(target))
    if importlib.util.find_spec("matplotlib") is None:
        assert result.returncode == 1
        assert "pip install 'trio-llm-router[plot]'" in result.stderr
        assert "Traceback" not in result.stderr
        assert not target.exists()
    else:
        assert result.returncode == 0, result.stderr
        assert target.read_bytes().startswith(b"\x89PNG")


def test_upstream_serves_an_openai_request_and_stops_on_ctrl_c(
    start_upstream: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """``upstream --port 0`` prints its URL, answers a chat completion, and exits on SIGINT."""
    proc = start_upstream("--port", "0")
    url = listening_url(proc)
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        response = chat(client, f"{url}/cli", "ping")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: ping"
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["completion_tokens"] > 0
    stop(proc)


def test_upstream_plays_the_scenarios_of_its_file(
    tmp_path: Path, start_upstream: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """``--scenario FILE``: its scenarios are announced and played; other names echo."""
    path = tmp_path / "upstream.toml"
    path.write_text(
        "[scenarios.limited]\n"
        'faults = [{ kind = "status", status = 429, retry_after = 2.0, rate = 1.0 }]\n'
    )
    proc = start_upstream("--port", "0", "--scenario", str(path))
    url = listening_url(proc)
    assert read_line(proc.stdout, time.monotonic() + TIMEOUT).strip() == "scenarios: limited"
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        limited = chat(client, f"{url}/limited", "hi")
        other = chat(client, f"{url}/other", "hi")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["type"] == "requests"
    assert other.status_code == 200
    assert other.json()["choices"][0]["message"]["content"] == "echo: hi"
    stop(proc)


BAD_SCENARIOS = [
    pytest.param(
        '[scenarios.flaky]\nfaults = [{ kind = "explode" }]\n',
        "$.scenarios.flaky.faults[0].kind",
        id="bad-fault-kind",
    ),
    pytest.param(
        '[scenarios.slow]\nlatency = { dist = "fixed", seconds = -1 }\n',
        "$.scenarios.slow.latency",
        id="negative-latency",
    ),
    pytest.param("[scenarios.broken\n", "invalid TOML", id="not-toml"),
    pytest.param(None, "No such file", id="missing-file"),
]


@pytest.mark.parametrize(("content", "says"), BAD_SCENARIOS)
def test_upstream_with_a_bad_scenario_file_is_one_clear_error(
    tmp_path: Path, content: str | None, says: str
) -> None:
    """A bad ``--scenario`` file: exit 1 and one line naming the file and what is wrong."""
    path = tmp_path / "upstream.toml"
    if content is not None:
        path.write_text(content)
    result = llm_router("upstream", "--port", "0", "--scenario", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llm-router: error: ")
    assert str(path) in lines[0]
    assert says in lines[0]


def test_upstream_on_a_port_in_use_is_one_clear_error() -> None:
    """Binding a busy port is one error line and exit 1, not an exception-group traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = llm_router("upstream", "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llm-router: error: ")
    assert "in use" in lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(["demo", "--speed", "-1"], "--speed", id="negative-speed"),
        pytest.param(["demo", "--speed", "fast"], "--speed", id="speed-not-a-number"),
        pytest.param(["upstream", "--port", "70000"], "--port", id="port-out-of-range"),
        pytest.param(["frobnicate"], "invalid choice", id="unknown-command"),
        pytest.param([], "required", id="no-command"),
    ],
)
def test_bad_command_lines_are_usage_errors(args: list[str], says: str) -> None:
    """Bad flags or commands: argparse's usage message, exit 2, no traceback."""
    result = llm_router(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: llm-router")
    assert "error:" in result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def declared_console_script() -> str:
    """``module:function`` of the ``llm-router`` script, as pyproject.toml declares it."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]
    target: str = scripts["llm-router"]
    return target


def test_the_declared_console_script_answers_help() -> None:
    """The entry point pyproject.toml declares (what ``pip install`` wraps) imports and runs."""
    module, _, function = declared_console_script().partition(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    result = subprocess.run(
        [sys.executable, "-c", code, "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: llm-router")


def test_console_script_is_installed_and_answers_help() -> None:
    """The ``llm-router`` script next to the interpreter runs the declared entry point."""
    from importlib.metadata import entry_points

    script = shutil.which("llm-router", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the package is not installed with its console script here")
    installed = [e.value for e in entry_points(group="console_scripts", name="llm-router")]
    if installed != [declared_console_script()]:
        pytest.skip(f"the installed script runs {installed}: reinstall (pip install -e .)")
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=TIMEOUT, env=ENV
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: llm-router")
    for command in ("demo", "upstream"):
        assert command in result.stdout


def upstream_help_table() -> dict[str, tuple[str, str]]:
    """``upstream --help``'s wire-format table: kind -> (format, base URL after ``URL``)."""
    result = llm_router("upstream", "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("wire formats (provider kind: the base_url to configure):") + 1
    table: dict[str, tuple[str, str]] = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        left, url = line.strip().rsplit(None, 1)
        kind, _, wire = left.partition(" (")
        table[kind] = (wire.removesuffix(" format)") or kind, url.removeprefix("URL"))
    return table


def test_upstream_help_lists_every_wire_format_and_kind_it_serves() -> None:
    """``upstream --help`` names every provider kind but the in-process mock, every wire
    format the server implements, and the base URL path the server's ``base_url`` gives."""
    from typing import get_args

    from providers.testing import UPSTREAM_KINDS, FakeUpstream
    from providers.testing._formats import FORMATS
    from router._config import ProviderKind

    table = upstream_help_table()
    assert set(table) == set(get_args(ProviderKind)) - {"mock"} == set(UPSTREAM_KINDS)
    assert {wire for wire, _ in table.values()} == set(FORMATS)
    upstream = FakeUpstream.__new__(FakeUpstream)  # base_url only reads ``url``
    upstream.url = ""
    for kind, (wire, path) in table.items():
        assert wire == UPSTREAM_KINDS[kind][0]
        assert path == upstream.base_url("s", kind).replace("/s", "/<scenario>", 1), kind


async def test_every_kind_in_the_help_is_served_over_loopback() -> None:
    """Each kind ``upstream --help`` lists answers a chat request through the router's own
    adapter for it, at the base URL the help gives, over a real socket."""
    from providers.testing import open_fake_upstream
    from router import ChatRequest, Message
    from router._providers import build_provider
    from router.config import ProviderConfig

    table = upstream_help_table()
    async with open_fake_upstream() as upstream:
        answers = {}
        for kind, (_, path) in table.items():
            config = ProviderConfig(
                kind=kind,  # type: ignore[arg-type]
                base_url=upstream.url + path.replace("<scenario>", "help"),
                api_key_env="FAKE_KEY",
            )
            provider = build_provider(kind, config, {"FAKE_KEY": "sk-test"})
            try:
                request = ChatRequest(model="m1", messages=[Message.user(kind)], max_tokens=8)
                answers[kind] = (await provider.complete(request)).text
            finally:
                await provider.aclose()
    assert answers == {kind: f"echo: {kind}" for kind in table}
    assert {r.path.split("/")[1] for r in upstream.requests} == {"help"}
