"""What a provider's rate-limit headers say, as one frozen snapshot.

Each provider actor keeps token buckets (requests per minute, tokens per minute) that
start from the configured numbers and then learn from every response: the provider
knows its real limits, what is left, and when the window resets.  This module turns the
headers an adapter surfaced (:func:`providers._http.surface_headers`: lower-case names)
into a :class:`RateLimitInfo`; the bucket math that uses it lives with the buckets.

Two header families are understood:

=====================================  ==========================================
OpenAI (and Groq, OpenRouter, ...)     Anthropic
=====================================  ==========================================
``x-ratelimit-limit-requests``         ``anthropic-ratelimit-requests-limit``
``x-ratelimit-remaining-requests``     ``anthropic-ratelimit-requests-remaining``
``x-ratelimit-reset-requests``         ``anthropic-ratelimit-requests-reset``
``x-ratelimit-{limit,remaining,...     ``anthropic-ratelimit-tokens-*``,
-reset}-tokens``                       ``-input-tokens-*``, ``-output-tokens-*``
reset: a Go duration (``6m0s``)        reset: an RFC 3339 time (``...T06:00:30Z``)
=====================================  ==========================================

Both resets become *seconds from now*.  An absolute time can only become a delay with
the wall clock, so the caller passes ``wall_now`` (Unix seconds); nothing here reads a
clock.  ``retry-after`` is not read here: the adapters already put it on the error as
``retry_after`` (:func:`providers._http.parse_retry_after`).

Everything is pure, cheap (a few dict lookups per response) and never raises: a garbage
value is ignored, field by field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date

import msgspec

__all__ = ["RateLimitInfo", "parse_duration", "parse_rate_limit_headers"]

# Longer header values are garbage, not durations or timestamps; the cap keeps the
# regexes cheap on hostile input.
_MAX_LEN = 100

# Go's time.Duration.String() and time.ParseDuration units, in seconds.  "ms" must be
# tried before "m" (minutes); "µs" comes as U+00B5 (micro sign) or U+03BC (Greek mu).
_UNITS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ns": 1e-9,
}
_NUMBER = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
_UNIT = r"(?:h|ms|m|s|us|\u00b5s|\u03bcs|ns)"
_DURATION_RE = re.compile(rf"(?:{_NUMBER}{_UNIT})+")
_COMPONENT_RE = re.compile(rf"({_NUMBER})({_UNIT})")
_BARE_NUMBER_RE = re.compile(_NUMBER)

_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,12}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))?"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration string, or ``None`` if it is not one.

    OpenAI sends its reset times in Go's ``time.Duration`` format: one or more
    ``<number><unit>`` parts with units ``h``, ``m``, ``s``, ``ms``, ``us`` (or ``µs``)
    and ``ns``; numbers may have a fraction.  The value is the sum of the parts::

        "1h2m3.5s"  ->  1·3600 + 2·60 + 3.5  =  3723.5

    A bare number (``"0"``, ``"1.5"``) means seconds.  Surrounding whitespace and unit
    case are forgiven.  Negative, infinite or malformed durations give ``None``: a reset
    time in the past is not a duration anyone should wait.  Never raises.

    Args:
        text: the header value.

    Returns:
        The duration in seconds (``>= 0``), or ``None``.

    Example::

        >>> parse_duration("6m0s")
        360.0
        >>> parse_duration("12ms")
        0.012
        >>> parse_duration("soon") is None
        True
    """
    if not isinstance(text, str) or len(text) > _MAX_LEN:
        return None
    text = text.strip().lower()
    if _BARE_NUMBER_RE.fullmatch(text):
        total = float(text)
    elif _DURATION_RE.fullmatch(text):
        total = 0.0
        for number, unit in _COMPONENT_RE.findall(text):
            total += float(number) * _UNITS[unit]
    else:
        return None
    return total if math.isfinite(total) else None


def _parse_count(text: str) -> int | float | None:
    """A limit or remaining count: a non-negative int (or decimal), else ``None``."""
    if len(text) > _MAX_LEN:
        return None
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    if _BARE_NUMBER_RE.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else None
    return None


def _parse_rfc3339(text: str) -> float | None:
    """Unix seconds of an RFC 3339 timestamp, or ``None``.

    Liberal in what it takes: ``t`` or a space for ``T``, ``z`` for ``Z``, any number of
    fraction digits (up to 12), ``+hhmm`` without the colon, and no offset at all
    (taken as UTC).  Computed arithmetically, so a leap second (``:60``) is fine.
    """
    if len(text) > _MAX_LEN:
        return None
    m = _RFC3339_RE.fullmatch(text.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:  # month 13, February 30, year 0
        return None
    seconds = float(days * 86400 + hour * 3600 + minute * 60 + second)
    if m.group(7):
        seconds += float("0." + m.group(7))
    if m.group(9):
        off_hours, off_minutes = int(m.group(10)), int(m.group(11))
        if off_hours > 23 or off_minutes > 59:
            return None
        offset = off_hours * 3600 + off_minutes * 60
        # 06:00:30+02:00 is 04:00:30Z: subtract a positive offset.
        seconds += -offset if m.group(9) == "+" else offset
    return seconds


class RateLimitInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The rate-limit state a provider reported with one response.

    Every field is ``None`` when the provider did not send it (or sent garbage).
    ``limit_*`` is the window's capacity, ``remaining_*`` what is left of it and
    ``reset_*`` the seconds from *now* (when the response arrived) until it is full
    again.  OpenAI reports requests and tokens; Anthropic also reports input and output
    tokens separately, and its ``*tokens*`` family is the most restrictive limit in
    effect.

    Anthropic rounds its token ``remaining`` values to the nearest thousand, so a bucket
    that learns from them should treat them as approximate (never as an exact count).

    Example::

        >>> info = parse_rate_limit_headers(
        ...     {"anthropic-ratelimit-input-tokens-remaining": "39000",
        ...      "anthropic-ratelimit-input-tokens-reset": "2026-11-22T06:00:30Z"},
        ...     wall_now=1795327200.0,  # 2026-11-22T06:00:00Z
        ... )
        >>> info.remaining_input_tokens, info.reset_input_tokens, info.remaining_tokens
        (39000, 30.0, None)
    """

    limit_requests: int | float | None = None
    remaining_requests: int | float | None = None
    reset_requests: int | float | None = None
    limit_tokens: int | float | None = None
    remaining_tokens: int | float | None = None
    reset_tokens: int | float | None = None
    limit_input_tokens: int | float | None = None
    remaining_input_tokens: int | float | None = None
    reset_input_tokens: int | float | None = None
    limit_output_tokens: int | float | None = None
    remaining_output_tokens: int | float | None = None
    reset_output_tokens: int | float | None = None


# (header, field, kind) where kind is "count", "duration" (OpenAI) or "time" (Anthropic).
# The OpenAI family comes first: when a gateway sends both, its values win.
_HEADERS: tuple[tuple[str, str, str], ...] = (
    ("x-ratelimit-limit-requests", "limit_requests", "count"),
    ("x-ratelimit-remaining-requests", "remaining_requests", "count"),
    ("x-ratelimit-reset-requests", "reset_requests", "duration"),
    ("x-ratelimit-limit-tokens", "limit_tokens", "count"),
    ("x-ratelimit-remaining-tokens", "remaining_tokens", "count"),
    ("x-ratelimit-reset-tokens", "reset_tokens", "duration"),
    *(
        (f"anthropic-ratelimit-{family}-{part}", f"{part}_{family.replace('-', '_')}", kind)
        for family in ("requests", "tokens", "input-tokens", "output-tokens")
        for part, kind in (("limit", "count"), ("remaining", "count"), ("reset", "time"))
    ),
)


#: Every name in _HEADERS starts with one of these.
RATE_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
assert all(name.startswith(RATE_LIMIT_PREFIXES) for name, _, _ in _HEADERS)


def has_rate_limit_headers(headers: Mapping[str, str]) -> bool:
    """Whether any name could be one :func:`parse_rate_limit_headers` reads (cheap)."""
    for name in headers:  # noqa: SIM110 - a loop, not any(genexpr): runs on every answer
        if name.startswith(RATE_LIMIT_PREFIXES):
            return True
    return False


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, wall_now: float
) -> RateLimitInfo | None:
    """The rate-limit state in a response's headers, or ``None`` if there is none.

    ``headers`` must have lower-case names (as :func:`~providers._http.surface_headers`
    gives).  OpenAI's resets are durations (:func:`parse_duration`); Anthropic's are
    RFC 3339 times, turned into a delay against the wall clock::

        reset = max(0, timestamp - wall_now)

    Values that do not parse are skipped one by one; when no field parses at all the
    result is ``None``.  Never raises.

    Args:
        headers: lower-cased response headers.
        wall_now: the current wall-clock time in Unix seconds (``time.time()``), passed
            in so this stays pure.

    Returns:
        A :class:`RateLimitInfo`, or ``None``.

    Example::

        >>> info = parse_rate_limit_headers(
        ...     {"x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6ms"},
        ...     wall_now=0.0,
        ... )
        >>> info.remaining_tokens, info.reset_tokens
        (149984, 0.006)
    """
    if not headers:
        return None
    fields: dict[str, int | float] = {}
    for name, field, kind in _HEADERS:
        raw = headers.get(name)
        if raw is None or field in fields or not isinstance(raw, str):
            continue
        value: int | float | None
        if kind == "count":
            value = _parse_count(raw)
        elif kind == "duration":
            value = parse_duration(raw)
        else:
            at = _parse_rfc3339(raw)
            value = None if at is None else max(0.0, at - wall_now)
        if value is not None:
            fields[field] = value
    if not fields:
        return None
    return RateLimitInfo(**fields)
