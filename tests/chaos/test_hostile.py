"""The hostile server does what it says, and the limit arithmetic the suite judges by is right."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from providers.testing._hostile import (
    BOMB_BYTES,
    HOSTILE_FAULTS,
    HUGE_BYTES,
    HostileServer,
    open_hostile_server,
)
from router._tools._chaos import HOSTILE, WIRE_FAULTS, rpm_excess

KEY = "sk-chaos-hostile-test-0123456789abcdef"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> httpx.Response:
    return await client.post(
        url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )


@pytest.mark.parametrize(
    ("fault", "status", "check"),
    [
        ("ok", 200, lambda r: r.json()["choices"][0]["message"]["content"] == "hostile answer"),
        ("429-huge", 429, lambda r: r.headers["retry-after"] == "86400"),
        ("529", 529, lambda r: "error" in r.json()),
        ("echo-id", 200, lambda r: r.headers["x-request-id"] == KEY),
        ("echo-error", 401, lambda r: KEY in r.json()["error"]["message"]),
        ("echo-sse", 200, lambda r: KEY.encode() in r.content),
        ("malformed", 200, lambda r: r.content.startswith(b'{"id"')),
        ("utf8", 200, lambda r: b"\xff\xfe" in r.content),
    ],
)
async def test_each_fault_answers_as_documented(fault: str, status: int, check: object) -> None:
    """Status codes, echoed keys and broken bodies reach an HTTP client as the table says."""
    async with open_hostile_server() as server, httpx.AsyncClient() as client:
        response = await _post(client, server.base_url(fault), CHAT)
        assert response.status_code == status
        assert callable(check)
        assert check(response)
        assert server.counts(fault).requests == 1


async def test_the_big_bodies_are_as_big_as_stated() -> None:
    """huge is 50 MiB of valid JSON; gzip inflates to 256 MiB of valid JSON from ~260 KiB."""
    async with open_hostile_server() as server, httpx.AsyncClient(timeout=30) as client:
        huge = await _post(client, server.base_url("huge"), CHAT)
        assert len(huge.content) > HUGE_BYTES
        assert len(json.loads(huge.content)["choices"][0]["message"]["content"]) == HUGE_BYTES
        async with client.stream(
            "POST",
            server.base_url("gzip") + "/chat/completions",
            json=CHAT,
            headers={"accept-encoding": "gzip"},
        ) as response:
            assert response.headers["content-encoding"] == "gzip"
            wire = b"".join([chunk async for chunk in response.aiter_raw()])
    assert len(wire) < 512 * 1024
    assert len(gzip.decompress(wire)) > BOMB_BYTES


async def test_truncate_reset_and_hang_break_the_exchange() -> None:
    """truncate ends the body early, reset resets the connection, hang never answers."""
    async with open_hostile_server() as server, httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await _post(client, server.base_url("truncate"), CHAT)
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await _post(client, server.base_url("reset"), CHAT)
        with trio.move_on_after(0.3) as scope:
            await _post(client, server.base_url("hang"), CHAT)
        assert scope.cancelled_caught
        await trio.sleep(0.05)
        assert server.counts("hang").disconnects == 1
        assert server.counts("hang").in_progress == 0


async def test_the_server_counts_concurrency_per_path() -> None:
    """Three requests hanging at once on one path count 3; a tagged path counts apart."""
    async with open_hostile_server() as server, httpx.AsyncClient() as client:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(_post, client, server.base_url("hang"), CHAT)
            nursery.start_soon(_post, client, server.base_url("hang", "other"), CHAT)
            await trio.sleep(0.2)
            assert server.counts("hang").in_progress == 3
            assert server.counts("hang~other").in_progress == 1
            nursery.cancel_scope.cancel()
        await trio.sleep(0.05)
        assert server.counts("hang").max_concurrency == 3
        assert server.counts("hang").in_progress == 0


def _brute_excess(arrivals: list[float], rpm: int, burst: int, tol: float) -> float:
    ts = sorted(arrivals)
    worst = -float("inf")
    for i in range(len(ts)):
        for j in range(i, len(ts)):
            worst = max(worst, (j - i + 1) - burst - rpm / 60.0 * (ts[j] - ts[i] + tol))
    return worst


@given(
    st.lists(st.floats(0, 120, allow_nan=False), min_size=1, max_size=40),
    st.integers(1, 1200),
    st.integers(1, 30),
)
def test_rpm_excess_is_the_worst_window(arrivals: list[float], rpm: int, burst: int) -> None:
    """Invariant: rpm_excess equals the worst window over all pairs (the O(n^2) recount)."""
    assert rpm_excess(arrivals, rpm, burst, 0.25) == pytest.approx(
        _brute_excess(arrivals, rpm, burst, 0.25), abs=1e-6
    )


def test_chaos_takes_its_hostile_faults_from_the_server() -> None:
    """Chaos's hostile faults are the server's own list less the paths that answer well,
    plus accept-then-hang: every one is served, and a fault added to the server joins the
    mix without a second list to edit."""
    assert set(HOSTILE) == (set(HOSTILE_FAULTS) - {"ok", "late", "slow"}) | {"accept-hang"}
    assert {f"h-{f}" for f in HOSTILE} <= set(WIRE_FAULTS)
    server = HostileServer()
    for fault in HOSTILE:
        server.base_url(fault)  # raises for a fault the server does not serve
    code = (
        "import providers.testing._hostile as hostile\n"
        "hostile.HOSTILE_FAULTS = (*hostile.HOSTILE_FAULTS, 'teapot')\n"
        "from router._tools._chaos import WIRE_FAULTS\n"
        "assert 'h-teapot' in WIRE_FAULTS, WIRE_FAULTS\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
