"""Session-wide clean-up shared by the test modules."""

from __future__ import annotations

import pytest

from tests import _cli_runner


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The warm CLI runner (started by the first CLI test, if any) exits with the session."""
    _cli_runner.close()
