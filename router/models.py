"""Built-in model data: context windows, prices and capabilities of known models.

The table ships with the package and is read once, on first use; a config's ``[models]``
overrides any field.

Example::

    from router.models import cheapest, model_card

    model_card("gpt-4o-mini").context_window   # 128000
    cheapest(tools=True, vision=True).id       # the cheapest model able to do both
"""

from ._models import ModelCard as ModelCard
from ._models import cheapest as cheapest
from ._models import model_card as model_card

__all__ = [
    "cheapest",
    "model_card",
    "ModelCard",
]
