"""The cost figures in the docs come from one page, each beside the command behind it.

docs/benchmarks.md is the one source: every other page (README included) that gives a
figure in microseconds gives one that benchmarks.md gives too, in a paragraph that links
there; and every section of benchmarks.md with such a figure names the command that
produced it, or says how it was measured.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A figure: a number before "µs" (U+00B5) or "us", as "~20 µs", "+72 µs", "27.3 µs".
FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s?(?:µs|μs|us)\b")
COMMANDS = ("`llm-router bench", "`python -m timeit", "py-spy")


def figures(text: str) -> set[str]:
    """The microsecond figures in ``text``, as numbers ("20", "27.3")."""
    return {m.group(1) for m in FIGURE.finditer(text)}


def paragraphs(text: str) -> list[str]:
    """``text`` split at blank lines (a table is one paragraph)."""
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def sections(text: str) -> list[str]:
    """``text`` split at its headings, each section with its heading."""
    return re.split(r"(?m)^(?=#{2,3} )", text)


@pytest.mark.parametrize("page", [p for p in PAGES if p != BENCHMARKS], ids=lambda p: p.name)
def test_figures_elsewhere_are_the_benchmarks_pages_and_link_to_it(page: Path) -> None:
    """A page's µs figure is one benchmarks.md gives, in a paragraph linking to it."""
    source = figures(BENCHMARKS.read_text(encoding="utf-8"))
    for paragraph in paragraphs(page.read_text(encoding="utf-8")):
        found = figures(paragraph)
        if not found:
            continue
        assert found <= source, f"{page.name}: {sorted(found - source)} µs not in benchmarks.md"
        assert "benchmarks.md" in paragraph, (
            f"{page.name}: no link to benchmarks.md in\n{paragraph}"
        )


def test_every_figure_on_the_benchmarks_page_names_its_command() -> None:
    """Each section of benchmarks.md with a µs figure names the command behind it."""
    for section in sections(BENCHMARKS.read_text(encoding="utf-8")):
        if figures(section):
            heading = section.splitlines()[0]
            assert any(c in section for c in COMMANDS), f"no command in {heading!r}"


def test_the_routers_cost_is_given_once() -> None:
    """The page states the router's own cost in one sentence, the one the docs refer to."""
    text = BENCHMARKS.read_text(encoding="utf-8")
    assert '"router adds" in what `llm-router bench\noverhead` prints: ~20 µs' in text
    assert "The router adds **~20 µs per request at p50** in-process" in text
