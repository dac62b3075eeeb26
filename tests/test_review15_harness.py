"""Review of issue 15's stateful harness: RouterMachine reports a bad configuration as
open_router does, a ConfigError naming the field's path."""

from __future__ import annotations

import pytest

from providers import ConfigError
from router.testing import RouterMachine


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("nosuchmodule_xyz:f", "no module named 'nosuchmodule_xyz'"),
        ("least_cost", "did you mean 'least-cost'?"),
        ("os:getcwd", "a strategy is called with 5 positional arguments"),
    ],
)
def test_a_bad_strategy_is_a_config_error_at_its_path(strategy: str, message: str) -> None:
    """A subclass naming a strategy that cannot be resolved fails in its constructor
    with the ConfigError at ``$.routes.policy.strategy`` (not a bare ValueError)."""

    class Bad(RouterMachine):
        pass

    Bad.strategy = strategy
    with pytest.raises(ConfigError) as info:
        Bad()
    assert info.value.path == "$.routes.policy.strategy"
    assert message in str(info.value)
