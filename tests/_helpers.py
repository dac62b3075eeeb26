"""Small helpers the tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from providers import ChatRequest, Provider
from providers.testing import Fault, Scenario

ROOT = Path(__file__).resolve().parent.parent


async def collect(provider: Provider, request: ChatRequest) -> list[Any]:
    """Every event of one stream, in order."""
    async with provider.stream(request) as events:
        return [event async for event in events]


def one_fault(kind: str, **kw: Any) -> dict[str, Scenario]:
    """A scenario ``"s"`` whose every request gets the fault ``kind``."""
    return {"s": Scenario(faults=[Fault(kind=kind, rate=1.0, **kw)])}  # type: ignore[arg-type]


def machine_load() -> float:
    """How many times over its CPUs the machine is booked now: the 1-minute load average
    per CPU this process may use, at least 1.

    A real-time bound that only a hang should reach (an example's or a command's
    timeout) is multiplied by it: on a loaded 2-core CI machine (load 8: x4) the bound
    stretches with the work queued ahead of ours, and a hang still meets it.
    """
    try:
        load = os.getloadavg()[0]
        cpus = len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return 1.0
    return max(1.0, load / max(1, cpus))


def worker_env() -> dict[str, str]:
    """The environment of a test's worker process: this one's, the repository on
    ``PYTHONPATH`` and the fake provider key ``SHARED_TEST_KEY``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SHARED_TEST_KEY"] = "sk-shared-test"
    return env


async def run_workers(module: str, settings: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Run ``n`` processes of ``python -m module '<settings>'`` and start their work
    together (each prints ``ready`` when it is set up; all are told to go at once, with a
    line on their standard input); return the JSON summary each prints last."""
    argv = [sys.executable, "-m", module, json.dumps({**settings, "barrier": True})]
    procs = [
        await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=worker_env(),
            cwd=ROOT,
        )
        for _ in range(n)
    ]
    outputs: list[bytearray] = [bytearray() for _ in procs]
    errors: list[bytearray] = [bytearray() for _ in procs]
    ready = [trio.Event() for _ in procs]

    async def read(i: int) -> None:
        proc = procs[i]
        assert proc.stdout is not None
        async for chunk in proc.stdout:
            outputs[i] += chunk
            if b"ready\n" in outputs[i]:
                ready[i].set()
        ready[i].set()  # ended without "ready": the summary check below says why

    async def drain(i: int) -> None:
        assert procs[i].stderr is not None
        async for chunk in procs[i].stderr:
            errors[i] += chunk

    try:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(read, i)
                nursery.start_soon(drain, i)
            for event in ready:
                await event.wait()
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.send_all(b"go\n")
            for proc in procs:
                await proc.wait()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    summaries = []
    for proc, out, err in zip(procs, outputs, errors, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
        summaries.append(json.loads(out.decode().strip().splitlines()[-1]))
    return summaries
