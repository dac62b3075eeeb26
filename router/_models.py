"""Built-in model data: context windows, prices and capabilities, from a shipped file.

The table (``router/data/models.toml``) is read once, on first use, so importing the
router stays fast.  Every entry names the vendor page its prices come from and the date
they were read (``as_of``); your config's ``[models]`` overrides any field.

Synopsis::

    card = model_card("gpt-4o-mini")           # aliases and dated ids resolve too
    card.input_price, card.context_window      # 0.15, 128000
    cheapest(tools=True, vision=True).id       # the cheapest model able to do both
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib import resources

import msgspec

__all__ = ["ModelCard", "cheapest", "model_card", "model_cards"]


class ModelCard(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What is known about one model: where it runs, its window, prices and abilities.

    Prices are US dollars per million tokens; ``as_of`` and ``source`` say where and
    when they were read.
    """

    id: str = ""
    kind: str
    aliases: list[str] = msgspec.field(default_factory=list)
    context_window: int | None = None
    max_output_tokens: int | None = None
    input_price: float | None = None
    output_price: float | None = None
    cached_input_price: float | None = None
    chat: bool = True
    tools: bool = True
    vision: bool = True
    structured_output: bool = True
    embeddings: bool = False
    as_of: str
    source: str


class _Table(msgspec.Struct, forbid_unknown_fields=True):
    models: dict[str, ModelCard]


@cache
def _table() -> dict[str, ModelCard]:
    text = resources.files("router").joinpath("data/models.toml").read_text(encoding="utf-8")
    raw = msgspec.toml.decode(text, type=_Table).models
    table: dict[str, ModelCard] = {}
    for key, card in raw.items():
        card = msgspec.structs.replace(card, id=key)
        for name in (key, *card.aliases):
            table[name] = card
    return table


def model_cards() -> dict[str, ModelCard]:
    """Every built-in model by its id (aliases not repeated), in the file's order."""
    seen: dict[str, ModelCard] = {}
    for card in _table().values():
        seen.setdefault(card.id, card)
    return seen


def model_card(model: str) -> ModelCard | None:
    """The built-in card of ``model`` (an id, an alias, or ``provider:model``), if any.

    Example::

        >>> model_card("claude-3-5-haiku-20241022").id
        'claude-3-5-haiku-latest'
    """
    table = _table()
    card = table.get(model)
    if card is None and ":" in model:
        card = table.get(model.partition(":")[2])
    return card


def cheapest(
    *,
    tools: bool = False,
    vision: bool = False,
    structured_output: bool = False,
    embeddings: bool = False,
    input_tokens: int = 1000,
    output_tokens: int = 500,
    kinds: Iterable[str] | None = None,
) -> ModelCard:
    """The cheapest built-in model that can do what is asked, for a request of that size.

    Cost is ``(input_tokens · input_price + output_tokens · output_price) / 10⁶``; ties go
    to the larger context window.  ``kinds`` limits the search to those provider kinds
    (``["openai", "anthropic"]``).

    Raises:
        LookupError: no model can.

    Example::

        cheapest(tools=True, vision=True, kinds=["openai", "anthropic"]).id
    """
    allowed = None if kinds is None else set(kinds)
    best: tuple[float, int, ModelCard] | None = None
    for card in model_cards().values():
        if allowed is not None and card.kind not in allowed:
            continue
        if embeddings != card.embeddings or (not embeddings and not card.chat):
            continue
        if (tools and not card.tools) or (vision and not card.vision):
            continue
        if structured_output and not card.structured_output:
            continue
        if card.input_price is None or card.output_price is None:
            continue
        window = card.context_window or 0
        if card.context_window is not None and input_tokens + output_tokens > window:
            continue
        cost = (input_tokens * card.input_price + output_tokens * card.output_price) / 1e6
        if best is None or (cost, -window) < (best[0], -best[1]):
            best = (cost, window, card)
    if best is None:
        raise LookupError("no built-in model can do all of that")
    return best[2]
