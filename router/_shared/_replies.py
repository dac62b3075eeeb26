"""Reading a script's reply: the values the script returns, or :class:`MalformedReply`.

A reply is a value from outside the process: a proxy or another server may answer in
place of Redis, and a user may have written over a key with something the script did
not expect.  Whatever it is, it must not crash the task that reads it (a breaker's or
the budgets' task: the router would go down with it).  So each reader checks the
reply's shape and every value before it changes any state, and a reply that is not
what the script returns is one more way for Redis to fail: :func:`refuse` switches the
process to local limits, as a timeout or an error reply does (an event, a log line
naming what was wrong, scrubbed of the URL and password), and the caller goes on as
after :class:`~router._shared._client.SharedUnavailable`.

Cheap on purpose: a type test and a comparison per value, no copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._client import SharedClient, SharedUnavailable

__all__ = ["MalformedReply", "array", "integer", "number", "refuse", "text"]

#: The most of a bad value a reason shows (a reply may be large, or hold anything).
_SHOWN = 40


class MalformedReply(Exception):
    """A script's reply is not what the script returns; the message says what is wrong."""


def _show(value: object) -> str:
    shown = repr(value)
    if len(shown) > _SHOWN:
        shown = shown[: _SHOWN - 3] + "..."
    return f"{type(value).__name__} {shown}"


def array(reply: object, length: int, what: str) -> Sequence[object]:
    """``reply`` as an array of exactly ``length`` values."""
    if not isinstance(reply, list | tuple):
        raise MalformedReply(f"{what}: expected an array of {length}, got {_show(reply)}")
    if len(reply) != length:
        raise MalformedReply(f"{what}: expected an array of {length}, got {len(reply)} values")
    return reply


def integer(value: object, what: str, low: int, high: float = math.inf) -> int:
    """``value`` as an integer in ``[low, high]`` (a script's number is an integer reply)."""
    if type(value) is not int or not low <= value <= high:
        expected = f"an integer in [{low}, {high:g}]"
        raise MalformedReply(f"{what}: expected {expected}, got {_show(value)}")
    return value


def number(value: object, what: str, high: float = math.inf) -> float:
    """``value`` (a decimal as bytes, or an integer) as a finite number in ``[0, high]``
    (not nan: every comparison with it is false, so a cap would let everything by)."""
    try:
        if type(value) is int or isinstance(value, bytes):
            x = float(value)
            if 0.0 <= x <= high and math.isfinite(x):
                return x
    except ValueError:
        pass
    raise MalformedReply(f"{what}: expected a number in [0, {high:g}], got {_show(value)}")


def text(value: object, what: str, longest: int = 256) -> str:
    """``value`` (bytes) as text of at most ``longest`` characters (undecodable bytes are
    shown as U+FFFD: the text is an id, shown, never parsed)."""
    if isinstance(value, bytes) and len(value) <= longest:
        return value.decode("utf-8", "replace")
    raise MalformedReply(f"{what}: expected text of at most {longest} bytes, got {_show(value)}")


def refuse(client: SharedClient, script: str, problem: MalformedReply) -> SharedUnavailable:
    """Treat ``script``'s malformed reply as Redis failing: the process switches to local
    limits (with the event and the log line, as after any failure); the error to handle
    as :meth:`SharedClient.call`'s."""
    client._fail(client._scrub(f"Redis answered {script}.lua with a malformed reply: {problem}"))
    return SharedUnavailable(client.reason)
