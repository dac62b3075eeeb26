"""Rate-limit headers: Go durations, RFC 3339 resets, and the RateLimitInfo snapshot."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers._http import surface_headers
from router._ratelimits import RateLimitInfo, parse_duration, parse_rate_limit_headers

# 2026-11-22T06:00:00Z
WALL = datetime(2026, 11, 22, 6, 0, 0, tzinfo=UTC).timestamp()

# --------------------------------------------------------------------------- helpers


def _go_fraction(value: int, unit: int) -> str:
    """``value / unit`` in Go's style: the shortest exact decimal, no trailing zeros."""
    whole, frac = divmod(value, unit)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def format_go_duration(nanoseconds: int) -> str:
    """Format a non-negative duration exactly as Go's ``time.Duration.String()`` does."""
    ns = nanoseconds
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{_go_fraction(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{_go_fraction(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{_go_fraction(rest, 10**9)}s"


KNOWN_HEADERS = [
    *(
        f"x-ratelimit-{part}-{family}"
        for part in ("limit", "remaining", "reset")
        for family in ("requests", "tokens")
    ),
    *(
        f"anthropic-ratelimit-{family}-{part}"
        for family in ("requests", "tokens", "input-tokens", "output-tokens")
        for part in ("limit", "remaining", "reset")
    ),
]
FIELDS = list(RateLimitInfo.__struct_fields__)


# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),  # U+00B5 MICRO SIGN, what Go prints
        ("500μs", 0.0005),  # U+03BC GREEK SMALL LETTER MU
        ("250ns", 2.5e-7),
        ("1.5h", 5400.0),
        ("2m59.56s", 179.56),  # Groq
        ("7.66s", 7.66),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("20", 20.0),
        (" 6m0s\t", 360.0),
        ("6M0S", 360.0),
        ("1m1m", 120.0),
    ],
)
def test_parse_duration_values(text: str, seconds: float) -> None:
    """Every Go duration unit, fractions, bare numbers and whitespace parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "s",
        "ms",
        "1x",
        "1 s",
        "1s2",
        "-1s",
        "+1s",
        "1e3s",
        "1e3",
        "1..5s",
        ".s",
        ".",
        "inf",
        "nan",
        "infs",
        "1d",
        "\uff11s",  # a full-width digit
        "٣s",  # an Arabic-Indic digit
        "9" * 400 + "s",  # too long to be a header value we trust
    ],
)
def test_parse_duration_garbage(text: str) -> None:
    """Malformed, negative, non-ASCII-digit and infinite durations give None."""
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (12_000_000, "12ms"),
        (1_500, "1.5µs"),
        (360 * 10**9, "6m0s"),
        (3_723_500_000_000, "1h2m3.5s"),
        (3_600 * 10**9, "1h0m0s"),
    ],
)
def test_format_go_duration_matches_go(nanoseconds: int, text: str) -> None:
    """The test formatter prints what Go's Duration.String() prints."""
    assert format_go_duration(nanoseconds) == text


@given(st.integers(min_value=0, max_value=10**15))
def test_parse_duration_inverts_go_format(nanoseconds: int) -> None:
    """Invariant: parse_duration(format_go_duration(d)) == d (to float precision)."""
    parsed = parse_duration(format_go_duration(nanoseconds))
    assert parsed == pytest.approx(nanoseconds / 1e9, rel=1e-12, abs=1e-15)


@given(
    st.text()
    | st.text(alphabet="0123456789.hmsunµμ +-e", max_size=40)
    | st.from_regex(r"([0-9]*\.?[0-9]*(h|m|s|ms|us|ns)?){1,5}", fullmatch=True)
)
def test_parse_duration_never_raises(text: str) -> None:
    """Invariant: any string gives None or a finite duration >= 0, never an exception."""
    result = parse_duration(text)
    assert result is None or (math.isfinite(result) and result >= 0)


# --------------------------------------------------------------------------- headers


def test_openai_headers() -> None:
    """The six OpenAI headers (values from OpenAI's docs) fill the six common fields."""
    info = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6m0s",
            "x-request-id": "req_123",
        },
        wall_now=WALL,
    )
    assert info == RateLimitInfo(
        limit_requests=60,
        remaining_requests=59,
        reset_requests=1.0,
        limit_tokens=150000,
        remaining_tokens=149984,
        reset_tokens=360.0,
    )
    assert isinstance(info.limit_requests, int)


def test_anthropic_headers() -> None:
    """All twelve Anthropic headers parse; resets become seconds after wall_now."""
    headers = {}
    for offset, family in enumerate(("requests", "tokens", "input-tokens", "output-tokens")):
        headers[f"anthropic-ratelimit-{family}-limit"] = str(1000 * (offset + 1))
        headers[f"anthropic-ratelimit-{family}-remaining"] = str(100 * (offset + 1))
        headers[f"anthropic-ratelimit-{family}-reset"] = f"2026-11-22T06:00:{10 * offset:02d}Z"
    info = parse_rate_limit_headers(headers, wall_now=WALL)
    assert info == RateLimitInfo(
        limit_requests=1000,
        remaining_requests=100,
        reset_requests=0.0,
        limit_tokens=2000,
        remaining_tokens=200,
        reset_tokens=10.0,
        limit_input_tokens=3000,
        remaining_input_tokens=300,
        reset_input_tokens=20.0,
        limit_output_tokens=4000,
        remaining_output_tokens=400,
        reset_output_tokens=30.0,
    )


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ("2026-11-22T06:00:30Z", 30.0),
        ("2026-11-22T06:00:30.250Z", 30.25),
        ("2026-11-22T06:00:30.123456789Z", 30.123456789),
        ("2026-11-22T08:00:30+02:00", 30.0),
        ("2026-11-22T00:30:30-05:30", 30.0),
        ("2026-11-22T08:00:30+0200", 30.0),
        ("2026-11-22t06:00:30z", 30.0),
        ("2026-11-22 06:00:30Z", 30.0),
        ("2026-11-22T06:00:30", 30.0),  # no offset: taken as UTC
        ("2026-11-22T06:01:00Z", 60.0),
        ("2026-11-23T06:00:00Z", 86400.0),
        ("2026-11-22T05:59:00Z", 0.0),  # already past: clamped at 0
        ("2016-12-31T23:59:60Z", 0.0),  # a leap second, long past
    ],
)
def test_anthropic_reset_timestamps(stamp: str, seconds: float) -> None:
    """RFC 3339 resets with fractions, offsets and lower case become max(0, t - wall_now)."""
    info = parse_rate_limit_headers({"anthropic-ratelimit-tokens-reset": stamp}, wall_now=WALL)
    assert info is not None
    assert info.reset_tokens == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-22T24:00:00Z",
        "2026-11-22T06:60:00Z",
        "2026-11-22T06:00:61Z",
        "2026-11-22T06:00:00+24:00",
        "0000-01-01T00:00:00Z",
        "2026-11-22",
        "1795327230",
        "Sun, 22 Nov 2026 06:00:30 GMT",
        "30s",
    ],
)
def test_anthropic_reset_garbage_ignored(stamp: str) -> None:
    """An impossible or non-RFC 3339 reset is ignored; the other fields still parse."""
    info = parse_rate_limit_headers(
        {"anthropic-ratelimit-tokens-reset": stamp, "anthropic-ratelimit-tokens-limit": "80000"},
        wall_now=WALL,
    )
    assert info == RateLimitInfo(limit_tokens=80000)


def test_garbage_ignored_field_by_field() -> None:
    """Each unparseable value drops only its own field."""
    info = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-requests": "lots",
            "x-ratelimit-remaining-requests": "-1",
            "x-ratelimit-reset-requests": "soon",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "12.5",
            "x-ratelimit-reset-tokens": "NaN",
        },
        wall_now=WALL,
    )
    assert info == RateLimitInfo(limit_tokens=150000, remaining_tokens=12.5)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after": "20", "x-request-id": "req_1"},
        {"x-ratelimit-limit-requests": "", "anthropic-ratelimit-tokens-reset": "never"},
        {"X-RateLimit-Limit-Requests": "60"},  # names must already be lower-cased
    ],
)
def test_none_without_usable_headers(headers: dict[str, str]) -> None:
    """No rate-limit header, or none that parses, gives None rather than an empty snapshot."""
    assert parse_rate_limit_headers(headers, wall_now=WALL) is None


def test_openai_family_wins_when_both_are_sent() -> None:
    """A gateway sending both families gets the OpenAI value; the rest still fill in."""
    info = parse_rate_limit_headers(
        {
            "x-ratelimit-remaining-tokens": "5000",
            "anthropic-ratelimit-tokens-remaining": "4000",
            "anthropic-ratelimit-input-tokens-remaining": "3000",
        },
        wall_now=WALL,
    )
    assert info == RateLimitInfo(remaining_tokens=5000, remaining_input_tokens=3000)


def test_reads_what_surface_headers_gives() -> None:
    """Mixed-case httpx headers, surfaced by the adapters, parse end to end."""
    surfaced = surface_headers(
        httpx.Headers(
            {
                "X-RateLimit-Remaining-Requests": "7",
                "Anthropic-RateLimit-Requests-Reset": "2026-11-22T06:00:05Z",
                "Content-Type": "application/json",
            }
        )
    )
    info = parse_rate_limit_headers(surfaced, wall_now=WALL)
    assert info == RateLimitInfo(remaining_requests=7, reset_requests=5.0)


def test_info_is_frozen_and_encodable() -> None:
    """RateLimitInfo is an immutable snapshot that round-trips through msgspec JSON."""
    info = RateLimitInfo(remaining_tokens=1000, reset_tokens=1.5)
    with pytest.raises(AttributeError):
        info.remaining_tokens = 0  # type: ignore[misc]
    raw = msgspec.json.encode(info)
    assert msgspec.json.decode(raw, type=RateLimitInfo) == info


@given(
    when=st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(9998, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
        ),
    ),
    wall_now=st.floats(min_value=0, max_value=4e9),
)
def test_anthropic_reset_matches_datetime(when: datetime, wall_now: float) -> None:
    """Invariant: reset == max(0, when.timestamp() - wall_now) for any isoformat() time."""
    stamp = when.isoformat().replace("+00:00", "Z")
    info = parse_rate_limit_headers(
        {"anthropic-ratelimit-requests-reset": stamp}, wall_now=wall_now
    )
    assert info is not None
    assert info.reset_requests == pytest.approx(max(0.0, when.timestamp() - wall_now), abs=1e-4)


header_values = (
    st.text(max_size=40)
    | st.integers(min_value=-(10**30), max_value=10**30).map(str)
    | st.floats().map(str)
    | st.integers(min_value=0, max_value=10**13).map(format_go_duration)
    | st.datetimes().map(lambda d: d.isoformat() + "Z")
)


@given(
    headers=st.dictionaries(st.sampled_from(KNOWN_HEADERS) | st.text(max_size=30), header_values),
    wall_now=st.floats(min_value=-1e12, max_value=1e12),
)
def test_arbitrary_headers_never_raise(headers: dict[str, str], wall_now: float) -> None:
    """Invariant: any header dict gives None or a snapshot of finite values >= 0."""
    info = parse_rate_limit_headers(headers, wall_now=wall_now)
    if info is None:
        return
    for field in FIELDS:
        value = getattr(info, field)
        assert value is None or (math.isfinite(value) and value >= 0)
