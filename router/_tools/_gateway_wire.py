"""What both of the gateway's dialects share: the 400 they raise, body decoding, SSE framing."""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec

__all__ = ["BadRequest", "Int64", "decode_body", "sse_data", "sse_event"]

T = TypeVar("T")

#: An integer a body may carry (``max_tokens``, ``seed``...): JSON allows any size, the
#: vendors a signed 64-bit one.  A larger one is the client's mistake, a 400 naming the
#: field, not an arithmetic error deep in the router blamed on the upstream.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

_AT = re.compile(r" - at `\$\.?(.+)`$")
_UNKNOWN = re.compile(r"unknown field `(.+)`")


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
    is, and the path (``max_tokens``, ``tools[0].function.name``) is the error's
    ``param``.  JSON nested deeper than the interpreter's recursion limit is a 400 too.
    """
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _AT.search(text) or _UNKNOWN.search(text)
        param = found.group(1) if found else None
        raise BadRequest(f"Invalid request body: {text}", param=param) from None
    except RecursionError:  # msgspec's guard against a stack overflow
        raise BadRequest(
            "We could not parse the JSON body of your request: it is nested too deeply."
        ) from None
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
