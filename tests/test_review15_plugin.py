"""Review of issue 15's pytest plugin and harness_config, as a user's project meets them:
without pytest-trio, in a sync test, with a marker given a str for its providers."""

from __future__ import annotations

import pytest

from router.testing import harness_config

pytest_plugins = ["pytester"]

ASYNC_TEST = """
import trio

async def test_sleeps(mock_router):
    await trio.sleep(5)
    assert trio.current_time() == 5
"""


def run_user_file(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "router._plugin", "-p", "no:cacheprovider", *args)


def test_without_pytest_trio_the_setup_error_says_it_is_needed(pytester: pytest.Pytester) -> None:
    """A project without pytest-trio (here: disabled) gets one setup error saying
    mock_router needs it, not an unknown-mark warning (an error under ``-W error``) and
    pytest's internal AssertionError."""
    result = run_user_file(pytester, ASYNC_TEST, "-p", "no:trio", "-W", "error")
    result.assert_outcomes(errors=1)
    out = str(result.stdout)
    assert "RuntimeError: the mock_router fixture runs the test with pytest-trio" in out
    assert "PytestUnknownMarkWarning" not in out


def test_a_sync_test_asking_for_mock_router_is_told_to_be_async(
    pytester: pytest.Pytester,
) -> None:
    """A plain ``def`` test that asks for mock_router errors at setup saying to declare
    it ``async def`` (not pytest-trio's "marked trio" about a marker the user never wrote)."""
    source = """
def test_sync(mock_router):
    pass
"""
    result = run_user_file(pytester, source)
    result.assert_outcomes(errors=1)
    assert "test_sync asks for mock_router, a trio fixture: declare it `async def`" in str(
        result.stdout
    )


def test_the_marker_refuses_a_str_of_providers(pytester: pytest.Pytester) -> None:
    """``providers="alpha"`` is a setup error naming the str, not five providers
    ``a, l, p, h, a`` silently."""
    source = """
import pytest

@pytest.mark.mock_router(providers="alpha")
async def test_x(mock_router):
    pass
"""
    result = run_user_file(pytester, source)
    result.assert_outcomes(errors=1)
    assert "harness_config takes a sequence of provider names, not the str 'alpha'" in str(
        result.stdout
    )


def test_harness_config_refuses_bad_provider_names() -> None:
    """harness_config (RouterMachine's default config) refuses a str for its names, a
    name that is not a non-empty str, and a name given twice."""
    with pytest.raises(TypeError, match="not the str 'ab'"):
        harness_config("ab")
    with pytest.raises(TypeError, match="non-empty str, not ''"):
        harness_config(["a", ""])
    with pytest.raises(ValueError, match=r"given twice: \['a'\]"):
        harness_config(["a", "b", "a"])


def test_an_async_hypothesis_test_with_mock_router_and_autojump_clock_runs(
    pytester: pytest.Pytester,
) -> None:
    """A hypothesis ``@given`` async test asking for mock_router and autojump_clock runs
    on virtual time (the sync-test check looks through hypothesis's wrapper)."""
    source = """
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 9))
async def test_given(mock_router, autojump_clock, n):
    start = trio.current_time()
    await trio.sleep(n)
    assert trio.current_time() - start == n
"""
    run_user_file(pytester, source).assert_outcomes(passed=1)


def test_the_marker_refuses_config_beside_the_arguments_it_replaces(
    pytester: pytest.Pytester,
) -> None:
    """``config=`` with ``providers=`` beside it is a setup error naming the argument
    the config would silently override."""
    source = """
import pytest
from router.testing import harness_config

@pytest.mark.mock_router(config=harness_config(["x"]), providers=["y"])
async def test_x(mock_router):
    pass
"""
    result = run_user_file(pytester, source)
    result.assert_outcomes(errors=1)
    assert "replaces providers, strategy and budget" in str(result.stdout)
    assert "not also as ['providers']" in str(result.stdout)
