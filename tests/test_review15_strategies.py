"""Review of issue 15's import-path strategies: a module that exits when imported is a
ConfigError at the route's path; Ctrl-C while importing one, or inside one, still ends
the program."""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from providers import ConfigError
from router import ChatRequest, Message, open_router
from router.config import decode_config
from router.policy import Candidate, Needs, Plan, TargetHealth
from router.testing import MockProvider, MockResponse, harness_config

Health = Mapping[str, TargetHealth]


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Modules in tmp_path (on sys.path) that end the program when imported."""
    (tmp_path / "script_policies.py").write_text(
        "import argparse\n"
        "argparse.ArgumentParser(prog='mine').parse_args(['--bogus'])\n"
        "def strategy(candidates, needs, health, now, rng): ...\n"
    )
    (tmp_path / "interrupted_policies.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    for name in ("script_policies", "interrupted_policies"):
        sys.modules.pop(name, None)


def config_text(strategy: str) -> str:
    return (
        f'[providers.a]\nkind = "mock"\n[routes.fast]\ntargets = ["a:m"]\nstrategy = "{strategy}"\n'
    )


def test_a_module_that_exits_on_import_is_a_config_error(
    modules: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A strategy module that calls sys.exit() when imported (a script parsing its
    arguments) is a ConfigError at ``$.routes.fast.strategy`` naming SystemExit, not
    SystemExit out of the config loader (which would end the user's program)."""
    with pytest.raises(ConfigError) as info:
        decode_config(config_text("script_policies:strategy"), source="router.toml")
    assert info.value.path == "$.routes.fast.strategy"
    assert "importing 'script_policies' raised SystemExit: 2" in str(info.value)
    capsys.readouterr()  # argparse's usage message, printed by the module


def test_ctrl_c_while_importing_a_strategy_is_not_swallowed(modules: None) -> None:
    """KeyboardInterrupt raised by a strategy module's import reaches the caller."""
    with pytest.raises(KeyboardInterrupt):
        decode_config(config_text("interrupted_policies:strategy"), source="router.toml")


def interrupted(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Ctrl-C arrives while the strategy runs."""
    raise KeyboardInterrupt


async def test_ctrl_c_inside_a_strategy_reaches_the_caller_uncounted() -> None:
    """KeyboardInterrupt raised inside a strategy of the user's is not turned into
    NoRoute nor counted as a strategy error: it reaches the caller of complete()."""
    config = harness_config(["a", "b"], strategy=interrupted)
    mocks = {n: MockProvider(name=n, default=MockResponse(text="ok")) for n in config.providers}
    async with open_router(config, providers=mocks) as router:
        with pytest.raises(KeyboardInterrupt):
            await router.complete(ChatRequest(model="policy", messages=[Message.user("hi")]))
        assert router.statistics().strategy_errors == 0
