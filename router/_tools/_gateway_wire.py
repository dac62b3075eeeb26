"""What both of the gateway's dialects share: the 400 they raise, body decoding, SSE framing."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

__all__ = ["BadRequest", "decode_body", "sse_data", "sse_event"]

T = TypeVar("T")


class BadRequest(Exception):
    """A request the vendor would refuse with a 400 (or ``status``); ``param`` names the
    field, ``code`` is OpenAI's error code (``invalid_api_key``...), if any."""

    def __init__(
        self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """``body`` decoded by ``decoder``; a mistake is a :class:`BadRequest` naming the field.

    msgspec's message names the field and its path (``Object contains unknown field
    `foo```, ``Expected `int`, got `str` - at `$.max_tokens```); it is passed on as it
    is, rather than parsed.
    """
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(
            f"We could not parse the JSON body of your request ({exc}). The body must be "
            "one JSON object."
        ) from None


def sse_data(payload: bytes) -> bytes:
    """One unnamed SSE event: ``data: <payload>`` and a blank line."""
    return b"data: " + payload + b"\n\n"


def sse_event(name: bytes, payload: Any) -> bytes:
    """One named SSE event (Anthropic's framing): ``event:`` and ``data:`` lines."""
    return b"event: " + name + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"
