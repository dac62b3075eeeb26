"""Stream framing: WHATWG server-sent events and newline-delimited JSON, over raw bytes.

Both decoders are pure and synchronous: an adapter feeds them whatever
``Response.aiter_bytes()`` yields and gets back complete frames.  We never use httpx's
``aiter_lines()``, because it splits like ``str.splitlines()`` and so cuts a JSON string
that contains an unescaped U+2028/U+2029 (models do emit them).

This module is on the hot path of every streamed token, so all scanning is done on
``bytes`` with C-level methods (``splitlines``, ``split``, ``find``, ``in``) and Python
code runs once per line, never once per character.  Splitting on bytes before decoding is
safe because UTF-8 multi-byte sequences never contain the bytes 0x0A or 0x0D.

The rules follow https://html.spec.whatwg.org/multipage/server-sent-events.html
("Parsing an event stream").
"""

from __future__ import annotations

import msgspec

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "FrameTooLarge",
    "NDJSONDecoder",
    "SSEDecoder",
    "ServerSentEvent",
    "encode_sse",
    "encode_sse_comment",
]

#: Default cap on one line (and on one event's data) before a decoder gives up.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


class ServerSentEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched server-sent event.

    Attributes:
        event: The event type; ``"message"`` when the event had no (or an empty)
            ``event`` field.
        data: The data lines of the event joined with ``"\\n"``.
        id: The last-event-ID in force when the event was dispatched.  It persists
            across events until the stream sets another one; ``None`` if the stream
            never set one, ``""`` if the stream explicitly reset it.
        retry: The reconnection time in milliseconds, if this event's block set a
            valid one.

    Example:
        >>> ServerSentEvent(data='{"x": 1}')
        ServerSentEvent(event='message', data='{"x": 1}', id=None, retry=None)
    """

    # gc=False: the fields are only str/int/None, so instances can never be part of a
    # reference cycle, and skipping GC tracking makes the per-token allocation cheaper.
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class FrameTooLarge(ValueError):
    """A line, or one event's data, is longer than the decoder's ``max_line_bytes``."""


def _line_too_long(limit: int) -> ValueError:
    return FrameTooLarge(f"stream line longer than max_line_bytes={limit}")


class SSEDecoder:
    """Incremental WHATWG event-stream decoder over raw bytes.

    Feed it chunks exactly as they arrive off the socket; chunk boundaries may fall
    anywhere, including inside a multi-byte UTF-8 character or between the CR and LF of
    a CRLF.  Lines end with CR, LF or CRLF and nothing else, so U+2028, U+0085, VT, FF
    and friends inside a value stay in that value.  Invalid UTF-8 is decoded with
    U+FFFD replacement characters rather than failing the stream.

    Args:
        max_line_bytes: Largest line, in bytes without its line end, that the decoder
            accepts.  The same cap applies to the data accumulated by one event.  A
            stream that exceeds it makes :meth:`feed` raise :class:`FrameTooLarge` (a
            :class:`ValueError`), after
            which the decoder must not be used again.

    Example:
        >>> dec = SSEDecoder()
        >>> dec.feed(b"event: ping\\ndata: {\\"a\\"")
        []
        >>> dec.feed(b": 1}\\n\\n")
        [ServerSentEvent(event='ping', data='{"a": 1}', id=None, retry=None)]
        >>> dec.close()
        []
    """

    __slots__ = (
        "_closed",
        "_data",
        "_data_len",
        "_event",
        "_head",
        "_last_id",
        "_max",
        "_partial",
        "_partial_len",
        "_pending_cr",
        "_retry",
    )

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._max = max_line_bytes
        # Bytes held back at the very start of the stream until we know whether they are
        # a BOM (it can arrive split across chunks); None once that is decided.
        self._head: bytes | None = b""
        # The unterminated last line, as a list of chunks so that a line arriving in many
        # small chunks is joined once, not re-copied on every chunk (quadratic).
        self._partial: list[bytes] = []
        self._partial_len = 0
        # The previous chunk ended in CR: an LF at the start of the next chunk is the
        # second half of a CRLF, not an empty line (which would dispatch).
        self._pending_cr = False
        self._data: list[bytes] = []
        self._data_len = 0
        self._event = b""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._closed = False

    @property
    def last_event_id(self) -> str | None:
        """The last-event-ID currently in force (``None`` if never set)."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume one chunk of the byte stream.

        Args:
            chunk: The next bytes of the stream, split anywhere.

        Returns:
            The events completed by this chunk, in order (often none).

        Raises:
            FrameTooLarge: A line, or one event's data, exceeded ``max_line_bytes``.
            RuntimeError: The decoder was already closed.
        """
        if self._closed:
            raise RuntimeError("SSEDecoder.feed() called after close()")
        if self._head is not None:
            # Strip one BOM at the very start of the stream, and only there.
            head = self._head + chunk
            if len(head) < 3 and _BOM.startswith(head):
                self._head = head
                return []
            self._head = None
            chunk = head[3:] if head.startswith(_BOM) else head
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []

        if b"\n" not in chunk and b"\r" not in chunk:
            # Middle of a line: just remember the piece.
            self._partial_len += len(chunk)
            if self._partial_len > self._max:
                raise _line_too_long(self._max)
            self._partial.append(chunk)
            return []

        if self._partial:
            self._partial.append(chunk)
            buf = b"".join(self._partial)
            self._partial = []
            self._partial_len = 0
        else:
            buf = chunk

        # bytes.splitlines (unlike str.splitlines) breaks on CR, LF and CRLF only, and
        # yields exactly one item per line end, so a trailing line end adds no empty item.
        lines = buf.splitlines()
        last = buf[-1]
        if last == 0x0D:
            self._pending_cr = True
        elif last != 0x0A:
            rest = lines.pop()
            if len(rest) > self._max:
                raise _line_too_long(self._max)
            self._partial.append(rest)
            self._partial_len = len(rest)
        if len(buf) > self._max:
            # Only possible to have an over-long complete line if the buffer itself is.
            for line in lines:
                if len(line) > self._max:
                    raise _line_too_long(self._max)

        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                self._dispatch(events)
                continue
            colon = line.find(b":")
            if colon == 0:
                continue  # comment (keep-alives such as ": OPENROUTER PROCESSING")
            if colon < 0:
                field = line
                value = b""
            else:
                field = line[:colon]
                # Exactly one leading space is syntax; any further spaces are data.
                start = colon + 2 if line[colon + 1 : colon + 2] == b" " else colon + 1
                value = line[start:]
            if field == b"data":
                self._data_len += len(value) + 1
                if self._data_len > self._max:
                    raise FrameTooLarge(
                        f"server-sent event data exceeds max_line_bytes={self._max} "
                        "without a dispatching blank line"
                    )
                self._data.append(value)
            elif field == b"event":
                self._event = value
            elif field == b"id" and b"\x00" not in value:
                # An id containing NUL is ignored, leaving the previous one in force.
                self._last_id = value.decode("utf-8", "replace")
            elif field == b"retry" and value.isdigit():
                # bytes.isdigit() is ASCII-only (str.isdigit() would accept e.g. "١٢").
                self._retry = int(value)
            # Any other field name is ignored, as the spec requires.
        return events

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        if self._data:
            # Joining with "\n" is the spec's "append value + LF, drop the final LF".
            # Splitting on bytes then decoding once is safe: a lone invalid sequence at a
            # line's end decodes to the same U+FFFD either way, as LF is never a
            # continuation byte.
            events.append(
                ServerSentEvent(
                    event=self._event.decode("utf-8", "replace") if self._event else "message",
                    data=b"\n".join(self._data).decode("utf-8", "replace"),
                    id=self._last_id,
                    retry=self._retry,
                )
            )
            self._data = []
            self._data_len = 0
        # Even with nothing to dispatch, the event type (and this block's retry) reset;
        # the last-event-ID deliberately persists.
        self._event = b""
        self._retry = None

    def close(self) -> list[ServerSentEvent]:
        """Signal end of stream.

        Per the spec an event whose terminating blank line never arrived is discarded,
        so this returns ``[]``; it exists so every decoder has the same shape.  Calling
        it again is harmless; feeding after it raises :class:`RuntimeError`.

        Returns:
            Always an empty list.
        """
        self._closed = True
        self._head = None
        self._partial = []
        self._partial_len = 0
        self._data = []
        self._data_len = 0
        return []


class NDJSONDecoder:
    """Splits a byte stream into lines on ``b"\\n"`` ONLY (never on U+2028, ``\\r`` alone, etc.).

    This is the framing of Ollama's streaming responses: one JSON document per line.  A
    trailing ``b"\\r"`` is stripped from each line (CRLF senders), and blank or
    whitespace-only lines are skipped.  Lines are returned as ``bytes``, ready for
    ``msgspec.json.decode``.

    Args:
        max_line_bytes: Largest line, in bytes before its ``b"\\n"``, that the decoder
            accepts.  A stream that exceeds it makes :meth:`feed` raise
            :class:`FrameTooLarge` (a :class:`ValueError`), after which the decoder
            must not be used again.

    Example:
        >>> dec = NDJSONDecoder()
        >>> dec.feed(b'{"a": 1}\\r\\n\\n{"b"')
        [b'{"a": 1}']
        >>> dec.feed(b": 2}\\n{")
        [b'{"b": 2}']
        >>> dec.close()
        [b'{']
    """

    __slots__ = ("_closed", "_max", "_partial", "_partial_len")

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._max = max_line_bytes
        # Unterminated last line as a list of chunks, joined once when its LF arrives.
        self._partial: list[bytes] = []
        self._partial_len = 0
        self._closed = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume one chunk of the byte stream.

        Args:
            chunk: The next bytes of the stream, split anywhere.

        Returns:
            The non-blank lines completed by this chunk, without line ends.

        Raises:
            FrameTooLarge: A line exceeded ``max_line_bytes``.
            RuntimeError: The decoder was already closed.
        """
        if self._closed:
            raise RuntimeError("NDJSONDecoder.feed() called after close()")
        if b"\n" not in chunk:
            if chunk:
                self._partial_len += len(chunk)
                if self._partial_len > self._max:
                    raise _line_too_long(self._max)
                self._partial.append(chunk)
            return []
        if self._partial:
            self._partial.append(chunk)
            buf = b"".join(self._partial)
            self._partial = []
            self._partial_len = 0
        else:
            buf = chunk
        lines = buf.split(b"\n")
        rest = lines.pop()  # b"" when the chunk ended exactly on a line end
        if rest:
            if len(rest) > self._max:
                raise _line_too_long(self._max)
            self._partial.append(rest)
            self._partial_len = len(rest)
        if len(buf) > self._max:
            for line in lines:
                if len(line) > self._max:
                    raise _line_too_long(self._max)
        if b"\r" in buf:
            lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        # isspace() stops at the first non-space byte, so this is cheap for JSON lines.
        return [line for line in lines if line and not line.isspace()]

    def close(self) -> list[bytes]:
        """Signal end of stream and return the unterminated last line, if not blank.

        Calling it again is harmless (returns ``[]``); feeding after it raises
        :class:`RuntimeError`.

        Returns:
            ``[line]`` for a non-blank unterminated remainder (trailing ``b"\\r"``
            stripped), else ``[]``.
        """
        self._closed = True
        rest = b"".join(self._partial)
        self._partial = []
        self._partial_len = 0
        if rest.endswith(b"\r"):
            rest = rest[:-1]
        return [rest] if rest and not rest.isspace() else []


def _split_line_ends(text: str) -> list[str]:
    # Not str.splitlines(): that would also break on U+2028, U+0085, VT, FF, ...,
    # which are ordinary data to an event stream.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _check_single_line(name: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {name} must not contain CR or LF: {value!r}")


def encode_sse(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Encode one event (multi-line data becomes several data: lines), ending with a blank line.

    Line ends inside ``data`` (CR, LF or CRLF) become ``data:`` line breaks, so the
    decoder gives back ``data`` with every line end normalised to ``"\\n"``.

    Args:
        data: The event's data; may be empty or contain any characters.
        event: The event type, or ``None`` to leave it as ``"message"``.
        id: The event ID to set, or ``None`` to send no ``id`` field.

    Returns:
        The UTF-8 encoded event, ending with a blank line.

    Raises:
        ValueError: ``event`` or ``id`` contains CR or LF, or ``id`` contains NUL
            (which the decoder would silently ignore).

    Example:
        >>> encode_sse("a\\nb", event="delta")
        b'event: delta\\ndata: a\\ndata: b\\n\\n'
    """
    parts: list[str] = []
    if event is not None:
        _check_single_line("event", event)
        parts.append(f"event: {event}\n")
    if id is not None:
        _check_single_line("id", id)
        if "\x00" in id:
            raise ValueError(f"SSE id must not contain NUL: {id!r}")
        parts.append(f"id: {id}\n")
    # Always one space after the colon, so a value that itself starts with a space
    # keeps it (the decoder removes exactly one).
    parts.append("data: " + "\ndata: ".join(_split_line_ends(data)) + "\n\n")
    return "".join(parts).encode()


def encode_sse_comment(text: str) -> bytes:
    """Encode a comment (e.g. a keep-alive): ``b": text\\n\\n"``.

    Line ends inside ``text`` start a new comment line, so a comment can never be
    mistaken for a field.

    Args:
        text: The comment text.

    Returns:
        The UTF-8 encoded comment, ending with a blank line.

    Example:
        >>> encode_sse_comment("keep-alive")
        b': keep-alive\\n\\n'
    """
    return (": " + "\n: ".join(_split_line_ends(text)) + "\n\n").encode()
