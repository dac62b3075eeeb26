"""Token counting: the fast estimate, exact counts offline, images, tools, calibration.

The estimate is measured against exact BPE counts on tests/token_corpus.toml, which
stores each sample's ``cl100k_base`` and ``o200k_base`` counts, so the tolerance is
checked on every run; the stored counts themselves are checked against the live
tokenizer when the ``tokens`` extra (bpe-openai) is installed.  To print the table that
docs/tokens.md quotes::

    python tests/test_tokens.py --measure
"""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import math
import struct
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import ChatRequest, ImagePart, Message, ResponseFormat, ToolCall, ToolSpec, _tokens
from providers._tokens import (
    CLAUDE_TOOL_PROMPT,
    TokenCalibration,
    count_input_tokens,
    count_tokens,
    encoding_for_model,
    estimate_image_tokens,
    estimate_input_tokens,
    estimate_text_tokens,
    exact_backend,
)

CORPUS_FILE = Path(__file__).with_name("token_corpus.toml")
CORPUS: list[dict[str, Any]] = tomllib.loads(CORPUS_FILE.read_text(encoding="utf-8"))["sample"]

#: estimate / exact count, per kind of text: the bounds docs/tokens.md states.  The
#: estimate is sized for cl100k_base; on o200k_base non-Latin scripts come out high.
TOLERANCE_CL100K: dict[str, tuple[float, float]] = {
    "prose": (0.95, 1.25),
    "code": (0.95, 1.15),
    "json": (0.80, 1.20),
    "numbers": (1.00, 1.20),
    "whitespace": (0.90, 1.20),
    "urls": (0.90, 1.05),
    "latin": (0.85, 1.10),
    "cjk": (0.85, 1.30),
    "cyrillic": (0.85, 1.30),
    "arabic": (0.85, 1.30),
    "indic": (0.85, 1.30),
    "emoji": (0.85, 1.30),
    "identifiers": (0.60, 1.00),  # the worst case: hex ids, hashes, base64
}
TOLERANCE_O200K: dict[str, tuple[float, float]] = {
    **TOLERANCE_CL100K,
    "cjk": (1.00, 1.50),
    "cyrillic": (1.00, 2.20),
    "arabic": (1.00, 2.20),
    "indic": (1.00, 3.00),
    "emoji": (1.00, 1.50),
}


def ratio(sample: dict[str, Any], encoding: str) -> float:
    """The estimate of ``sample`` over its stored exact count under ``encoding``."""
    return estimate_text_tokens(sample["text"]) / int(sample[encoding])


def ids(samples: list[dict[str, Any]]) -> list[str]:
    """Test ids: the samples' names."""
    return [str(s["name"]) for s in samples]


# --------------------------------------------------------------------------- the estimate


def test_the_corpus_covers_every_kind_of_text() -> None:
    """The corpus has every kind the tolerance table names, and nothing else."""
    assert {s["kind"] for s in CORPUS} == set(TOLERANCE_CL100K) == set(TOLERANCE_O200K)


@pytest.mark.parametrize("sample", CORPUS, ids=ids(CORPUS))
def test_estimate_is_within_tolerance_of_cl100k(sample: dict[str, Any]) -> None:
    """On each corpus sample the estimate is within its kind's bounds of cl100k_base."""
    low, high = TOLERANCE_CL100K[sample["kind"]]
    assert low <= ratio(sample, "cl100k_base") <= high


@pytest.mark.parametrize("sample", CORPUS, ids=ids(CORPUS))
def test_estimate_is_within_tolerance_of_o200k(sample: dict[str, Any]) -> None:
    """On each corpus sample the estimate is within its kind's bounds of o200k_base."""
    low, high = TOLERANCE_O200K[sample["kind"]]
    assert low <= ratio(sample, "o200k_base") <= high


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("hi", 1),
        ("hello world", 3),
        ("1234567890", 7),  # digits: 2/3 each
        ("今天早上下了一场小雨", 13),  # CJK: 1.25 each
        ("Привет", 5),  # two-byte script: 0.75 each
        ("🚀", 3),  # four-byte: 3
        ("\n\n\n\n", 3),  # newlines: 0.7 each
    ],
)
def test_estimate_text_tokens_table(text: str, tokens: int) -> None:
    """The byte-class weights on small texts."""
    assert estimate_text_tokens(text) == tokens


@given(st.text())
def test_estimate_is_at_least_a_token_per_four_characters(text: str) -> None:
    """Any text, lone surrogates included: no error, >= ceil(len / 4), 0 only when empty."""
    tokens = estimate_text_tokens(text)
    assert tokens >= math.ceil(len(text) / 4)
    assert (tokens == 0) == (text == "")


@given(st.text(), st.text())
def test_estimate_is_monotone_and_subadditive(a: str, b: str) -> None:
    """Appending text never lowers the estimate, and never adds more than its own."""
    whole = estimate_text_tokens(a + b)
    assert max(estimate_text_tokens(a), estimate_text_tokens(b)) <= whole
    assert whole <= estimate_text_tokens(a) + estimate_text_tokens(b)


def hi(**fields: Any) -> ChatRequest:
    """A one-message request saying "hi"."""
    return ChatRequest(model=fields.pop("model", "m"), messages=[Message.user("hi")], **fields)


WEATHER = ToolSpec(
    name="get_current_weather",
    description="Get the current weather in a given location",
    parameters={
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA",
            },
            "unit": {
                "type": "string",
                "description": "The unit of temperature to return",
                "enum": ["celsius", "fahrenheit"],
            },
        },
        "required": ["location"],
    },
)


def tool_estimate(tool: ToolSpec) -> int:
    """The estimator's cost of one tool, block overhead included."""
    e = estimate_text_tokens
    return 12 + 7 + e(tool.name) + e(tool.description) + e(_tokens._json(tool.parameters))


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (hi(), 3 + 4 + 1),
        (
            ChatRequest(model="m", messages=[Message(role="system", content="hi", name="ann")]),
            3 + 4 + 1 + (1 + 1),
        ),
        (
            ChatRequest(
                model="m",
                messages=[
                    Message.user("hi"),
                    Message.assistant(tool_calls=[ToolCall(id="c1", name="f", arguments={"a": 1})]),
                    Message.tool("c1", "ok"),
                ],
            ),
            3 + (4 + 1) + (4 + 4 + 1 + 1 + estimate_text_tokens('{"a":1}')) + (4 + 1 + 1),
        ),
        (hi(tools=[WEATHER]), 8 + tool_estimate(WEATHER)),
        (hi(model="claude-sonnet-4-5", tools=[WEATHER]), 8 + tool_estimate(WEATHER) + 346),
        (
            hi(response_format=ResponseFormat.json_schema({"type": "object"})),
            8 + estimate_text_tokens('{"type":"object"}'),
        ),
        (
            ChatRequest(
                model="gpt-4o",
                messages=[Message.user("hi", ImagePart.from_url("https://example.com/a.png"))],
            ),
            3 + 4 + 1 + 765,
        ),
    ],
    ids=["text", "name", "tool-calls", "tools", "claude-tools", "schema", "image"],
)
def test_estimate_input_tokens_counts_every_part(request_: ChatRequest, expected: int) -> None:
    """What the request estimate adds up: messages, names, tool calls, tools, schema, images."""
    assert CLAUDE_TOOL_PROMPT == 346
    assert estimate_input_tokens(request_) == expected


def test_raw_tool_arguments_are_counted() -> None:
    """Arguments the model sent as non-JSON are counted from their raw text."""
    call = ToolCall(id="c", name="f", raw_arguments="x" * 400)
    request = ChatRequest(
        model="m", messages=[Message.user("hi"), Message.assistant(tool_calls=[call])]
    )
    assert estimate_input_tokens(request) >= 100


# --------------------------------------------------------------------------- images


def png(width: int, height: int) -> bytes:
    """The first bytes of a PNG of the given size."""
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", width, height)


def gif(width: int, height: int) -> bytes:
    """The first bytes of a GIF of the given size."""
    return b"GIF89a" + struct.pack("<HH", width, height)


def webp(chunk: bytes, width: int, height: int) -> bytes:
    """The first bytes of a WebP of the given size, as a VP8, VP8L or VP8X chunk."""
    head = b"RIFF\x00\x00\x00\x00WEBP" + chunk + b"\x00\x00\x00\x00"
    if chunk == b"VP8 ":
        return head + b"\x00" * 6 + struct.pack("<HH", width, height)
    if chunk == b"VP8L":
        return head + b"\x2f" + struct.pack("<I", (width - 1) | (height - 1) << 14)
    return (
        head + b"\x00" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )


def jpeg(width: int, height: int) -> bytes:
    """The first bytes of a JPEG of the given size, with an APP1 segment before its frame."""
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 300) + b"E" * 300
    sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, height, width) + b"\x03" + b"\x00" * 9
    return b"\xff\xd8" + app1 + b"\xff\xff" + sof


def inline(raw: bytes, media_type: str = "image/png", **fields: Any) -> ImagePart:
    """An inline image part from raw bytes."""
    return ImagePart(data=base64.b64encode(raw).decode(), media_type=media_type, **fields)


@pytest.mark.parametrize(
    "raw",
    [
        png(1000, 700),
        gif(1000, 700),
        webp(b"VP8 ", 1000, 700),
        webp(b"VP8L", 1000, 700),
        webp(b"VP8X", 1000, 700),
        jpeg(1000, 700),
    ],
    ids=["png", "gif", "webp-vp8", "webp-vp8l", "webp-vp8x", "jpeg"],
)
def test_image_size_is_read_from_the_header(raw: bytes) -> None:
    """PNG, GIF, the three WebP flavours and JPEG (after an EXIF segment) give their size."""
    assert _tokens._image_size(inline(raw)) == (1000, 700)


@pytest.mark.parametrize(
    "image",
    [
        ImagePart.from_url("https://example.com/a.png"),
        ImagePart(data="iVBORw0KGgo=", media_type="image/png"),  # the PNG signature only
        ImagePart(data="!!!not base64!!!", media_type="image/png"),
        inline(png(0, 10)),
        inline(b"\xff\xd8\x00\x00garbage"),
    ],
    ids=["url", "truncated", "not-base64", "zero-width", "bad-jpeg"],
)
def test_unreadable_images_have_no_size(image: ImagePart) -> None:
    """URLs, truncated or corrupt data: no size, so the 1024 x 1024 default applies."""
    assert _tokens._image_size(image) is None


@pytest.mark.parametrize(
    ("image", "model", "tokens"),
    [
        # OpenAI's published examples: 1024² high = 765, 2048 x 4096 high = 1105, low = 85.
        (inline(png(1024, 1024)), "gpt-4o", 765),
        (inline(png(2048, 4096)), "gpt-4o", 1105),
        (inline(png(4096, 8192), detail="low"), "gpt-4o", 85),
        (inline(png(512, 512)), "gpt-4o-mini", 2833 + 5667),
        (inline(png(1024, 1024)), "gpt-4.1-mini", math.ceil(1024 * 1.62)),
        (inline(png(4096, 4096)), "gpt-4.1-nano", math.ceil(1536 * 2.46)),
        (inline(png(1024, 1024)), "o3", 75 + 150 * 4),
        (inline(png(1024, 1024)), "gpt-5", 70 + 140 * 4),
        (inline(png(1000, 1000)), "claude-sonnet-4-5", 1334),
        (inline(png(4000, 3000)), "anthropic:claude-3-5-haiku-latest", 1600),
        (inline(png(300, 300)), "gemini-2.5-flash", 258),
        (inline(png(1000, 1000)), "gemini-2.5-flash", 258 * 4),
        (ImagePart.from_url("https://example.com/a.png"), "gpt-4o", 765),
        (ImagePart.from_url("https://example.com/a.png"), None, 1399),  # Claude's, the largest
        (inline(png(100, 100)), "llama3", 258),  # Gemini's, the largest for a thumbnail
    ],
)
def test_image_tokens_follow_the_vendor_rule(
    image: ImagePart, model: str | None, tokens: int
) -> None:
    """Each vendor's image rule; an unknown model takes the largest of the three."""
    assert estimate_image_tokens(image, model) == tokens


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("openai:gpt-4o", "o200k_base"),
        ("azure:GPT-4o", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("openai:ft:gpt-3.5-turbo:acme::x", "cl100k_base"),
        ("openrouter:openai/gpt-4o", "o200k_base"),
        ("claude-3-5-haiku-latest", None),
        ("gemini-2.0-flash", None),
        ("ollama:llama3:8b", None),
        ("omega", None),
        ("fast", None),
        ("", None),
        (None, None),
    ],
)
def test_encoding_for_model(model: str | None, encoding: str | None) -> None:
    """OpenAI models map to their encoding through prefixes; others to none."""
    assert encoding_for_model(model) == encoding


def test_an_unknown_encoding_is_refused() -> None:
    """Naming an encoding we cannot count with is a ValueError that lists the known ones."""
    with pytest.raises(ValueError, match="o200k_base"):
        count_tokens("hi", encoding="p50k_base")  # type: ignore[arg-type]


def test_other_models_use_the_estimate() -> None:
    """For a model with no known encoding, counting is estimating."""
    request = ChatRequest(
        model="claude-3-5-haiku-latest", messages=[Message.user("Привет, мир")], tools=[WEATHER]
    )
    assert count_tokens("Привет, мир", "claude-3-5-haiku-latest") == estimate_text_tokens(
        "Привет, мир"
    )
    assert count_input_tokens(request) == estimate_input_tokens(request)
    assert exact_backend("claude-3-5-haiku-latest") is None


@pytest.fixture
def no_exact_tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Neither bpe-openai nor a cached tiktoken file, whatever this machine has."""
    monkeypatch.setitem(sys.modules, "bpe_openai", None)  # find_spec() says: not installed
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    _tokens._exact.cache_clear()
    yield
    _tokens._exact.cache_clear()


def test_without_an_exact_tokenizer_openai_models_are_estimated(no_exact_tokenizer: None) -> None:
    """No extra installed: OpenAI models get the estimate too, and nothing fails."""
    request = ChatRequest(model="gpt-4o", messages=COOKBOOK_MESSAGES, tools=[WEATHER])
    assert exact_backend("gpt-4o") is None
    assert count_tokens("hello world", "gpt-4o") == estimate_text_tokens("hello world") == 3
    assert count_input_tokens(request) == estimate_input_tokens(request)


@given(st.text(min_size=0, max_size=400), st.integers(4, 64))
def test_pieces_join_back_and_stay_small(text: str, size: int) -> None:
    """Cutting a long text for the tokenizer loses nothing and respects the size."""
    pieces = list(_tokens._pieces(text, size))
    assert "".join(pieces) == text
    assert all(len(p) <= size for p in pieces)


class Refusing:
    """A tokenizer that refuses one text, as bpe-openai does past its limits."""

    def encode_ordinary(self, text: str) -> list[int]:
        """One token per character, except for texts holding "!"."""
        if "!" in text:
            raise ValueError("Input too long to encode safely")
        return [0] * len(text)


def test_a_refused_text_falls_back_to_the_estimate() -> None:
    """A text the tokenizer refuses is estimated rather than raising."""
    assert _tokens._count_with(Refusing(), "abc") == 3
    assert _tokens._count_with(Refusing(), "hello world!") == estimate_text_tokens("hello world!")


# --------------------------------------------------------------------------- tiktoken, offline


@pytest.mark.parametrize(
    ("environ", "directory"),
    [
        ({}, "/default"),
        ({"DATA_GYM_CACHE_DIR": "/gym"}, "/gym"),
        ({"TIKTOKEN_CACHE_DIR": "/tik", "DATA_GYM_CACHE_DIR": "/gym"}, "/tik"),
        ({"TIKTOKEN_CACHE_DIR": ""}, None),
        ({"TIKTOKEN_CACHE_DIR": "", "DATA_GYM_CACHE_DIR": "/gym"}, None),
    ],
)
def test_tiktoken_cache_path_follows_tiktoken(
    environ: dict[str, str], directory: str | None
) -> None:
    """TIKTOKEN_CACHE_DIR, then DATA_GYM_CACHE_DIR, then the default; empty disables."""
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    expected = (
        None if directory is None else f"{directory}/{hashlib.sha1(url.encode()).hexdigest()}"
    )
    assert _tokens._tiktoken_cache_path("o200k_base", environ, "/default") == expected


class FakeTiktoken:
    """Stands in for an installed tiktoken; records every get_encoding call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_encoding(self, name: str) -> Refusing:
        """The only entry point that could download: recorded."""
        self.calls.append(name)
        return Refusing()


@pytest.fixture
def fake_tiktoken(monkeypatch: pytest.MonkeyPatch) -> FakeTiktoken:
    """A fake ``tiktoken`` package (and ``tiktoken.load``) in place of any real one."""
    fake = FakeTiktoken()
    package = types.ModuleType("tiktoken")
    package.__spec__ = importlib.machinery.ModuleSpec("tiktoken", None)
    package.get_encoding = fake.get_encoding  # type: ignore[attr-defined]
    load = types.ModuleType("tiktoken.load")
    monkeypatch.setitem(sys.modules, "tiktoken", package)
    monkeypatch.setitem(sys.modules, "tiktoken.load", load)
    return fake


def test_tiktoken_is_never_called_without_its_cached_file(
    fake_tiktoken: FakeTiktoken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing file, corrupt file, disabled cache: no tokenizer, and tiktoken is not called."""
    environ = {"TIKTOKEN_CACHE_DIR": str(tmp_path)}
    assert _tokens._load_tiktoken("cl100k_base", environ) is None
    path = _tokens._tiktoken_cache_path("cl100k_base", environ, "")
    assert path is not None
    Path(path).write_bytes(b"not the encoding")
    assert _tokens._load_tiktoken("cl100k_base", environ) is None  # tiktoken would re-fetch
    assert _tokens._load_tiktoken("cl100k_base", {"TIKTOKEN_CACHE_DIR": ""}) is None
    assert fake_tiktoken.calls == []


def test_tiktoken_is_used_when_its_file_is_cached_and_intact(
    fake_tiktoken: FakeTiktoken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the file cached under the right name and hash, tiktoken's encoding is used."""
    content = b"ranks"
    url = _tokens._TIKTOKEN_FILES["cl100k_base"][0]
    monkeypatch.setitem(
        _tokens._TIKTOKEN_FILES, "cl100k_base", (url, hashlib.sha256(content).hexdigest())
    )
    environ = {"DATA_GYM_CACHE_DIR": str(tmp_path)}
    path = _tokens._tiktoken_cache_path("cl100k_base", environ, "")
    assert path is not None
    Path(path).write_bytes(content)
    tokenizer = _tokens._load_tiktoken("cl100k_base", environ)
    assert tokenizer is not None
    assert fake_tiktoken.calls == ["cl100k_base"]


def test_tiktoken_default_directory_is_tiktokens_own(fake_tiktoken: FakeTiktoken) -> None:
    """tiktoken's _default_cache_dir() when it has one, else <tempdir>/data-gym-cache."""
    import tempfile

    assert _tokens._tiktoken_default_dir() == str(Path(tempfile.gettempdir()) / "data-gym-cache")
    sys.modules["tiktoken.load"]._default_cache_dir = lambda: "/xdg/tiktoken"  # type: ignore[attr-defined]
    assert _tokens._tiktoken_default_dir() == "/xdg/tiktoken"


def test_importing_the_router_loads_no_tokenizer() -> None:
    """`import router` stays fast: neither bpe-openai nor tiktoken is imported."""
    code = "import sys, router; print(sorted(m for m in sys.modules if m.split('.')[0] in ('bpe_openai', 'tiktoken')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- exact counts (extra)


@pytest.fixture(scope="module")
def bpe_openai() -> Any:
    """The bpe-openai package, or the test is skipped (the ``tokens`` extra is optional)."""
    return pytest.importorskip("bpe_openai")


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_stored_counts_match_the_tokenizer(bpe_openai: Any, encoding: str) -> None:
    """The corpus's stored counts are what the exact tokenizer says today."""
    tokenizer = bpe_openai.get_encoding(encoding)
    stored = {s["name"]: s[encoding] for s in CORPUS}
    assert stored == {s["name"]: len(tokenizer.encode_ordinary(s["text"])) for s in CORPUS}


@pytest.mark.parametrize("sample", CORPUS, ids=ids(CORPUS))
def test_estimate_is_within_tolerance_of_the_live_tokenizer(
    bpe_openai: Any, sample: dict[str, Any]
) -> None:
    """The stated tolerance holds against the live exact counts too."""
    for model, table in (("gpt-4", TOLERANCE_CL100K), ("gpt-4o", TOLERANCE_O200K)):
        low, high = table[sample["kind"]]
        assert (
            low
            <= estimate_text_tokens(sample["text"]) / count_tokens(sample["text"], model)
            <= high
        )


def test_exact_counts_come_from_bpe_openai(bpe_openai: Any) -> None:
    """With the extra installed, OpenAI models are counted exactly, offline."""
    assert exact_backend("gpt-4o") == "bpe-openai"
    assert exact_backend(encoding="cl100k_base") == "bpe-openai"
    assert count_tokens("hello world", "gpt-4o") == 2
    assert count_tokens("tiktoken is great!", "gpt-4") == 6
    assert count_tokens("<|endoftext|>", "gpt-4o") > 1  # ordinary text, not a special token
    assert count_tokens("hello world", "llama3", encoding="cl100k_base") == 2


@pytest.fixture(scope="module")
def o200k(bpe_openai: Any) -> Any:
    """bpe-openai's o200k_base encoding, loaded once."""
    return bpe_openai.get_encoding("o200k_base")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_count_tokens_is_the_tokenizers_count(o200k: Any, text: str) -> None:
    """For any text, count_tokens on an OpenAI model is exactly the tokenizer's count."""
    assert count_tokens(text, "gpt-4o-mini") == len(o200k.encode_ordinary(text))


def test_long_texts_are_counted_exactly_in_pieces(bpe_openai: Any) -> None:
    """A text far above the piece size counts the same as in one go."""
    text = "\n".join(s["text"] for s in CORPUS) * 30  # about 250,000 characters
    assert len(text) > 5 * _tokens._PIECE
    for encoding in ("cl100k_base", "o200k_base"):
        whole = len(bpe_openai.get_encoding(encoding).encode_ordinary(text))
        assert count_tokens(text, encoding=encoding) == whole  # type: ignore[arg-type]


# OpenAI's cookbook ("How to count tokens with tiktoken") lists these requests with the
# prompt_tokens the API reported: 129 on GPT-4 and GPT-3.5, 124 on GPT-4o; with a tool,
# 105 and 101.
COOKBOOK_MESSAGES = [
    Message.system(
        "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."
    ),
    Message(
        role="system", name="example_user", content="New synergies will help drive top-line growth."
    ),
    Message(
        role="system",
        name="example_assistant",
        content="Things working well together will increase revenue.",
    ),
    Message(
        role="system",
        name="example_user",
        content="Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    ),
    Message(
        role="system",
        name="example_assistant",
        content="Let's talk later when we're less busy about how to do better.",
    ),
    Message.user(
        "This late pivot means we don't have time to boil the ocean for the client deliverable."
    ),
]
COOKBOOK_TOOL_MESSAGES = [
    Message.system("You are a helpful assistant that can answer to questions about the weather."),
    Message.user("What's the weather like in San Francisco?"),
]


@pytest.mark.parametrize(
    ("model", "messages", "tools", "reported"),
    [
        ("gpt-4", COOKBOOK_MESSAGES, [], 129),
        ("gpt-3.5-turbo", COOKBOOK_MESSAGES, [], 129),
        ("gpt-4o", COOKBOOK_MESSAGES, [], 124),
        ("gpt-4o-mini", COOKBOOK_MESSAGES, [], 124),
        ("gpt-4", COOKBOOK_TOOL_MESSAGES, [WEATHER], 105),
        ("gpt-4o", COOKBOOK_TOOL_MESSAGES, [WEATHER], 101),
    ],
)
def test_count_input_tokens_matches_the_reported_usage(
    bpe_openai: Any, model: str, messages: list[Message], tools: list[ToolSpec], reported: int
) -> None:
    """The exact request count equals the prompt_tokens OpenAI reported for the same request."""
    request = ChatRequest(model=model, messages=messages, tools=tools)
    assert count_input_tokens(request) == reported
    assert reported <= estimate_input_tokens(request) <= 1.5 * reported  # the estimate errs high


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"min_ratio": 0.0},
        {"min_ratio": 1.5},
        {"max_ratio": 0.9},
        {"max_ratio": math.inf},
        {"min_estimate": 0},
    ],
)
def test_calibration_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    """alpha in (0, 1], a finite positive ratio range holding 1, min_estimate >= 1."""
    with pytest.raises(ValueError):
        TokenCalibration(**kwargs)


def test_calibration_scenario() -> None:
    """The first samples are averaged, then an EWMA; odd samples are clamped or ignored."""
    c = TokenCalibration(alpha=0.25, min_ratio=0.5, max_ratio=2.0, min_estimate=10)
    assert (c.ratio("a"), c.scale("a", 100)) == (1.0, 100)
    assert c.observe("a", 100, 150) == 1.5  # first sample: taken as is
    assert c.observe("a", 100, 130) == pytest.approx(1.4)  # mean of two
    assert c.observe("a", 9, 900) == pytest.approx(1.4)  # estimate too small: ignored
    assert c.observe("a", 100, 0) == pytest.approx(1.4)  # no usage reported: ignored
    c.observe("a", 100, 100)
    c.observe("a", 100, 100)  # n = 4: the weight is now alpha
    assert c.ratio("a") == pytest.approx(1.2)
    assert c.observe("a", 100, 10_000) == pytest.approx(1.2 + 0.25 * (2.0 - 1.2))  # clamped to 2
    assert c.samples("a") == 5
    assert c.scale("a", 100) == 140
    assert (c.ratio("b"), c.scale("b", 77), c.samples("b")) == (1.0, 77, 0)  # keys are apart
    snapshot = c.ratios()
    snapshot["a"] = 3.0
    assert c.ratio("a") == pytest.approx(1.4)  # the snapshot is a copy
    assert "a=1.400" in repr(c)


observations = st.lists(
    st.tuples(st.sampled_from("ab"), st.integers(0, 10_000), st.integers(-5, 100_000)), max_size=40
)


@given(observations, st.floats(0.01, 1.0))
def test_calibration_ratio_stays_in_range(obs: list[tuple[str, int, int]], alpha: float) -> None:
    """Whatever is observed, every ratio stays within [min_ratio, max_ratio]."""
    c = TokenCalibration(alpha=alpha, min_ratio=0.5, max_ratio=3.0)
    for key, estimated, actual in obs:
        assert 0.5 <= c.observe(key, estimated, actual) <= 3.0
    assert all(0.5 <= r <= 3.0 for r in c.ratios().values())


@given(st.floats(0.25, 4.0), st.integers(1, 30), st.integers(32, 100_000))
def test_calibration_learns_a_constant_ratio_exactly(r: float, n: int, estimated: int) -> None:
    """n identical samples give exactly their (clamped) ratio, however small alpha is."""
    c = TokenCalibration(alpha=0.01)
    actual = round(estimated * r)
    for _ in range(n):
        c.observe("k", estimated, actual)
    assert c.ratio("k") == pytest.approx(min(4.0, max(0.25, actual / estimated)))


@given(observations, st.integers(0, 10_000), st.integers(0, 10_000))
def test_calibration_scale_is_monotone(obs: list[tuple[str, int, int]], x: int, y: int) -> None:
    """A larger estimate never scales to a smaller one, and scaling rounds up."""
    c = TokenCalibration()
    for key, estimated, actual in obs:
        c.observe(key, estimated, actual)
    low, high = sorted((x, y))
    assert c.scale("a", low) <= c.scale("a", high)
    assert c.scale("a", high) >= high * c.ratio("a") - 1e-6


# --------------------------------------------------------------------------- measuring


def measure() -> None:
    """Print the estimate against the stored exact counts, per sample and per kind."""
    print(
        f"{'sample':22} {'kind':12} {'chars':>6} {'est':>5} {'cl100k':>7} {'o200k':>6}  est/cl  est/o"
    )
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for s in CORPUS:
        est = estimate_text_tokens(s["text"])
        cl, o = ratio(s, "cl100k_base"), ratio(s, "o200k_base")
        by_kind.setdefault(s["kind"], []).append((cl, o))
        print(
            f"{s['name']:22} {s['kind']:12} {len(s['text']):>6} {est:>5} "
            f"{s['cl100k_base']:>7} {s['o200k_base']:>6}  {cl:6.2f} {o:6.2f}"
        )
    print(f"\n{'kind':12} {'est/cl100k':>14} {'est/o200k':>14}")
    for kind, rs in by_kind.items():
        cls, os_ = [r[0] for r in rs], [r[1] for r in rs]
        print(f"{kind:12} {min(cls):6.2f}..{max(cls):<6.2f} {min(os_):6.2f}..{max(os_):<6.2f}")


if __name__ == "__main__":
    if "--measure" in sys.argv:
        measure()
