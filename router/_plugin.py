"""The pytest plugin (entry point ``pytest11``: ``trio-llm-router``): opt-in fixtures.

Nothing happens to a test suite unless a test asks for one of these fixtures:

``mock_router``
    A router on virtual time (``MockClock(autojump_threshold=0)``) over scripted
    :class:`~providers.testing.MockProvider` targets, open for the test.  By default two
    providers, ``"primary"`` and ``"backup"``, answer ``"ok"`` after 1 s; route
    ``"policy"`` tries them in that order.  Configure it with the marker
    ``@pytest.mark.mock_router(providers=[...], strategy=..., budget=..., config=...)``
    (``config``, a full :class:`~router.config.RouterConfig`, replaces the others).
    ``mock_router.provider(name)`` is that provider's MockProvider, to re-script.  A
    test that asks for it (an ``async def``) runs as a trio test (pytest-trio) on that
    clock, or on the clock fixture it asks for itself (``autojump_clock``,
    ``mock_clock``; a hypothesis ``@given`` test must ask for one).  A sync test, or a
    project without pytest-trio, gets a setup error saying so.
``scripted_provider``
    A factory: ``scripted_provider(*script, name="mock", latency=1.0)`` is a
    MockProvider that answers ``script`` in order, then ``"ok"`` after ``latency``.

This module imports only pytest at load; the router and hypothesis are imported when a
fixture is used.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from trio.abc import Clock

    from providers.testing import MockProvider

    from ._config import RouterConfig
    from ._router import Router

__all__ = ["mock_router", "pytest_collection_modifyitems", "pytest_configure", "scripted_provider"]

_MARKER = (
    "mock_router(providers=None, strategy='fallback', budget=None, config=None): "
    "configure the mock_router fixture (trio-llm-router's pytest plugin)"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``mock_router`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line("markers", _MARKER)


def _has_pytest_trio(config: pytest.Config) -> bool:
    """Whether pytest-trio is loaded (its entry point's name, or its module's)."""
    manager = config.pluginmanager
    return manager.hasplugin("trio") or manager.hasplugin("pytest_trio.plugin")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run every test that asks for ``mock_router`` as a trio test on a ``MockClock``
    (without pytest-trio, the fixture's setup says it is needed)."""
    if not _has_pytest_trio(config):
        return  # no `trio` marker to add (it would be an unknown mark)
    for item in items:
        if "mock_router" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.trio(run=_run_on_virtual_time))


def _run_on_virtual_time(
    fn: Callable[[], Awaitable[object]], *, clock: Clock | None = None, **kwargs: Any
) -> object:
    """pytest-trio's ``run`` for ``mock_router`` tests: ``trio.run`` on the test's own
    clock, or on ``MockClock(autojump_threshold=0)`` when it asked for none."""
    import trio
    import trio.testing

    if clock is None:
        clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(fn, clock=clock, **kwargs)


@pytest.fixture
def scripted_provider() -> Callable[..., MockProvider]:
    """A factory of MockProviders: ``script`` answered in order, then ``"ok"``."""
    from providers.testing import MockProvider, MockResponse

    def make(*script: Any, name: str = "mock", latency: float = 1.0) -> MockProvider:
        return MockProvider(
            responses=script, default=MockResponse(text="ok", latency=latency), name=name
        )

    return make


@pytest.fixture
def _trio_llm_router_config(request: pytest.FixtureRequest) -> RouterConfig:
    """The ``mock_router`` marker's configuration, checked before the test runs."""
    from ._config import RouterConfig
    from ._scripted import harness_config

    if not _has_pytest_trio(request.config):
        raise RuntimeError(
            "the mock_router fixture runs the test with pytest-trio, which is not loaded: "
            "install it (pip install pytest-trio, or this package's `test` extra)"
        )
    function = getattr(request.node, "function", None)
    # A hypothesis test: the async function is the one hypothesis wraps.
    function = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    if function is not None and not inspect.iscoroutinefunction(function):
        raise TypeError(
            f"{request.node.name} asks for mock_router, a trio fixture: declare it "
            "`async def` (it runs on trio, on virtual time)"
        )
    marker = request.node.get_closest_marker("mock_router")
    if marker is None:
        return harness_config(["primary", "backup"])
    if marker.args:
        raise TypeError("@pytest.mark.mock_router takes keyword arguments only")
    options: dict[str, Any] = dict(marker.kwargs)
    unknown = sorted(set(options) - {"providers", "strategy", "budget", "config"})
    if unknown:
        raise TypeError(
            f"@pytest.mark.mock_router got unknown arguments {unknown}; "
            "it takes providers, strategy, budget, config"
        )
    config = options.get("config")
    if config is None:
        return harness_config(
            options.get("providers", ("primary", "backup")),
            strategy=options.get("strategy", "fallback"),
            budget=options.get("budget"),
        )
    others = sorted(set(options) - {"config"})
    if others:
        raise TypeError(
            f"@pytest.mark.mock_router(config=...) replaces providers, strategy and "
            f"budget: give them in the RouterConfig, not also as {others}"
        )
    if not isinstance(config, RouterConfig):
        raise TypeError(
            f"@pytest.mark.mock_router(config=...) takes a RouterConfig, "
            f"not {type(config).__name__}"
        )
    return config


@pytest.fixture
async def mock_router(_trio_llm_router_config: RouterConfig) -> AsyncIterator[Router]:
    """A router on virtual time over scripted providers (see the module docstring)."""
    import trio
    import trio.testing

    from providers.testing import MockProvider, MockResponse

    from ._router import open_router

    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        raise RuntimeError(
            "mock_router runs on virtual time: this test's trio.run has no MockClock "
            "(a trio marker with its own run= replaced the plugin's, or the test is a "
            "hypothesis @given test, which pytest-trio runs with plain trio.run: ask "
            "for the autojump_clock fixture too)"
        )
    config = _trio_llm_router_config
    mocks = {
        name: MockProvider(name=name, default=MockResponse(text="ok", latency=1.0))
        for name in config.providers
    }
    async with open_router(config, providers=mocks, seed=0) as router:
        yield router
