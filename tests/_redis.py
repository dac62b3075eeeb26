"""A real ``redis-server`` for the shared-limits tests: its own loopback port, its own
temporary directory, no persistence; killed, paused or restarted on the same port.

No mock or fake Redis: the tests run the router's Lua scripts on the real thing.
Without ``redis-server`` on the PATH the tests that need it are skipped, naming the
Debian package to install — unless ``LLM_ROUTER_REQUIRE_REDIS=1`` (CI sets it), where
they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "require_redis_server"]

#: How long a starting server may take to accept connections.
START_TIMEOUT = 10.0


def require_redis_server() -> str:
    """The path of ``redis-server``; skip (or, with LLM_ROUTER_REQUIRE_REDIS=1, fail)
    when it is missing."""
    path = shutil.which("redis-server")
    if path is None:
        reason = (
            "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server); "
            "the shared-limits tests need a real one"
        )
        if os.environ.get("LLM_ROUTER_REQUIRE_REDIS") == "1":
            pytest.fail(reason + " and LLM_ROUTER_REQUIRE_REDIS=1 requires it")
        pytest.skip(reason)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port`` with data in ``directory``."""

    def __init__(self, executable: str, directory: Path, port: int | None = None) -> None:
        self.executable = executable
        self.directory = directory
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on the same port as before) and wait until it accepts connections."""
        assert self.proc is None, "already running"
        # A fixed argv (no shell); the log goes to the temporary directory.
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}: "
                    + (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start within {START_TIMEOUT}s")
            time.sleep(0.02)

    def kill(self) -> None:
        """``kill -9`` it (everything in it is lost: no persistence)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Kill it and start a new one on the same port (empty)."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze it (SIGCONT)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop it for good (resumed first if frozen, so it can exit)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
