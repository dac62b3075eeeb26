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


def _server_pid(port: int) -> int | None:
    """The process id of the Redis server answering on ``port`` (``INFO server``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
        s.sendall(b"INFO server\r\n")
        data = b""
        while b"\r\nrun_id:" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return None
            data += chunk
    for line in data.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.partition(b":")[2])
    return None


class _PortTaken(Exception):
    """The port picked for a new server was taken before it could bind it."""


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port`` with data in ``directory``."""

    def __init__(self, executable: str, directory: Path, port: int | None = None) -> None:
        self.executable = executable
        self.directory = directory
        self.port = port or _free_port()
        #: The port was picked here (free when asked, not held): if another process
        #: (another pytest-xdist worker's server or client) takes it before the first
        #: start binds it, that start picks another.  A restart keeps its port.
        self._may_move = port is None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on the same port as before) and wait until it accepts connections."""
        for _ in range(5):
            try:
                self._start()
            except _PortTaken:
                self.port = _free_port()
                continue
            self._may_move = False
            return
        raise RuntimeError("redis-server found no free port in 5 tries")

    def _start(self) -> None:
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
                returncode, self.proc = self.proc.returncode, None
                text = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                if self._may_move and "Address already in use" in text:
                    raise _PortTaken
                raise RuntimeError(f"redis-server exited with {returncode}: {text}")
            try:
                # Ours, not another worker's server on the same port: its process id.
                if _server_pid(self.port) == self.proc.pid:
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
