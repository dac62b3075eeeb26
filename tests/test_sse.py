"""Stream framing: the WHATWG event-stream rules, NDJSON line splitting, and the encoders."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers._sse import (
    NDJSONDecoder,
    ServerSentEvent,
    SSEDecoder,
    encode_sse,
    encode_sse_comment,
)

Ev = ServerSentEvent


# --------------------------------------------------------------------------- helpers


def sse_chunks(chunks: Iterable[bytes], *, max_line_bytes: int | None = None) -> list[Ev]:
    dec = SSEDecoder() if max_line_bytes is None else SSEDecoder(max_line_bytes=max_line_bytes)
    out: list[Ev] = []
    for chunk in chunks:
        out += dec.feed(chunk)
    return out + dec.close()


def ndjson_chunks(chunks: Iterable[bytes], *, max_line_bytes: int | None = None) -> list[bytes]:
    dec = (
        NDJSONDecoder() if max_line_bytes is None else NDJSONDecoder(max_line_bytes=max_line_bytes)
    )
    out: list[bytes] = []
    for chunk in chunks:
        out += dec.feed(chunk)
    return out + dec.close()


def split_at(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(stream: bytes) -> list[bytes]:
    # One byte per chunk puts a boundary at every position, incl. each CR|LF and UTF-8 seam.
    return [stream[i : i + 1] for i in range(len(stream))]


def every_split(stream: bytes) -> Iterable[list[bytes]]:
    """The stream whole, one byte at a time, and cut at each single position."""
    yield [stream]
    yield bytewise(stream)
    for i in range(len(stream) + 1):
        yield [stream[:i], stream[i:]]


def sse_any_split(stream: bytes) -> list[Ev]:
    """Decode ``stream`` every way :func:`every_split` cuts it; all must agree."""
    whole = sse_chunks([stream])
    for chunks in every_split(stream):
        assert sse_chunks(chunks) == whole, chunks
    return whole


def ndjson_any_split(stream: bytes) -> list[bytes]:
    """Decode ``stream`` every way :func:`every_split` cuts it; all must agree."""
    whole = ndjson_chunks([stream])
    for chunks in every_split(stream):
        assert ndjson_chunks(chunks) == whole, chunks
    return whole


# --------------------------------------------------------------------------- SSE rules


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param(
            [b"data: \xf0\x9f", b"\x98\x80\n\n"], [Ev(data="\U0001f600")], id="emoji-split"
        ),
        pytest.param(
            [b"data: \xc3", b"\xa9\xe2\x82", b"\xac\n\n"], [Ev(data="é€")], id="2-and-3-byte-split"
        ),
        pytest.param([b"data: a\r", b"\ndata: b\r\n\r\n"], [Ev(data="a\nb")], id="cr|lf-mid-event"),
        pytest.param([b"event: x\r", b"\ndata: a\r\n\r\n"], [Ev("x", "a")], id="cr|lf-keeps-type"),
        pytest.param([b"data: a\r", b"", b"\n", b"\r\n"], [Ev(data="a")], id="cr|empty|lf"),
        pytest.param([b"data: a\r", b"\r", b"\n"], [Ev(data="a")], id="cr|cr|lf"),
        pytest.param(
            [b"data: a\n\r", b"\ndata: b\n\n"], [Ev(data="a"), Ev(data="b")], id="blank-cr|lf"
        ),
        pytest.param([b"da", b"ta", b": ", b"a", b"\n", b"\n"], [Ev(data="a")], id="field-split"),
    ],
)
def test_chunk_boundaries_anywhere(chunks: list[bytes], expected: list[Ev]) -> None:
    """Chunk boundaries inside UTF-8 characters, fields, or a CRLF do not change the events."""
    assert sse_chunks(chunks) == expected
    assert sse_any_split(b"".join(chunks)) == expected


def test_cr_then_lf_across_chunks_is_one_line_end() -> None:
    """A CR ending one chunk and an LF starting the next are one line end, not a blank line."""
    dec = SSEDecoder()
    assert dec.feed(b"event: delta\r") == []
    # Were the LF a second line end, this would dispatch nothing but reset the type.
    assert dec.feed(b"\ndata: a\r") == []
    assert dec.feed(b"\n\r") == [Ev("delta", "a")]
    assert dec.feed(b"\n") == []  # the second half of that final CRLF, not another blank
    assert dec.close() == []


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data: a\ndata: b\n\n", [Ev(data="a\nb")], id="lf"),
        pytest.param(b"data: a\rdata: b\r\r", [Ev(data="a\nb")], id="cr"),
        pytest.param(b"data: a\r\ndata: b\r\n\r\n", [Ev(data="a\nb")], id="crlf"),
        pytest.param(b"data: a\rdata: b\r\n\n", [Ev(data="a\nb")], id="mixed"),
        pytest.param(b"data: a\n\rdata: b\r\n\r", [Ev(data="a"), Ev(data="b")], id="mixed-blank"),
        pytest.param(
            b"data: a\n\r\ndata: b\r\r\n", [Ev(data="a"), Ev(data="b")], id="cr-then-crlf"
        ),
    ],
)
def test_line_ends_are_cr_lf_crlf(stream: bytes, expected: list[Ev]) -> None:
    """CR, LF and CRLF each end a line, in any mix."""
    assert sse_any_split(stream) == expected


@pytest.mark.parametrize(
    "sep", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
)
def test_unicode_separators_do_not_split_data(sep: str) -> None:
    """U+2028/U+2029/NEL/VT/FF/FS/GS/RS inside a data value stay in the value."""
    payload = f'{{"t":"a{sep}b"}}'
    assert sse_any_split(f"data: {payload}\n\n".encode()) == [Ev(data=payload)]


@pytest.mark.parametrize(
    ("stream", "data"),
    [
        pytest.param(b"data: \xff\xfe\n\n", "\ufffd\ufffd", id="invalid-bytes"),
        pytest.param(b"data: a\xe2\x82\n\n", "a\ufffd", id="truncated-sequence"),
        pytest.param(b"data: a\xe2\x82\ndata: b\n\n", "a\ufffd\nb", id="truncated-then-line"),
        pytest.param(b"data: \x85\n\n", "\ufffd", id="raw-nel-byte"),
    ],
)
def test_invalid_utf8_is_replaced_not_fatal(stream: bytes, data: str) -> None:
    """Invalid UTF-8 decodes to U+FFFD instead of failing the stream."""
    assert sse_any_split(stream) == [Ev(data=data)]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"\xef\xbb\xbfdata: x\n\n", [Ev(data="x")], id="leading-bom-stripped"),
        pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", [], id="only-one-bom-stripped"),
        pytest.param(
            b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [Ev(data="a")], id="later-bom-not-stripped"
        ),
        pytest.param(b"data: \xef\xbb\xbfx\n\n", [Ev(data="\ufeffx")], id="bom-in-data-is-data"),
        pytest.param(b"\xef\xbb\xbf", [], id="bom-only"),
        pytest.param(b"\xef\xbbdata: x\n\n", [], id="bom-prefix-is-not-a-bom"),
        pytest.param(b"\xef\xbb\ndata: x\n\n", [Ev(data="x")], id="bom-prefix-then-line-end"),
    ],
)
def test_leading_bom(stream: bytes, expected: list[Ev]) -> None:
    """Exactly one BOM at the very start is stripped, even split across chunks; others are data."""
    assert sse_any_split(stream) == expected


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b": OPENROUTER PROCESSING\n\ndata: x\n\n", [Ev(data="x")], id="keepalive"),
        pytest.param(b"data: a\n: note\ndata: b\n\n", [Ev(data="a\nb")], id="mid-event"),
        pytest.param(b":\n\n", [], id="bare-colon"),
        pytest.param(b":data: x\n\n", [], id="comment-looks-like-field"),
        pytest.param(b": x\r\n: y\r\n\r\n", [], id="comments-only"),
    ],
)
def test_comments_are_ignored(stream: bytes, expected: list[Ev]) -> None:
    """Lines starting with ':' are ignored and never dispatch on their own."""
    assert sse_any_split(stream) == expected


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data: a\n\ndata: b\n\n", [Ev(data="a"), Ev(data="b")], id="two-events"),
        pytest.param(b"\n\n\r\n\r", [], id="blank-lines-only"),
        pytest.param(b"event: foo\n\ndata: x\n\n", [Ev(data="x")], id="empty-dispatch-resets-type"),
        pytest.param(b"retry: 5\n\ndata: x\n\n", [Ev(data="x")], id="empty-dispatch-resets-retry"),
        pytest.param(b"id: 9\n\ndata: x\n\n", [Ev(data="x", id="9")], id="empty-dispatch-keeps-id"),
    ],
)
def test_blank_line_dispatches(stream: bytes, expected: list[Ev]) -> None:
    """A blank line dispatches; with no data it dispatches nothing but still resets the type."""
    assert sse_any_split(stream) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(b"data: a:b", [Ev(data="a:b")], id="split-at-first-colon"),
        pytest.param(b"data:a", [Ev(data="a")], id="no-space"),
        pytest.param(b"data:  a", [Ev(data=" a")], id="only-one-space-removed"),
        pytest.param(b"data:\ta", [Ev(data="\ta")], id="tab-kept"),
        pytest.param(b"data", [Ev(data="")], id="bare-name-appends-empty"),
        pytest.param(b"data:", [Ev(data="")], id="empty-value"),
        pytest.param(b"data: ", [Ev(data="")], id="space-only-value"),
        pytest.param(b"data\ndata", [Ev(data="\n")], id="two-bare-data-lines"),
        pytest.param(b"Data: x", [], id="names-case-sensitive"),
        pytest.param(b"data : x", [], id="space-before-colon-is-other-field"),
        pytest.param(b"event\ndata: x", [Ev(data="x")], id="bare-event-is-message"),
    ],
)
def test_field_value_split(line: bytes, expected: list[Ev]) -> None:
    """Split at the first ':', drop exactly one leading space; a line without ':' is a name."""
    assert sse_any_split(line + b"\n\n") == expected


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data: a\ndata: b\ndata: c\n\n", [Ev(data="a\nb\nc")], id="data-joined"),
        pytest.param(b"data: a\ndata:\n\n", [Ev(data="a\n")], id="only-final-lf-removed"),
        pytest.param(
            b"event: e\ndata: 1\n\ndata: 2\n\n",
            [Ev("e", "1"), Ev("message", "2")],
            id="event-type-per-event",
        ),
        pytest.param(b"event: a\nevent: b\ndata: x\n\n", [Ev("b", "x")], id="last-event-wins"),
        pytest.param(b"event:\ndata: x\n\n", [Ev("message", "x")], id="empty-event-is-message"),
        pytest.param(
            b"id: 7\ndata: 1\n\ndata: 2\n\n",
            [Ev(data="1", id="7"), Ev(data="2", id="7")],
            id="id-persists",
        ),
        pytest.param(
            b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
            [Ev(data="a", id="1"), Ev(data="b", id="1")],
            id="id-with-nul-ignored",
        ),
        pytest.param(
            b"id: 1\ndata: a\n\nid\ndata: b\n\n",
            [Ev(data="a", id="1"), Ev(data="b", id="")],
            id="empty-id-resets",
        ),
        pytest.param(b"retry: 1500\ndata: x\n\n", [Ev(data="x", retry=1500)], id="retry"),
        pytest.param(b"retry: 007\ndata: x\n\n", [Ev(data="x", retry=7)], id="retry-leading-zeros"),
        pytest.param(
            b"retry: 10\ndata: a\n\ndata: b\n\n",
            [Ev(data="a", retry=10), Ev(data="b")],
            id="retry-per-event",
        ),
        pytest.param(
            b"retry: 10\nretry: x\ndata: a\n\n", [Ev(data="a", retry=10)], id="bad-retry-keeps-good"
        ),
        pytest.param(b"foo: bar\ndata: x\nid2: 3\n\n", [Ev(data="x")], id="unknown-fields-ignored"),
    ],
)
def test_data_event_id_retry_semantics(stream: bytes, expected: list[Ev]) -> None:
    """Data joins with LF; type is per event; id persists unless NUL; retry needs digits."""
    assert sse_any_split(stream) == expected


@pytest.mark.parametrize(
    "value",
    ["10a", "-1", "+1", "1.5", "1e3", "", " 1", "0x10", "\u0661\u0662", "\uff11"],
)
def test_retry_requires_ascii_digits(value: str) -> None:
    """A retry value that is not all ASCII digits (incl. non-ASCII digits) is ignored."""
    stream = f"retry: {value}\ndata: x\n\n".encode()
    assert sse_any_split(stream) == [Ev(data="x")]


def test_last_event_id_property_tracks_id() -> None:
    """The decoder exposes the last-event-ID in force, even when no event carried it."""
    dec = SSEDecoder()
    assert dec.last_event_id is None
    assert dec.feed(b"id: 42\n\n") == []
    assert dec.last_event_id == "42"


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data: x\n", [], id="no-blank-line"),
        pytest.param(b"data: x", [], id="no-line-end"),
        pytest.param(b"data: x\r", [], id="cr-is-not-blank-line"),
        pytest.param(b"data: a\n\ndata: b\n", [Ev(data="a")], id="earlier-events-kept"),
        pytest.param(b"data: x\n\r", [Ev(data="x")], id="lone-cr-blank-line-dispatches"),
    ],
)
def test_unterminated_final_event_discarded(stream: bytes, expected: list[Ev]) -> None:
    """An event without its terminating blank line is discarded at close()."""
    dec = SSEDecoder()
    assert dec.feed(stream) == expected
    assert dec.close() == []
    assert sse_any_split(stream) == expected


def test_sse_close_is_idempotent_and_final() -> None:
    """close() may be called twice; feeding after close() is a RuntimeError."""
    dec = SSEDecoder()
    dec.feed(b"data: x")
    assert dec.close() == []
    assert dec.close() == []
    with pytest.raises(RuntimeError, match="after close"):
        dec.feed(b"\n\n")


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b"data: 0123456789\n\n"], id="complete-line"),
        pytest.param([b"data: 0123", b"456789"], id="partial-line-grows"),
        pytest.param([b"data: 0", *[b"1"] * 9, b"\n"], id="partial-byte-by-byte"),
        pytest.param([b"data: a\n\ndata: 0123456789"], id="remainder-after-line-end"),
        pytest.param([b": comment longer than ten\n"], id="comment-line"),
        pytest.param([b"data: 12345\ndata: 12345\n"], id="event-data-accumulates"),
    ],
)
def test_sse_max_line_bytes(chunks: list[bytes]) -> None:
    """A line (or one event's data) longer than max_line_bytes raises ValueError."""
    with pytest.raises(ValueError, match="max_line_bytes=10"):
        sse_chunks(chunks, max_line_bytes=10)


def test_sse_max_line_bytes_is_inclusive_and_split_independent() -> None:
    """A line of exactly max_line_bytes is accepted however it is chunked."""
    stream = b"data: 1234\r\n\r\n"  # the line is 10 bytes without its line end
    for chunks in every_split(stream):
        assert sse_chunks(chunks, max_line_bytes=10) == [Ev(data="1234")]


def test_sse_default_limit_accepts_large_lines() -> None:
    """The default limit (16 MiB) comfortably accepts a 1 MiB line fed in small chunks."""
    payload = b"x" * (1 << 20)
    stream = b"data: " + payload + b"\n\n"
    events = sse_chunks(stream[i : i + 4096] for i in range(0, len(stream), 4096))
    assert events == [Ev(data=payload.decode())]


@pytest.mark.parametrize("cls", [SSEDecoder, NDJSONDecoder])
def test_max_line_bytes_must_be_positive(cls: type[SSEDecoder] | type[NDJSONDecoder]) -> None:
    """A non-positive max_line_bytes is rejected at construction."""
    with pytest.raises(ValueError, match="positive"):
        cls(max_line_bytes=0)


# --------------------------------------------------------------------------- NDJSON


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b'{"a":1}\n{"b":2}\n', [b'{"a":1}', b'{"b":2}'], id="lf"),
        pytest.param(b'{"a":1}\r\n{"b":2}\r\n', [b'{"a":1}', b'{"b":2}'], id="crlf-stripped"),
        pytest.param(b'{"a":1}\r{"b":2}\n', [b'{"a":1}\r{"b":2}'], id="lone-cr-no-split"),
        pytest.param(b'{"a":1}\r\r\n', [b'{"a":1}\r'], id="only-one-cr-stripped"),
        pytest.param(
            '{"t":"a\u2028b\u2029c\x85d\x0be\x0cf"}\n'.encode(),
            ['{"t":"a\u2028b\u2029c\x85d\x0be\x0cf"}'.encode()],
            id="unicode-separators-no-split",
        ),
        pytest.param(b"\n\n\r\n  \n\t\r\n{}\n", [b"{}"], id="blank-lines-skipped"),
        pytest.param(b'{"a":1}\n{"b"', [b'{"a":1}', b'{"b"'], id="remainder-at-close"),
        pytest.param(b"{}\n  ", [b"{}"], id="blank-remainder-dropped"),
        pytest.param(b"{}\r", [b"{}"], id="remainder-cr-stripped"),
        pytest.param(b"\r", [], id="cr-only-remainder"),
        pytest.param(b"", [], id="empty"),
    ],
)
def test_ndjson_splits_on_lf_only(stream: bytes, expected: list[bytes]) -> None:
    """NDJSON splits on b'\\n' only, strips one trailing CR, skips blank lines, keeps the tail."""
    assert ndjson_any_split(stream) == expected


def test_ndjson_close_returns_remainder_once() -> None:
    """close() returns the unterminated remainder once; feeding afterwards raises RuntimeError."""
    dec = NDJSONDecoder()
    assert dec.feed(b'{"done":false}\n{"done":') == [b'{"done":false}']
    assert dec.feed(b"true}") == []
    assert dec.close() == [b'{"done":true}']
    assert dec.close() == []
    with pytest.raises(RuntimeError, match="after close"):
        dec.feed(b"\n")


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b"0123456789a\n"], id="complete-line"),
        pytest.param([b"{}\n0123456789a"], id="remainder"),
        pytest.param([b"012345", b"6789a"], id="partial-line-grows"),
    ],
)
def test_ndjson_max_line_bytes(chunks: list[bytes]) -> None:
    """An NDJSON line longer than max_line_bytes raises ValueError."""
    with pytest.raises(ValueError, match="max_line_bytes=10"):
        ndjson_chunks(chunks, max_line_bytes=10)


def test_ndjson_max_line_bytes_is_inclusive() -> None:
    """An NDJSON line of exactly max_line_bytes is accepted however it is chunked."""
    for chunks in every_split(b"0123456789\n"):
        assert ndjson_chunks(chunks, max_line_bytes=10) == [b"0123456789"]


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    ("kwargs", "encoded"),
    [
        pytest.param({"data": "x"}, b"data: x\n\n", id="simple"),
        pytest.param({"data": ""}, b"data: \n\n", id="empty"),
        pytest.param({"data": "a\nb"}, b"data: a\ndata: b\n\n", id="multi-line"),
        pytest.param({"data": "a\r\nb\rc\n"}, b"data: a\ndata: b\ndata: c\ndata: \n\n", id="crlf"),
        pytest.param({"data": " x"}, b"data:  x\n\n", id="leading-space"),
        pytest.param({"data": "a\u2028b"}, "data: a\u2028b\n\n".encode(), id="u2028-one-line"),
        pytest.param(
            {"data": "{}", "event": "delta", "id": "7"},
            b"event: delta\nid: 7\ndata: {}\n\n",
            id="event-and-id",
        ),
    ],
)
def test_encode_sse(kwargs: dict[str, str], encoded: bytes) -> None:
    """encode_sse writes one data: line per line of data and ends with a blank line."""
    assert encode_sse(**kwargs) == encoded


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "a\nb"},
        {"event": "a\rb"},
        {"id": "1\n"},
        {"id": "\r1"},
        {"id": "1\x002"},
    ],
)
def test_encode_sse_rejects_unencodable_fields(kwargs: dict[str, str]) -> None:
    """An event or id containing a line end (or an id containing NUL) raises ValueError."""
    with pytest.raises(ValueError, match="must not contain"):
        encode_sse("x", **kwargs)


def test_encode_sse_comment() -> None:
    """encode_sse_comment writes ': text' lines that the decoder ignores."""
    assert encode_sse_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_sse_comment("a\r\nb") == b": a\n: b\n\n"
    stream = encode_sse_comment("a\nb") + encode_sse("x") + encode_sse_comment("")
    assert sse_any_split(stream) == [Ev(data="x")]


# --------------------------------------------------------------------------- properties

PROPS = settings(max_examples=100, deadline=None)

# Characters that matter to framing, mixed into otherwise arbitrary text.
_TRICKY = "\r\n\u2028\u2029\x85\x0b\x0c\x00\ufeff: \U0001f600\u00e9"


def _chars(exclude: str = "") -> st.SearchStrategy[str]:
    tricky = [c for c in _TRICKY if c not in exclude]
    arbitrary = st.characters(codec="utf-8", exclude_characters=exclude)
    return st.one_of(st.sampled_from(tricky), arbitrary)


TEXT = st.text(_chars(), max_size=20)
ONE_LINE = st.text(_chars("\r\n"), max_size=12)
EVENT_ID = st.text(_chars("\r\n\x00"), max_size=6)


def _normalise_line_ends(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@PROPS
@given(
    events=st.lists(
        st.tuples(TEXT, st.none() | ONE_LINE, st.none() | EVENT_ID), min_size=1, max_size=5
    ),
    data=st.data(),
)
def test_prop_encoded_events_survive_any_split(
    events: list[tuple[str, str | None, str | None]], data: st.DataObject
) -> None:
    """Invariant: encode_sse output decodes the same under any chunking and round-trips."""
    stream = b"".join(encode_sse(d, event=e, id=i) for d, e, i in events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")

    expected: list[Ev] = []
    last_id: str | None = None
    for d, e, i in events:
        last_id = i if i is not None else last_id
        expected.append(Ev(event=e or "message", data=_normalise_line_ends(d), id=last_id))

    assert sse_chunks([stream]) == expected
    assert sse_chunks(split_at(stream, cuts)) == expected
    assert sse_chunks(bytewise(stream)) == expected


@st.composite
def _line_ended_stream(draw: st.DrawFn) -> tuple[bytes, list[Ev]]:
    """Events whose every line picks its own line end (LF, CR or CRLF); maybe BOM-first."""
    lines: list[str] = []
    expected: list[Ev] = []
    for _ in range(draw(st.integers(1, 4))):
        event = draw(st.none() | ONE_LINE)
        data_lines = draw(st.lists(ONE_LINE, min_size=1, max_size=3))
        if draw(st.booleans()):
            lines.append(": " + draw(ONE_LINE))
        if event is not None:
            lines.append("event: " + event)
        lines += ["data: " + d for d in data_lines]
        lines.append("")
        expected.append(Ev(event=event or "message", data="\n".join(data_lines)))
    ends = draw(st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=len(lines)))
    for k in range(1, len(lines)):
        # CR then an empty line ended by LF *is* a CRLF: the format cannot express that
        # pair, so give the blank line a CRLF instead (CR + CRLF = two line ends).
        if ends[k - 1] == "\r" and lines[k] == "" and ends[k] == "\n":
            ends[k] = "\r\n"
    stream = "".join(line + end for line, end in zip(lines, ends, strict=False)).encode()
    if draw(st.booleans()):
        stream = b"\xef\xbb\xbf" + stream  # a leading BOM must vanish without a trace
    return stream, expected


@PROPS
@given(case=_line_ended_stream(), data=st.data())
def test_prop_any_line_end_style_survives_any_split(
    case: tuple[bytes, list[Ev]], data: st.DataObject
) -> None:
    """Invariant: with LF/CR/CRLF chosen per line, any chunking yields the written events."""
    stream, expected = case
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    assert sse_chunks([stream]) == expected
    assert sse_chunks(split_at(stream, cuts)) == expected
    assert sse_chunks(bytewise(stream)) == expected


_JSON_TEXT = st.text(_chars(), max_size=8)
_JSON_DOC = st.dictionaries(
    _JSON_TEXT, st.one_of(_JSON_TEXT, st.integers(), st.booleans(), st.none()), max_size=3
)


@PROPS
@given(
    docs=st.lists(
        st.tuples(_JSON_DOC, st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r\n  \n"])),
        max_size=6,
    ),
    unterminated=st.booleans(),
    data=st.data(),
)
def test_prop_ndjson_any_split_same_lines(
    docs: Sequence[tuple[dict[str, object], bytes]], unterminated: bool, data: st.DataObject
) -> None:
    """Invariant: any chunking of JSON lines yields exactly those lines; U+2028 never splits one."""
    lines = [msgspec.json.encode(doc) for doc, _ in docs]
    ends = [end for _, end in docs]
    if unterminated and ends:
        ends[-1] = b""  # the final document arrives without a line end
    stream = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")

    for chunks in ([stream], split_at(stream, cuts), bytewise(stream)):
        got = ndjson_chunks(chunks)
        assert got == lines
        assert [msgspec.json.decode(line) for line in got] == [doc for doc, _ in docs]
        u2028 = "\u2028".encode()
        assert sum(u2028 in line for line in got) == sum(u2028 in line for line in lines)
