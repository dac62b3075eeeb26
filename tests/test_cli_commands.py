"""``llm-router chat``, ``health`` and ``models``, run for real in subprocesses.

One fake upstream (``llm-router upstream --port 0``) serves the whole module; each test
writes a router config whose providers point at its scenarios (``good`` echoes,
``down`` answers 500 to everything, ``stuck`` never answers, ``drip`` sends its first
word and then waits) with a fake key in an environment variable.  Every subprocess has
a timeout, and no output may ever contain the key.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router._providers import AZURE_ENDPOINT_ENV, KEY_ENV
from tests import _cli_runner
from tests.test_cli import listening_url

TIMEOUT = 30.0  # only a hung command gets near it
KEY_VAR = "LLM_ROUTER_TEST_KEY"
FAKE_KEY = "sk-cli-test-not-a-real-key-8e1f"
MISSING_VAR = "LLM_ROUTER_TEST_MISSING_KEY"

# No real key may reach a subprocess, loopback is never proxied, and the fake key is set.
_REAL_KEYS = {var for names in KEY_ENV.values() for var in names} | {AZURE_ENDPOINT_ENV}
ENV = {
    **{k: v for k, v in os.environ.items() if k not in _REAL_KEYS and k != MISSING_VAR},
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    KEY_VAR: FAKE_KEY,
}

SCENARIOS = """
[scenarios.down]
faults = [{ kind = "status", status = 500, rate = 1.0 }]

[scenarios.stuck]
faults = [{ kind = "hang", rate = 1.0 }]

[scenarios.drip]
chunk_interval = 30.0
"""


def llm_router(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m router ARGS`` to completion (forked from a warm interpreter);
    the fake key must not show."""
    result = _cli_runner.run(
        list(args), env=ENV if env is None else env, stdin=stdin, timeout=TIMEOUT
    )
    assert FAKE_KEY not in result.stdout
    assert FAKE_KEY not in result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``llm-router: error:`` line of a failed command (exit 1, no traceback)."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llm-router: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a fake upstream playing the module's scenarios."""
    scenarios = tmp_path_factory.mktemp("upstream") / "scenarios.toml"
    scenarios.write_text(SCENARIOS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "upstream", "--port", "0", "--scenario", scenarios],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        yield listening_url(proc)
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)


def provider(name: str, url: str, scenario: str, *, kind: str = "openai", extra: str = "") -> str:
    """A ``[providers.NAME]`` table for ``scenario`` of the upstream at ``url``."""
    base = f"{url}/{scenario}/v1" if kind == "openai" else f"{url}/{scenario}"
    return (
        f'[providers.{name}]\nkind = "{kind}"\napi_key_env = "{KEY_VAR}"\n'
        f'base_url = "{base}"\nretry = {{ max_attempts = 1 }}\n{extra}\n'
    )


def config(tmp_path: Path, *tables: str) -> str:
    """Write a router config from TOML tables; return its path."""
    path = tmp_path / "router.toml"
    path.write_text("\n".join(tables))
    return str(path)


@pytest.fixture
def chat_config(tmp_path: Path, upstream_url: str) -> str:
    """``good`` and ``down`` providers, and the route ``fast`` = down, then good."""
    return config(
        tmp_path,
        provider("good", upstream_url, "good"),
        provider("down", upstream_url, "down"),
        '[routes.fast]\ntargets = ["down:gpt-4o-mini", "good:gpt-4o-mini"]\n',
    )


# --------------------------------------------------------------------------- chat


def test_chat_streams_the_echo_and_summarises_on_stderr(chat_config: str) -> None:
    """stdout is exactly the answer; stderr says who answered, the tokens and the cost."""
    result = llm_router("chat", "-m", "good:gpt-4o-mini", "hello there", "--config", chat_config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello there\n"
    (summary,) = result.stderr.splitlines()
    assert summary.startswith("answered by good (gpt-4o-mini) · tokens: ")
    assert " in, " in summary
    assert " out · cost: $0.00000" in summary  # gpt-4o-mini's built-in price
    assert "attempts" not in summary  # one target, one try: nothing to say


def test_chat_route_falls_back_and_the_summary_says_so(chat_config: str) -> None:
    """A route whose first target answers 500 streams the second's answer and says why."""
    result = llm_router("chat", "-m", "fast", "hello", "--config", chat_config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello\n"
    assert "answered by good (gpt-4o-mini)" in result.stderr
    assert "attempts: down failed (ServerError), good won (fallback)" in result.stderr


def test_chat_reads_the_prompt_from_stdin(chat_config: str) -> None:
    """Without a prompt argument the prompt is stdin, its trailing newline dropped."""
    result = llm_router(
        "chat", "-m", "good:gpt-4o-mini", "--config", chat_config, stdin="piped in\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: piped in\n"


def test_chat_json_prints_the_whole_response(chat_config: str) -> None:
    """``--json``: stdout is the ChatResponse (text, usage, cost, trace); stderr is empty."""
    result = llm_router("chat", "-m", "fast", "hi", "--config", chat_config, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    response = json.loads(result.stdout)
    assert response["text"] == "echo: hi"
    assert response["provider"] == "good"
    assert response["usage"]["input_tokens"] > 0
    assert response["cost"] > 0
    assert [(a["provider"], a["outcome"]) for a in response["attempts"]] == [
        ("down", "failed"),
        ("good", "won"),
    ]


def test_chat_system_prompt_and_options_are_sent(chat_config: str) -> None:
    """``--system``, ``--max-tokens`` and ``--temperature`` make a request the provider takes."""
    result = llm_router(
        "chat", "-m", "good:gpt-4o-mini", "hi", "--config", chat_config,
        "--system", "Be terse.", "--max-tokens", "50", "--temperature", "0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hi\n"


def test_chat_provider_failure_is_one_line_and_exit_1(chat_config: str) -> None:
    """A failing provider: the typed error's name and message on one line, exit 1."""
    line = one_error_line(
        llm_router("chat", "-m", "down:gpt-4o-mini", "hi", "--config", chat_config)
    )
    assert "ServerError: [down] HTTP 500:" in line


def test_chat_with_a_missing_key_names_the_variable(tmp_path: Path, upstream_url: str) -> None:
    """A provider whose key variable is unset: one line naming it; other providers still work."""
    path = config(
        tmp_path,
        provider("good", upstream_url, "good"),
        provider("nokey", upstream_url, "good", kind="anthropic").replace(KEY_VAR, MISSING_VAR),
    )
    line = one_error_line(
        llm_router("chat", "-m", "nokey:claude-3-5-haiku-latest", "hi", "--config", path)
    )
    assert (
        f"ConfigError: $.providers.nokey.api_key_env: the API key is missing: set the environment variable {MISSING_VAR}"
        in line
    )
    other = llm_router("chat", "-m", "good:gpt-4o-mini", "hi", "--config", path)
    assert other.returncode == 0, other.stderr


def test_chat_with_a_bad_config_names_the_path(tmp_path: Path) -> None:
    """An invalid config file: one line with the field's path and the file, exit 1."""
    path = config(tmp_path, '[providers.x]\nkind = "openai"\nrpm = "fast"\n')
    line = one_error_line(llm_router("chat", "-m", "x:gpt-4o-mini", "hi", "--config", path))
    assert "ConfigError: $.providers.x.rpm: expected int, got str" in line
    assert path in line


def test_chat_with_an_unknown_model_lists_what_is_configured(chat_config: str) -> None:
    """An unknown model: one NoRoute line listing the configured providers and routes."""
    line = one_error_line(llm_router("chat", "-m", "nope", "hi", "--config", chat_config))
    assert "NoRoute: no provider or route for model 'nope'" in line
    assert "['down', 'good']" in line
    assert "['fast']" in line


def test_chat_without_config_or_keys_says_what_to_set() -> None:
    """No ``--config`` and no key in the environment: one line listing the variables."""
    line = one_error_line(llm_router("chat", "-m", "gpt-4o-mini", "hi"))
    assert "no API key is in the environment" in line
    assert "OPENAI_API_KEY" in line


def test_debug_shows_the_traceback(chat_config: str) -> None:
    """``--debug`` lets the error through with its traceback."""
    result = llm_router("--debug", "chat", "-m", "nope", "hi", "--config", chat_config)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "NoRoute" in result.stderr


def test_chat_ctrl_c_mid_stream_exits_130_quietly(tmp_path: Path, upstream_url: str) -> None:
    """SIGINT while the answer streams: exit 130, no traceback, the output line ended."""
    path = config(tmp_path, provider("drip", upstream_url, "drip"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "chat", "-m", "drip:m", "one two", "--config", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        seen = b""
        while b"echo:" not in seen:  # the first word: the stream is under way
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            assert ready, f"no output before the deadline; got {seen!r}"
            chunk = os.read(proc.stdout.fileno(), 100)
            assert chunk, f"the output closed early; got {seen!r}"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert (seen + rest).decode() == "echo:\n"
    assert b"Traceback" not in err


# --------------------------------------------------------------------------- health


def test_health_of_healthy_providers_exits_0(tmp_path: Path, upstream_url: str) -> None:
    """Every provider answers its probe: a table of healthy rows, exit 0."""
    path = config(
        tmp_path,
        provider("good", upstream_url, "good"),
        provider("claude", upstream_url, "good", kind="anthropic"),
    )
    result = llm_router("health", "--config", path)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["PROVIDER", "KIND", "STATUS", "P50", "P95", "REASON"]
    assert [row.split()[:3] for row in rows] == [
        ["good", "openai", "healthy"],
        ["claude", "anthropic", "healthy"],
    ]
    assert all(row.split()[3].endswith("ms") for row in rows)  # the probe's latency


def test_health_reports_each_failure_and_exits_3(tmp_path: Path, upstream_url: str) -> None:
    """A failed probe, a probe past the deadline and a missing key are each unhealthy: exit 3."""
    path = config(
        tmp_path,
        provider("good", upstream_url, "good"),
        provider("down", upstream_url, "down"),
        provider("stuck", upstream_url, "stuck"),
        provider("nokey", upstream_url, "good").replace(KEY_VAR, MISSING_VAR),
    )
    result = llm_router("health", "--config", path, "--deadline", "1", "--json")
    assert result.returncode == 3, result.stderr
    rows = {row["provider"]: row for row in json.loads(result.stdout)}
    assert list(rows) == ["good", "down", "stuck", "nokey"]
    assert (rows["good"]["status"], rows["good"]["probe"]) == ("healthy", "ok")
    assert rows["good"]["latency_p50"] > 0
    assert (rows["down"]["status"], rows["down"]["probe"]) == ("unhealthy", "failed")
    assert rows["down"]["reason"].startswith("probe failed: ServerError: [down] HTTP 500")
    assert (rows["stuck"]["status"], rows["stuck"]["probe"]) == ("unhealthy", "timed out")
    assert rows["stuck"]["reason"] == "no answer to the probe within 1s"
    assert (rows["nokey"]["status"], rows["nokey"]["probe"]) == ("unhealthy", "not started")
    assert MISSING_VAR in rows["nokey"]["reason"]


# --------------------------------------------------------------------------- models


def test_models_without_config_lists_the_built_in_table() -> None:
    """No config and no key: every built-in model, with its window, prices and date."""
    result = llm_router("models")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["openai:gpt-4o-mini"][:6] == [
        "openai:gpt-4o-mini",
        "128,000",
        "0.15",
        "0.60",
        "0.075",
        "2025-08-01",
    ]
    assert "anthropic:claude-3-5-haiku-latest" in rows
    assert "gemini:gemini-2.0-flash" in rows
    assert "every built-in model" in result.stdout


def test_models_with_config_lists_targets_with_overrides(tmp_path: Path) -> None:
    """With a config: its providers' kinds and routes only, [models] overrides starred; no key needed."""
    path = config(
        tmp_path,
        '[providers.oa]\nkind = "openai"\napi_key_env = "LLM_ROUTER_TEST_MISSING_KEY"\n',
        '[providers.local]\nkind = "mock"\nmock = { models = ["tiny"] }\n',
        '[routes.fast]\ntargets = ["oa:gpt-4o-mini", "local:tiny"]\n',
        '[models."oa:gpt-4o-mini"]\ninput_price = 0.1\ncontext_window = 64000\n',
        '[models."local:tiny"]\ninput_price = 0.0\noutput_price = 0.0\n',
    )
    result = llm_router("models", "--config", path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:] if ":" in line.split()[0]}
    assert rows["oa:gpt-4o-mini"] == [
        "oa:gpt-4o-mini",
        "64,000*",
        "0.10*",
        "0.60",
        "0.075",
        "2025-08-01",
        "fast",
    ]
    assert rows["local:tiny"] == ["local:tiny", "-", "0.00*", "0.00*", "-", "config", "fast"]
    assert rows["oa:gpt-4o"][1:3] == ["128,000", "2.50"]  # the kind's built-in models too
    assert not any(target.startswith(("anthropic:", "gemini:")) for target in rows)
    assert lines[-1].startswith("* set in the config's [models]")


def test_models_json_says_where_each_value_came_from(tmp_path: Path) -> None:
    """``--json``: one object per target, with the overridden fields and the price date."""
    path = config(
        tmp_path,
        '[providers.oa]\nkind = "openai"\n',
        '[models."gpt-4o-mini"]\noutput_price = 0.5\n',
    )
    result = llm_router("models", "--config", path, "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["target"]: row for row in json.loads(result.stdout)}
    mini = rows["oa:gpt-4o-mini"]
    assert (mini["input_price"], mini["output_price"]) == (0.15, 0.5)
    assert mini["from_config"] == ["output_price"]
    assert mini["as_of"] == "2025-08-01"
    assert rows["oa:gpt-4o"]["from_config"] == []


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(["chat", "hi"], "-m/--model", id="chat-without-model"),
        pytest.param(["chat", "-m", "x"], "no prompt", id="chat-without-prompt"),
        pytest.param(
            ["chat", "-m", "x", "--max-tokens", "0", "hi"], "--max-tokens", id="max-tokens-0"
        ),
        pytest.param(
            ["chat", "-m", "x", "--temperature", "3", "hi"], "--temperature", id="temperature-3"
        ),
        pytest.param(["health", "--deadline", "0"], "--deadline", id="deadline-0"),
        pytest.param(["models", "--frobnicate"], "unrecognized arguments", id="unknown-flag"),
    ],
)
def test_bad_command_lines_are_usage_errors(args: list[str], says: str) -> None:
    """Bad flags, or no prompt at all: argparse's usage message, exit 2, no traceback."""
    result = llm_router(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: llm-router")
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_quick_writes_its_tables_and_json(tmp_path: Path) -> None:
    """``llm-router bench --quick`` runs the in-process and loopback benchmarks for real
    (the fake upstream in a child process) and writes the printed figures as JSON: the
    loopback ratio is a median of paired rounds inside its rounds' range.  Structure
    only — how fast is for docs/benchmarks.md, never asserted here."""
    out = tmp_path / "bench.json"
    result = llm_router("bench", "--quick", "overhead", "loopback", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "overhead (in-process" in result.stdout
    assert "throughput ratio" in result.stdout
    figures = json.loads(out.read_text())
    assert set(figures) >= {"machine", "overhead", "loopback"}
    assert figures["overhead"]["router_c1"]["requests"] > 0
    for run in figures["loopback"]:
        assert run["concurrency"] in (1, 16)
        assert run["rounds"] >= 1
        assert run["ratio_low"] <= run["throughput_ratio"] <= run["ratio_high"]
        # bare rounds bracket the router's: one more of them
        per_round = run["router"]["requests"] // run["rounds"]
        assert run["bare"]["requests"] == run["router"]["requests"] + per_round > per_round > 0
    result = llm_router("bench", "nonsense")
    assert result.returncode != 0
    assert "nonsense" in result.stderr
    assert "Traceback" not in result.stderr
