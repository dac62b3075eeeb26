"""Run ``python -m router ARGS`` without paying the interpreter's imports each time.

One server interpreter imports the router's packages once, then forks a child per
command: the child is a process of its own (its own environment, standard input,
output files and exit status) that runs ``router`` (its ``__main__``) exactly as
``python -m router`` does (an exception ends it with a traceback and status 1,
through the interpreter's own exit).  :func:`run` hands back a
``subprocess.CompletedProcess`` like ``subprocess.run(..., capture_output=True,
text=True)``, and kills the command at ``timeout`` like it (``TimeoutExpired``).
Commands that must be signalled mid-run still start as real subprocesses.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests._helpers import machine_load

SERVER = r"""
import json, os, runpy, sys

import httpx, msgspec, trio  # noqa: E401  what every command imports
import providers, router, router._providers, router._tools._cli, router._tools._commands  # noqa: E401

requests, answers = os.dup(0), os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)

def readline():
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(requests, 1)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)

while (job := readline()) is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(requests)
        os.close(answers)
        os.environ.clear()
        os.environ.update(job["env"])
        source = os.open(job["stdin"] or os.devnull, os.O_RDONLY)
        os.dup2(source, 0)
        os.close(source)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            out = os.open(os.path.join(job["dir"], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, fd)
            os.close(out)
        sys.argv = ["-m", *job["args"]]
        runpy.run_module("router", run_name="__main__", alter_sys=True)
        sys.exit(0)
    os.write(answers, f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(answers, f"{os.waitstatus_to_exitcode(status)}\n".encode())
"""


class _Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if "KEY" not in k},
        )
        self.scratch = tempfile.TemporaryDirectory(prefix="cli-runner-")
        self.count = 0

    def line(self, deadline: float) -> str | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                return None
            chunk = os.read(fd, 1)
            if not chunk:
                raise RuntimeError("the CLI runner died")
            data += chunk
        return data.decode()

    def run(
        self, args: list[str], env: dict[str, str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        self.count += 1
        where = Path(self.scratch.name) / str(self.count)
        where.mkdir()
        source = None
        if stdin is not None:
            source = where / "stdin"
            source.write_text(stdin, encoding="utf-8")
        job = {"args": args, "env": env, "stdin": str(source or ""), "dir": str(where)}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        self.proc.stdin.flush()
        # Only a hung command should reach the timeout: it stretches with the machine's
        # load (tests/_helpers.py), as the command's own run does.
        deadline = time.monotonic() + timeout * machine_load()
        pid = self.line(deadline + 5.0)
        assert pid is not None, "the CLI runner did not fork"
        code = self.line(deadline)
        argv = [sys.executable, "-m", "router", *args]
        if code is None:
            os.kill(int(pid), signal.SIGKILL)
            self.line(time.monotonic() + 5.0)  # reaped by the runner
            raise subprocess.TimeoutExpired(argv, timeout)
        out = (where / "stdout").read_text(encoding="utf-8", errors="replace")
        err = (where / "stderr").read_text(encoding="utf-8", errors="replace")
        return subprocess.CompletedProcess(argv, int(code), out, err)

    def close(self) -> None:
        self.proc.communicate(timeout=30)  # end of input: the runner exits
        self.scratch.cleanup()


_server: _Server | None = None


def run(
    args: list[str], *, env: dict[str, str], stdin: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([python, -m, router, *args], capture_output=True, text=True,
    env=env, input=stdin, timeout=timeout)``, forked from the warm runner."""
    global _server
    if _server is None:
        _server = _Server()
    return _server.run(args, env, stdin, timeout)


def close() -> None:
    """Stop the runner (at the end of the session)."""
    global _server
    if _server is not None:
        _server.close()
        _server = None
