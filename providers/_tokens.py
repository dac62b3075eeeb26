"""Token counts before sending: admission (TPM), context windows, budgets.

=============================  ============================================================
:func:`estimate_text_tokens`   fast estimate of a text, any model (no dependency)
:func:`estimate_input_tokens`  fast estimate of a whole request: messages, images, tools
:func:`count_tokens`           exact for OpenAI models when a tokenizer is available
                               offline, else the estimate
:func:`count_input_tokens`     the same for a whole request
:func:`encoding_for_model`     the BPE encoding of a model (``o200k_base``, ...), if known
:func:`exact_backend`          which exact tokenizer :func:`count_tokens` would use
:class:`TokenCalibration`      learns actual/estimated per provider from reported usage
=============================  ============================================================

**The estimate** weighs each UTF-8 byte class by what it costs in BPE vocabularies: an
ASCII letter a quarter of a token, a digit two thirds (numbers split into groups of three
digits), punctuation a third, a newline 0.7; a character of a two-byte script (Cyrillic,
Arabic, Greek, accented Latin) 0.75, of a three-byte script (CJK, Indic) 1.25, a four-byte
character (emoji) 3.  The result is never below the classic one token per four
characters.  It is calibrated on ``cl100k_base``, the least thrifty of the common
encodings: docs/tokens.md gives the measured error per kind of text.  One UTF-8 encoding,
one ``bytes.translate`` and a few ``bytes.count`` calls: no Python loop over characters.

**Exact counts** need an optional extra, imported on first use only: ``bpe-openai``
(``pip install 'trio-llm-router[tokens]'``), whose wheel embeds the ``cl100k_base`` and
``o200k_base`` tables, or ``tiktoken`` *if* its encoding file is already in tiktoken's own
cache.  tiktoken downloads missing files from the internet on first use; we never let it:
the cached file must exist and match tiktoken's published SHA-256 before tiktoken is
called.  Only OpenAI models have a known encoding; for any other model the estimate is
used unless you name an encoding.

**Reconciliation**: providers report the real prompt size in every response's usage.
:class:`TokenCalibration` learns the ratio of that to the estimate, per provider (or per
target), and scales later estimates by it.

Example::

    >>> estimate_text_tokens("hello world")
    3
    >>> encoding_for_model("openai:gpt-4o-mini")
    'o200k_base'
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import importlib
import importlib.util
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Protocol, TypeAlias

import msgspec

from ._types import ChatRequest, ImagePart, TextPart

__all__ = [
    "CLAUDE_TOOL_PROMPT",
    "ENCODINGS",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "Backend",
    "Encoding",
    "TokenCalibration",
    "count_input_tokens",
    "count_tokens",
    "encoding_for_model",
    "estimate_image_tokens",
    "estimate_input_tokens",
    "estimate_text_tokens",
    "exact_backend",
]

#: The BPE encodings exact counts are available for.
Encoding: TypeAlias = Literal["cl100k_base", "o200k_base"]
ENCODINGS: tuple[Encoding, ...] = ("cl100k_base", "o200k_base")
#: The libraries an exact count can come from.
Backend: TypeAlias = Literal["bpe-openai", "tiktoken"]

#: Tokens per message for role markers and separators (OpenAI's chat format: three
#: markers plus the role, itself one token).
MESSAGE_OVERHEAD = 4
#: Tokens that prime the reply (``<|start|>assistant<|message|>``).
REPLY_PRIMING = 3
#: An image whose size is unknown (a URL) counts as 1024 x 1024 pixels: 765 tokens on
#: GPT-4o at high detail, about 1,400 on Claude.
IMAGE_TOKENS = 765
_UNKNOWN_SIZE = (1024, 1024)
#: The system prompt Anthropic adds when a request has tools (Claude 3.5 and later).
CLAUDE_TOOL_PROMPT = 346

# --------------------------------------------------------------------------- the estimate

# Each byte of the UTF-8 encoding maps to its class; the weights are in 60ths of a token.
# Continuation bytes (0x80-0xBF) weigh nothing: a character counts once, by its lead byte.
_WEIGHTS = {
    b"a": 15,  # ASCII letter: four per token in English prose and code
    b"d": 40,  # digit: BPE splits numbers into groups of one to three digits
    b"s": 6,  # space, tab: mostly merged into the next word ("Ġthe")
    b"n": 42,  # newline: often a token of its own, with the indentation after it
    b"p": 20,  # ASCII punctuation: a token per one to three
    b"2": 45,  # two-byte character (Cyrillic, Greek, Arabic, Hebrew, accented Latin)
    b"3": 75,  # three-byte character (CJK, kana, Hangul, Indic scripts, symbols)
    b"4": 180,  # four-byte character (emoji, rare CJK): two to four byte-level tokens
}


def _byte_classes() -> bytes:
    table = bytearray(256)
    for i in range(256):
        c = chr(i)
        if i >= 0xF0:
            table[i] = ord("4")
        elif i >= 0xE0:
            table[i] = ord("3")
        elif i >= 0xC0:
            table[i] = ord("2")
        elif i >= 0x80:
            table[i] = ord("c")
        elif c == "\n":
            table[i] = ord("n")
        elif c.isspace():
            table[i] = ord("s")
        elif c.isalpha():
            table[i] = ord("a")
        elif c.isdigit():
            table[i] = ord("d")
        else:
            table[i] = ord("p")
    return bytes(table)


_CLASSES = _byte_classes()


#: Each byte mapped straight to its class's weight (every weight fits in a byte).
_BYTE_WEIGHTS = bytes(_WEIGHTS.get(bytes((c,)), 0) for c in _CLASSES)
_WEIGHTED = tuple((cls[0], weight) for cls, weight in _WEIGHTS.items())

#: Up to this many bytes, summing the per-byte weights beats counting each class.
_SHORT = 256


def _estimate_utf8(data: bytes, chars: int) -> int:
    if len(data) <= _SHORT:
        weighted = sum(data.translate(_BYTE_WEIGHTS))
    else:
        classes = data.translate(_CLASSES)
        count = classes.count
        weighted = 0
        for cls, weight in _WEIGHTED:
            weighted += weight * count(cls)
    return max((chars + 3) // 4, -(-weighted // 60))


def estimate_text_tokens(text: str) -> int:
    """Fast estimate of the tokens of ``text``, for any model; at least ``len(text) / 4``.

    See the module docstring for the weights, and docs/tokens.md for the measured error.

    Example::

        >>> estimate_text_tokens("hello world")
        3
        >>> estimate_text_tokens("今天早上下了一场小雨")
        13
    """
    if not text:
        return 0
    data = text.encode("utf-8", "surrogatepass")
    return _estimate_utf8(data, len(text))


# --------------------------------------------------------------------------- images

_PNG = b"\x89PNG\r\n\x1a\n"


def _image_size(image: ImagePart) -> tuple[int, int] | None:
    """(width, height) from the header of an inline PNG, GIF, WebP or JPEG, if readable."""
    if image.data is None:
        return None
    # A JPEG's size comes after its EXIF and other segments: read up to 48 KiB.
    head = image.data[: 64 * 1024]
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        return None
    size: tuple[int, int] | None = None
    if raw[:8] == _PNG and raw[12:16] == b"IHDR":
        size = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    elif raw[:6] in (b"GIF87a", b"GIF89a"):
        size = int.from_bytes(raw[6:8], "little"), int.from_bytes(raw[8:10], "little")
    elif raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        size = _webp_size(raw)
    elif raw[:2] == b"\xff\xd8":
        size = _jpeg_size(raw)
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _webp_size(raw: bytes) -> tuple[int, int] | None:
    chunk = raw[12:16]
    if chunk == b"VP8 " and len(raw) >= 30:
        return (
            int.from_bytes(raw[26:28], "little") & 0x3FFF,
            int.from_bytes(raw[28:30], "little") & 0x3FFF,
        )
    if chunk == b"VP8L" and len(raw) >= 25:
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(raw) >= 30:
        return int.from_bytes(raw[24:27], "little") + 1, int.from_bytes(raw[27:30], "little") + 1
    return None


def _jpeg_size(raw: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height = int.from_bytes(raw[i + 5 : i + 7], "big")
            width = int.from_bytes(raw[i + 7 : i + 9], "big")
            return width, height
        i += 2 + int.from_bytes(raw[i + 2 : i + 4], "big")
    return None


def _fit(width: int, height: int, box: int) -> tuple[float, float]:
    scale = min(1.0, box / max(width, height))
    return width * scale, height * scale


def _openai_tiles(width: int, height: int, detail: str | None, base: int, tile: int) -> int:
    """OpenAI's tile rule: fit in 2048², shortest side to 768, 512-px tiles."""
    if detail == "low":
        return base
    w, h = _fit(width, height, 2048)
    scale = min(1.0, 768 / min(w, h))
    tiles = math.ceil(w * scale / 512) * math.ceil(h * scale / 512)
    return base + tile * tiles


def _openai_patches(width: int, height: int, multiplier: float) -> int:
    """OpenAI's patch rule (GPT-4.1 mini/nano, o4-mini): 32-px patches, at most 1536."""
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1536:
        scale = math.sqrt(1536 / patches)
        patches = min(1536, math.ceil(width * scale / 32) * math.ceil(height * scale / 32))
    return math.ceil(patches * multiplier)


def _anthropic_image(width: int, height: int) -> int:
    """Claude: long edge down to 1568 px, then width · height / 750, at most ~1,600."""
    w, h = _fit(width, height, 1568)
    return min(1600, math.ceil(w * h / 750))


def _gemini_image(width: int, height: int) -> int:
    """Gemini: 258 up to 384 x 384, else 258 per 768-px tile (fit in 3072²)."""
    if width <= 384 and height <= 384:
        return 258
    w, h = _fit(width, height, 3072)
    return 258 * math.ceil(w / 768) * math.ceil(h / 768)


# OpenAI's image rules by model family, most specific first (from the vision guide's
# "calculating costs" table).  ("tiles", base, per tile) or ("patches", multiplier).
_OPENAI_IMAGES: tuple[tuple[re.Pattern[str], tuple[Any, ...]], ...] = (
    (re.compile(r"gpt-4o-mini"), ("tiles", 2833, 5667)),
    (re.compile(r"gpt-(?:4\.1|5)-mini"), ("patches", 1.62)),
    (re.compile(r"gpt-(?:4\.1|5)-nano"), ("patches", 2.46)),
    (re.compile(r"o4-mini"), ("patches", 1.72)),
    (re.compile(r"o1|o3"), ("tiles", 75, 150)),
    (re.compile(r"gpt-5"), ("tiles", 70, 140)),
    (re.compile(r""), ("tiles", 85, 170)),
)


def estimate_image_tokens(image: ImagePart, model: str | None = None) -> int:
    """Tokens of one image: by the model's vendor rule, else the largest of the three.

    The size is read from the header of inline data (PNG, GIF, WebP, JPEG); an image
    given by URL counts as 1024 x 1024.  OpenAI models follow OpenAI's tile or patch
    rule for their family (``detail="low"`` is the base cost), ``claude-*`` Anthropic's
    pixels / 750, ``gemini-*`` Gemini's 258-token tiles; for any other model the
    largest of the three, so the estimate errs high.

    Example::

        >>> estimate_image_tokens(ImagePart.from_url("https://example.com/a.png"), "gpt-4o")
        765
    """
    width, height = _image_size(image) or _UNKNOWN_SIZE
    bare = _bare_model(model) if model else None
    if bare is not None and _match_encoding(bare) is not None:
        rule = next(r for pattern, r in _OPENAI_IMAGES if pattern.match(bare))
        if rule[0] == "patches":
            return _openai_patches(width, height, rule[1])
        return _openai_tiles(width, height, image.detail, rule[1], rule[2])
    if bare is not None and bare.startswith("claude"):
        return _anthropic_image(width, height)
    if bare is not None and bare.startswith("gemini"):
        return _gemini_image(width, height)
    return max(
        _openai_tiles(width, height, None, 85, 170),
        _anthropic_image(width, height),
        _gemini_image(width, height),
    )


# --------------------------------------------------------------------------- requests


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode("utf-8")


def _openai_tool_tokens(
    tool_parameters: dict[str, Any], name: str, description: str, count: Callable[[str], int]
) -> int:
    """One tool as OpenAI renders it (the cookbook's rule, exact on its examples)."""
    total = count(f"{name}:{description.removesuffix('.')}")
    properties = tool_parameters.get("properties")
    if isinstance(properties, dict) and properties:
        total += 3
        for key, spec in properties.items():
            spec = spec if isinstance(spec, dict) else {}
            kind = spec.get("type", "")
            text = str(spec.get("description", "")).removesuffix(".")
            total += 3 + count(f"{key}:{kind if isinstance(kind, str) else _json(kind)}:{text}")
            enum = spec.get("enum")
            if isinstance(enum, list):
                total += -3 + sum(3 + count(str(item)) for item in enum)
            rest = {k: v for k, v in spec.items() if k not in ("type", "description", "enum")}
            if rest:  # nested schemas, formats, bounds: beyond the cookbook, as JSON
                total += count(_json(rest))
    return total


def _input_tokens(
    request: ChatRequest,
    count: Callable[[str], int],
    model: str | None,
    *,
    exact_tools: bool,
) -> int:
    total = REPLY_PRIMING
    for m in request.messages:
        total += MESSAGE_OVERHEAD
        if m.name:
            total += count(m.name) + 1
        if isinstance(m.content, str):
            total += count(m.content)
        else:
            for p in m.content:
                total += (
                    count(p.text) if isinstance(p, TextPart) else estimate_image_tokens(p, model)
                )
        for c in m.tool_calls:
            total += MESSAGE_OVERHEAD + count(c.id) + count(c.name)
            total += count(c.raw_arguments if c.raw_arguments is not None else _json(c.arguments))
        if m.tool_call_id:
            total += count(m.tool_call_id)
    if request.tools:
        # OpenAI's rule has 7 tokens per tool (10 on cl100k models) and 12 in all; Claude
        # adds its tool-use system prompt (346 tokens on recent models).
        per_tool = 10 if exact_tools and encoding_for_model(model) == "cl100k_base" else 7
        total += 12
        if not exact_tools and model and _bare_model(model).startswith("claude"):
            total += CLAUDE_TOOL_PROMPT
        for t in request.tools:
            total += per_tool
            if exact_tools:
                total += _openai_tool_tokens(t.parameters, t.name, t.description, count)
            else:
                total += count(t.name) + count(t.description) + count(_json(t.parameters))
    if request.response_format is not None and request.response_format.schema is not None:
        total += count(_json(request.response_format.schema))
    return total


def estimate_input_tokens(request: ChatRequest) -> int:
    """Fast estimate of the prompt tokens of ``request``: messages, images, tools, schema.

    Per message: 4 (role and markers), plus its text, its name, the ids, names and
    arguments of its tool calls; images by :func:`estimate_image_tokens`; per tool 7
    plus its name, description and JSON schema, 12 for the tool block (and Claude's
    tool-use system prompt on ``claude-*`` models); the JSON of a response schema; 3 for
    the reply's priming.
    """
    return _input_tokens(request, estimate_text_tokens, request.model, exact_tools=False)


# --------------------------------------------------------------------------- encodings

_O200K = re.compile(
    r"(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|o\d+(?:-|$)|codex-mini"
    r"|omni-moderation|gpt-realtime|gpt-audio|computer-use)"
)
_CL100K = re.compile(r"(?:gpt-4|gpt-3\.5|gpt-35|text-embedding-3|text-embedding-ada-002)")


def _match_encoding(bare: str) -> Encoding | None:
    if _O200K.match(bare):
        return "o200k_base"
    if _CL100K.match(bare):
        return "cl100k_base"
    return None


def _bare_model(model: str) -> str:
    """The model id in ``provider:model``, ``ft:model:org::id`` or ``openai/model``."""
    name = model.lower()
    while True:
        bare = name.removeprefix("openai/")
        if _match_encoding(bare) is not None:
            return bare
        head, sep, rest = name.partition(":")
        if not sep:
            return bare
        name = rest.partition(":")[0] if head == "ft" else rest


@functools.lru_cache(maxsize=1024)
def encoding_for_model(model: str | None) -> Encoding | None:
    """The BPE encoding of an OpenAI model, or ``None`` for any other (or no) model.

    ``o200k_base`` for GPT-4o, 4.1, 4.5, 5, the o-series and gpt-oss; ``cl100k_base``
    for GPT-4, GPT-3.5 and the embedding models.  A ``provider:`` prefix, a fine-tune
    (``ft:gpt-4o-mini:org::id``) and OpenRouter's ``openai/`` are looked through.

    Example::

        >>> encoding_for_model("gpt-4-turbo"), encoding_for_model("claude-3-5-haiku-latest")
        ('cl100k_base', None)
    """
    return _match_encoding(_bare_model(model)) if model else None


# --------------------------------------------------------------------------- exact counts


class _Tokenizer(Protocol):
    """What we use of a tiktoken-compatible ``Encoding``."""

    def encode_ordinary(self, text: str) -> list[int]: ...


#: tiktoken's source URL and SHA-256 of each encoding file (tiktoken_ext/openai_public.py).
_TIKTOKEN_FILES: dict[str, tuple[str, str]] = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


def _tiktoken_cache_path(
    encoding: Encoding, environ: Mapping[str, str], default_dir: str
) -> str | None:
    """Where tiktoken looks for ``encoding``'s file; ``None`` if its cache is disabled.

    tiktoken's rule: ``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``, else its
    default directory; an empty directory disables the cache; the file is named by the
    SHA-1 of its URL.
    """
    if "TIKTOKEN_CACHE_DIR" in environ:
        cache_dir = environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in environ:
        cache_dir = environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = default_dir
    if not cache_dir:
        return None
    url = _TIKTOKEN_FILES[encoding][0]
    return os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())


def _tiktoken_default_dir() -> str:
    # Released tiktoken caches in <tempdir>/data-gym-cache; newer sources use a
    # per-user cache directory, exposed as tiktoken.load._default_cache_dir().
    load = importlib.import_module("tiktoken.load")  # no I/O at import
    default = getattr(load, "_default_cache_dir", None)
    if callable(default):
        return str(default())
    import tempfile

    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _verified(path: str, sha256: str) -> bool:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest() == sha256
    except OSError:
        return False


def _load_bpe_openai(encoding: Encoding) -> _Tokenizer | None:
    if importlib.util.find_spec("bpe_openai") is None:
        return None
    tokenizer: _Tokenizer = importlib.import_module("bpe_openai").get_encoding(encoding)
    return tokenizer


def _load_tiktoken(encoding: Encoding, environ: Mapping[str, str]) -> _Tokenizer | None:
    """tiktoken's encoding, only if its file is cached and intact: never a download.

    tiktoken fetches a missing file, and re-fetches one whose hash does not match; both
    are checked here first, so tiktoken is called only when it will read its cache.
    """
    if importlib.util.find_spec("tiktoken") is None:
        return None
    path = _tiktoken_cache_path(encoding, environ, _tiktoken_default_dir())
    if path is None or not _verified(path, _TIKTOKEN_FILES[encoding][1]):
        return None
    tokenizer: _Tokenizer = importlib.import_module("tiktoken").get_encoding(encoding)
    return tokenizer


@functools.cache
def _exact(encoding: Encoding) -> tuple[Backend, _Tokenizer] | None:
    """The exact tokenizer for ``encoding``, loaded once per process (or ``None``)."""
    loaders: tuple[tuple[Backend, Callable[[], _Tokenizer | None]], ...] = (
        ("bpe-openai", lambda: _load_bpe_openai(encoding)),
        ("tiktoken", lambda: _load_tiktoken(encoding, os.environ)),
    )
    for backend, load in loaders:
        try:
            tokenizer = load()
        except Exception:  # a broken optional install is no tokenizer, not a crash
            tokenizer = None
        if tokenizer is not None:
            return backend, tokenizer
    return None


#: Texts are counted in pieces of at most this many characters: bpe-openai refuses a
#: text of a million characters or 200,000 tokens, and a character is at most 4 tokens.
_PIECE = 40_000


def _pieces(text: str, size: int = _PIECE) -> Iterator[str]:
    """``text`` in pieces of at most ``size`` characters, cut where BPE would cut anyway.

    A cut goes after a newline or before a space that starts a word, so each piece
    pre-tokenizes as it would inside the whole text; only a piece with neither (a long
    blob) is cut blindly, which can change its count by a token.
    """
    start = 0
    while len(text) - start > size:
        end = start + size
        low = start + size // 2
        cut = -1
        nl = text.rfind("\n", low, end)
        while nl != -1:
            if not text[nl + 1].isspace():
                cut = nl + 1
                break
            nl = text.rfind("\n", low, nl)
        if cut == -1:
            sp = text.rfind(" ", low, end)
            while sp != -1:
                if not text[sp + 1].isspace() and not text[sp - 1].isspace():
                    cut = sp
                    break
                sp = text.rfind(" ", low, sp)
        if cut == -1:
            cut = end
        yield text[start:cut]
        start = cut
    yield text[start:]


def _count_with(tokenizer: _Tokenizer, text: str) -> int:
    total = 0
    for piece in _pieces(text):
        try:
            total += len(tokenizer.encode_ordinary(piece))
        except Exception:  # a text the tokenizer refuses still gets a count
            total += estimate_text_tokens(piece)
    return total


def _encoding_of(model: str | None, encoding: Encoding | None) -> Encoding | None:
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {list(ENCODINGS)}")
    return encoding or encoding_for_model(model)


def exact_backend(model: str | None = None, *, encoding: Encoding | None = None) -> Backend | None:
    """The library exact counts for ``model`` (or ``encoding``) come from, else ``None``.

    ``None`` means :func:`count_tokens` falls back to the estimate: the model has no
    known encoding, or neither ``bpe-openai`` nor a cached ``tiktoken`` file is there.
    The first call for an encoding loads it (a fraction of a second).

    Example::

        exact_backend("gpt-4o")     # "bpe-openai" with the [tokens] extra, else None
    """
    name = _encoding_of(model, encoding)
    found = _exact(name) if name is not None else None
    return found[0] if found is not None else None


def count_tokens(text: str, model: str | None = None, *, encoding: Encoding | None = None) -> int:
    """Tokens of ``text``: exact for an OpenAI ``model`` (or a named ``encoding``) when a
    tokenizer is available offline, else :func:`estimate_text_tokens`.

    Special-token strings such as ``<|endoftext|>`` count as ordinary text, as the API
    treats them.

    Raises:
        ValueError: ``encoding`` is not one of :data:`ENCODINGS`.

    Example::

        count_tokens("hello world", "gpt-4o")                 # 2 with bpe-openai, else 3
        count_tokens("hello world", "llama3", encoding="cl100k_base")
    """
    name = _encoding_of(model, encoding)
    found = _exact(name) if name is not None else None
    if found is None:
        return estimate_text_tokens(text)
    return _count_with(found[1], text) if text else 0


def count_input_tokens(
    request: ChatRequest, *, model: str | None = None, encoding: Encoding | None = None
) -> int:
    """Prompt tokens of ``request``: exact where :func:`count_tokens` is, else the estimate.

    ``model`` defaults to ``request.model``.  With an exact tokenizer, messages follow
    OpenAI's chat format (3 tokens per message plus its role, 1 more for a name, 3 to
    prime the reply) and tools OpenAI's rendering of function definitions, which matches
    the usage the API reports for OpenAI's own examples; images follow the vendor rules
    of :func:`estimate_image_tokens`.  Without one, this is :func:`estimate_input_tokens`.

    Raises:
        ValueError: ``encoding`` is not one of :data:`ENCODINGS`.
    """
    model = model or request.model
    name = _encoding_of(model, encoding)
    found = _exact(name) if name is not None else None
    if found is None:
        return _input_tokens(request, estimate_text_tokens, model, exact_tools=False)
    tokenizer = found[1]

    def count(text: str) -> int:
        return _count_with(tokenizer, text) if text else 0

    return _input_tokens(request, count, model, exact_tools=True)


# --------------------------------------------------------------------------- reconciliation


class TokenCalibration:
    """Learns, per provider, how the real prompt size compares with the estimate.

    Each response reports the prompt's real size (``usage.input_tokens``).  ``observe``
    turns it into a sample ``actual / estimated`` (clamped to ``[min_ratio,
    max_ratio]``) and folds it into the key's ratio: the mean of the first samples,
    then an exponentially weighted moving average with weight ``alpha``, so one odd
    response moves it by at most ``alpha``.  ``scale`` multiplies later estimates by
    that ratio (1 until a sample arrives).  Prompts under ``min_estimate`` tokens are
    not sampled: their fixed overheads say nothing about the tokenizer.

    A key is whatever the caller calibrates by: a provider name, or a ``provider:model``
    target where one provider serves models with different tokenizers (OpenRouter,
    Together, Ollama).  The class is pure: no clock, no I/O, no locking (trio is
    single-threaded).

    Synopsis::

        calibration = TokenCalibration()
        estimate = estimate_input_tokens(request)
        cost = calibration.scale("anthropic", estimate)        # admission, context window
        response = await ...
        calibration.observe("anthropic", estimate, response.usage.input_tokens)
    """

    __slots__ = ("_alpha", "_max", "_min", "_min_estimate", "_ratios", "_samples")

    def __init__(
        self,
        *,
        alpha: float = 0.2,
        min_ratio: float = 0.25,
        max_ratio: float = 4.0,
        min_estimate: int = 32,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"`alpha` must be in (0, 1], got {alpha}")
        if not 0.0 < min_ratio <= 1.0 <= max_ratio < math.inf:
            raise ValueError(
                f"the ratio range must hold 1 and be positive and finite, "
                f"got [{min_ratio}, {max_ratio}]"
            )
        if min_estimate < 1:
            raise ValueError(f"`min_estimate` must be >= 1, got {min_estimate}")
        self._alpha = alpha
        self._min = min_ratio
        self._max = max_ratio
        self._min_estimate = min_estimate
        self._ratios: dict[str, float] = {}
        self._samples: dict[str, int] = {}

    def __repr__(self) -> str:
        ratios = ", ".join(f"{k}={v:.3f}" for k, v in sorted(self._ratios.items()))
        return f"TokenCalibration({ratios})"

    def observe(self, key: str, estimated: int, actual: int) -> float:
        """Fold one response's ``actual`` prompt tokens against the ``estimated`` ones
        (the unscaled estimate) into ``key``'s ratio; return the new ratio.

        Ignored (the ratio returned unchanged): ``estimated < min_estimate``, or no
        usage reported (``actual <= 0``).
        """
        ratio = self._ratios.get(key, 1.0)
        if estimated < self._min_estimate or actual <= 0:
            return ratio
        sample = min(self._max, max(self._min, actual / estimated))
        n = self._samples.get(key, 0) + 1
        self._samples[key] = n
        ratio += max(self._alpha, 1.0 / n) * (sample - ratio)
        ratio = min(self._max, max(self._min, ratio))
        self._ratios[key] = ratio
        return ratio

    def ratio(self, key: str) -> float:
        """The learned ``actual / estimated`` for ``key``; 1.0 before any sample."""
        return self._ratios.get(key, 1.0)

    def samples(self, key: str) -> int:
        """How many responses have been folded into ``key``'s ratio."""
        return self._samples.get(key, 0)

    def scale(self, key: str, estimate: int) -> int:
        """``estimate`` corrected by ``key``'s ratio, rounded up."""
        ratio = self._ratios.get(key)
        if ratio is None or estimate <= 0:
            return max(estimate, 0)
        # The epsilon keeps float noise (100 · 1.0000000001) from adding a token.
        return math.ceil(estimate * ratio - 1e-9)

    def ratios(self) -> dict[str, float]:
        """A snapshot of every learned ratio, for a pure policy to read."""
        return dict(self._ratios)
