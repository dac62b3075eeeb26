"""The wire chaos run's allowance for a loaded machine: what _Stalls counts, and what not.

A request's ending may be late by ``slack`` plus the time the loop's thread was ready to
run and waited for a CPU another process held.  Time the loop spent blocked or busy by
itself is never excused, so a router that blocks its loop is still caught.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from router._tools._chaos import _Stalls

ROOT = Path(__file__).resolve().parents[2]

needs_schedstat = pytest.mark.skipif(
    _Stalls._waited() is None, reason="the kernel does not count run-queue waits here"
)


def test_between_sums_the_late_wakeups_that_overlap_the_window() -> None:
    """Only wake-ups overlapping the window count, each with its starved seconds."""
    stalls = _Stalls()
    stalls.spans = [(0.0, 0.5, 0.4), (1.0, 1.2, 0.1), (2.0, 3.0, 0.9)]
    assert stalls.between(0.6, 0.9) == 0.0
    assert stalls.between(0.4, 1.1) == pytest.approx(0.5)
    assert stalls.between(1.2, 2.0) == 0.0  # touching ends do not overlap
    assert stalls.total == pytest.approx(1.4)


@needs_schedstat
async def test_a_loop_blocked_by_its_own_code_is_not_excused() -> None:
    """A synchronous 0.4 s sleep in the loop makes the watcher 0.4 s late, but the thread
    was not waiting for a CPU: (almost) nothing is counted as starved."""
    stalls = _Stalls()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalls.watch)
        await trio.sleep(0.05)
        t0 = trio.current_time()
        time.sleep(0.4)  # noqa: ASYNC251 - the point: a loop blocked by its own code
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - t0 >= 0.4
    assert stalls.between(t0, t0 + 0.4) < 0.1, stalls.spans


CONTENDED = textwrap.dedent(
    """
    import os, time, trio
    from router._tools._chaos import _Stalls

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    hog = os.fork()
    if hog == 0:
        while True:  # another process that wants the one CPU all the time
            pass

    async def main():
        stalls = _Stalls()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stalls.watch)
            end = trio.current_time() + 1.0
            while trio.current_time() < end:  # a busy loop, as in a chaos run
                t = time.process_time()
                while time.process_time() - t < 0.002:
                    pass
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
        print(stalls.total)

    try:
        trio.run(main)
    finally:
        os.kill(hog, 9)
        os.waitpid(hog, 0)
    """
)


@needs_schedstat
def test_waiting_for_a_cpu_another_process_holds_is_counted() -> None:
    """Pinned to one CPU with a process that spins on it, a busy trio loop waits for the
    CPU about half the time: over 1 s, well over 0.2 s is counted as starved."""
    done = subprocess.run(
        [sys.executable, "-c", CONTENDED],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) > 0.2, done.stdout
