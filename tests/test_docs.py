"""The documentation works: every Python example runs, every relative link resolves.

Each ```python block of README.md and docs/*.md runs as ``__main__`` in a process of its
own (forked from one ``-W error`` interpreter that imported the shared modules once), in
a scratch directory, with a timeout, with an audit hook that refuses
any connection or name lookup that is not loopback: examples talk to the fake upstream,
never to the network.  A block that cannot run on its own says so on the line just
above its fence::

    <!-- not-runnable: needs a real OPENAI_API_KEY -->

and is then only checked to parse (top-level ``await`` allowed).  The blocks are started
all at once on first use, so the file takes about as long as the slowest example.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._helpers import machine_load

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Every block starts at once, so the later ones share the machine with the others: the
# timeout, from that common start, is multiplied by the machine's load (per CPU, >= 1)
# each time it is checked.  Only a hung example gets near it.
TIMEOUT = 60.0

MARKER = re.compile(r"^\s*<!--\s*not-runnable:(?P<reason>.*?)-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")

# One interpreter imports what the examples share, installs a hook that refuses
# non-loopback sockets, then forks a child per block: each child is a process of its
# own (its own ``__main__``, working directory, output files and exit status) that runs
# its block as ``__main__``, exactly as ``python -W error script.py`` would, but without
# paying the imports again.  An exception ends the child through the interpreter's own
# exit path (traceback on stderr, status 1, atexit handlers and threads joined).
RUNNER = """
import ipaddress, os, runpy, socket, sys, time

def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False

def _no_network(event, args):
    if event == "socket.getaddrinfo" and not _loopback(args[0]):
        raise ConnectionRefusedError(f"documentation examples must not use the network: {args[0]!r}")
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not _loopback(address[0]):
            raise ConnectionRefusedError(f"documentation examples must not use the network: {address!r}")

import httpx, msgspec, trio, trio.testing  # noqa: E401  what the examples share
import providers, router, router.testing  # noqa: E401

sys.addaudithook(_no_network)
children = {}
for script in sys.argv[1:]:
    scratch = os.path.dirname(script)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.chdir(scratch)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            out = os.open(os.path.join(scratch, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, fd)
            os.close(out)
        sys.argv = [script]
        runpy.run_path(script, run_name="__main__")
        sys.exit(0)
    children[pid] = scratch
    with open(os.path.join(scratch, "pid.tmp"), "w") as f:
        f.write(str(pid))
    os.rename(os.path.join(scratch, "pid.tmp"), os.path.join(scratch, "pid"))
while children:
    pid, status = os.wait()
    scratch = children.pop(pid)
    with open(os.path.join(scratch, "rc.tmp"), "w") as f:
        f.write(str(os.waitstatus_to_exitcode(status)))
    os.rename(os.path.join(scratch, "rc.tmp"), os.path.join(scratch, "rc"))
"""


@dataclass(frozen=True)
class Block:
    """One ```python block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    not_runnable: str | None  # the marker's reason, if marked

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_markdown(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The python blocks of ``path``, and every not-runnable marker as ``(line, text)``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    markers: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if MARKER.match(line):
            markers.append((i + 1, line))
        opening = FENCE.match(line)
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        end = i + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence[0] * len(fence))
            and not lines[end].strip().strip(fence[0])
        ):
            end += 1
        if opening["info"].lower() in ("python", "py", "python3"):
            body = "\n".join(
                text[len(indent) :] if text.startswith(indent) else text
                for text in lines[i + 1 : end]
            )
            marker = MARKER.match(lines[i - 1]) if i > 0 else None
            blocks.append(
                Block(
                    path=path,
                    line=i + 1,
                    code=textwrap.dedent(body) + "\n",
                    not_runnable=marker["reason"].strip() if marker else None,
                )
            )
        i = end + 1
    return blocks, markers


BLOCKS = [block for path in DOC_FILES for block in parse_markdown(path)[0]]
RUNNABLE = [block for block in BLOCKS if block.not_runnable is None]
NOT_RUNNABLE = [block for block in BLOCKS if block.not_runnable is not None]


@dataclass(frozen=True)
class Outcome:
    """How one block's run ended."""

    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        status = "timed out" if self.returncode is None else f"exit status {self.returncode}"
        return f"{status} after {self.seconds:.1f}s\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def child_env() -> dict[str, str]:
    """The environment for an example: this checkout first, loopback never proxied."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    return env


@pytest.fixture(scope="session")
def run_block(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Block], Outcome]]:
    """Run every runnable block at once (on first use) and hand out their outcomes."""
    outcomes: dict[str, Outcome] = {}
    scratches: dict[str, Path] = {}
    server: list[subprocess.Popen[bytes]] = []
    began = [0.0]

    def start_all() -> None:
        workdir = tmp_path_factory.mktemp("doc-examples")
        runner = workdir / "run_example.py"
        runner.write_text(RUNNER, encoding="utf-8")
        scripts = []
        for n, block in enumerate(RUNNABLE):
            scratch = workdir / f"block{n}"
            scratch.mkdir()
            script = scratch / f"{block.path.stem}_line{block.line}.py"
            script.write_text(block.code, encoding="utf-8")
            scratches[block.id] = scratch
            scripts.append(str(script))
        with open(workdir / "runner.log", "wb") as log:
            server.append(
                subprocess.Popen(
                    [sys.executable, "-W", "error", str(runner), *scripts],
                    cwd=workdir,
                    env=child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        began[0] = time.monotonic()

    def read(path: Path) -> str:
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def run(block: Block) -> Outcome:
        if not server:
            start_all()
        if block.id not in outcomes:
            scratch = scratches[block.id]
            code: int | None = None
            while not (scratch / "rc").exists():
                if server[0].poll() is not None and not (scratch / "rc").exists():
                    log = read(scratch.parent / "runner.log")
                    pytest.fail(f"{block.id}: the example runner died:\n{log}")
                if time.monotonic() > began[0] + TIMEOUT * machine_load():
                    os.kill(int(read(scratch / "pid")), signal.SIGKILL)  # the runner reaps it
                    break
                time.sleep(0.01)
            else:
                code = int(read(scratch / "rc"))
            seconds = time.monotonic() - began[0]
            out, err = read(scratch / "stdout"), read(scratch / "stderr")
            outcomes[block.id] = Outcome(code, out, err, seconds)
        return outcomes[block.id]

    yield run
    # The runner (and through it every example) ends here, whether or not each example
    # was asked for: a ``-k`` that selects some examples only must leave no process behind.
    if server:
        proc = server[0]
        if proc.poll() is None:
            for scratch in scratches.values():
                if (scratch / "pid").exists() and not (scratch / "rc").exists():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(read(scratch / "pid")), signal.SIGKILL)
        proc.wait(timeout=TIMEOUT * machine_load())


def test_the_docs_have_python_examples() -> None:
    """The extractor finds the examples (an empty parametrization would prove nothing)."""
    assert any(block.path.name == "README.md" for block in RUNNABLE)
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_example_runs(block: Block, run_block: Callable[[Block], Outcome]) -> None:
    """The example runs to completion without error, warning or network access."""
    outcome = run_block(block)
    assert outcome.returncode == 0, f"{block.id}: {outcome.explain()}"


def test_readme_example_talks_to_the_fake_upstream(
    run_block: Callable[[Block], Outcome],
) -> None:
    """The README's short example really completes and streams an answer over loopback."""
    (readme,) = [block for block in RUNNABLE if block.path.name == "README.md"]
    outcome = run_block(readme)
    assert outcome.returncode == 0, outcome.explain()
    lines = outcome.stdout.splitlines()
    # complete(): the echo, the provider, its cost from the built-in gpt-4o-mini price,
    # and the trace; then the streamed deltas of the same echo.
    assert lines[0].startswith("echo: hello there openai ")
    assert lines[0].endswith("['won']")
    assert float(lines[0].split()[4]) > 0
    assert lines[1] == "echo: hello there"


def test_not_runnable_examples_still_parse() -> None:
    """A block marked not-runnable is still valid Python (top-level await allowed)."""
    for block in NOT_RUNNABLE:
        assert block.not_runnable, f"{block.id}: say why it cannot run"
        try:
            compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        except SyntaxError as exc:
            pytest.fail(f"{block.id}: {exc}")


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_not_runnable_markers_sit_on_a_python_fence(path: Path) -> None:
    """Each ``<!-- not-runnable: reason -->`` has a reason and is right above a python block."""
    blocks, markers = parse_markdown(path)
    marked = {block.line - 1 for block in blocks if block.not_runnable is not None}
    for line, text in markers:
        assert line in marked, f"{path.name}:{line}: {text.strip()} is not above a python fence"
        match = MARKER.match(text)
        assert match is not None
        assert match["reason"].strip(), f"{path.name}:{line}: the marker needs a reason"


def test_toml_examples_parse_and_scenario_files_load(tmp_path: Path) -> None:
    """Every ```toml block is valid TOML; a ``[scenarios.*]`` file also loads as scenarios."""
    from providers.testing import load_scenarios

    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            opening = FENCE.match(line)
            if opening is None or opening["info"].lower() != "toml":
                continue
            end = next(i for i in range(n + 1, len(lines)) if lines[i].strip() == opening["fence"])
            text = "\n".join(lines[n + 1 : end]) + "\n"
            where = f"{path.relative_to(ROOT)}:{n + 1}"
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                pytest.fail(f"{where}: {exc}")
            if set(data) == {"scenarios"}:
                file = tmp_path / "scenarios.toml"
                file.write_text(text, encoding="utf-8")
                assert load_scenarios(file), where


# --------------------------------------------------------------------------- links

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+\".*\")?\s*$")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(?P<text>.+?)\s*#*\s*$")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` outside fenced code, with inline code spans removed."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = FENCE.match(line)
        if fence is None and opening is not None:
            fence = opening["fence"]
            continue
        if fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
            continue
        out.append((n, re.sub(r"`+[^`]*`+", "", line)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link shows its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeats get -1, -2, ... like GitHub)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match["text"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` for every link that is not a URL with a scheme."""
    links: list[tuple[int, str]] = []
    for n, line in prose_lines(path):
        targets = [m["target"] for m in LINK.finditer(line)]
        ref = REFERENCE.match(line)
        if ref is not None:
            targets.append(ref["target"])
        links.extend((n, t) for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t))
    return links


# Pages the docs link to before they are written.  Links to them are checked by
# test_announced_page_is_written, which is an expected failure while a page is missing
# (shown by ``-ra``), so the other links stay strictly checked meanwhile.
ANNOUNCED = {ROOT / "docs" / "benchmarks.md": "the benchmarks page (linked from routing.md)"}


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(
            page,
            id=page.name,
            marks=pytest.mark.xfail(
                not page.exists(), reason=f"{what} is not written yet", strict=True
            ),
        )
        for page, what in ANNOUNCED.items()
    ],
)
def test_announced_page_is_written(page: Path) -> None:
    """A page the docs already link to exists."""
    assert page.exists(), f"{page.relative_to(ROOT)} is linked but missing"


def test_the_link_checker_sees_links() -> None:
    """The README's links to the docs are found (an empty check would prove nothing)."""
    assert "docs/index.md" in [target for _, target in relative_links(ROOT / "README.md")]
    assert slug("`[providers.NAME]` — `ProviderConfig`") == "providersname--providerconfig"
    assert slug("1. The plan: a pure policy") == "1-the-plan-a-pure-policy"


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link points at a file that exists (and at a heading, for ``#anchor``)."""
    broken: list[str] = []
    for line, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{line}: {target}"
        if not dest.exists():
            if dest not in ANNOUNCED:
                broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading with that anchor in {dest.name})")
    assert broken == []
