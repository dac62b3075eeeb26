"""The tools package: apart from the core, on the public API, one percentile, one table.

The tools (``llm-router``'s commands, the demo, the simulator, the benchmarks, chaos) live
in ``router/_tools/``; the core never imports them, and they print every figure with
the one nearest-rank :func:`percentile` and every table with the one :func:`table_lines`.
"""

from __future__ import annotations

import ast
import math
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import router
from router._tools._format import percentile, table_lines

ROUTER = Path(router.__file__).parent
TOOLS = ROUTER / "_tools"

#: The internals the tools may import, by module: everything else comes from the public
#: API (``router`` and its public submodules, ``providers``, ``providers.testing``); each
#: internal is explained where the tool imports it.
ALLOWED_INTERNALS = {
    "router._config": {"model_info"},
    "router._health": {"HealthStatus"},
    "router._models": {"model_cards"},
    "router._providers": {"build_provider"},
    "router._validation": {"Problem", "validate"},
    "providers._errors": {"scrub"},
    # the gateway reads an OpenAI tool call's argument string as the adapters do
    "providers._types": {"parse_tool_arguments"},
    "providers.testing._hostile": {"HOSTILE_FAULTS", "HostileServer", "open_hostile_server"},
    # gateway keys: a key's rpm/tpm and spend cap are the router's own token bucket and
    # spend-cap arithmetic (pure, time passed in), not a second copy of them
    "router._limiter": {"TokenBucket"},
    "router._budget": {"Budget", "period_seconds"},
    # gateway keys with [shared]: the key's limits on Redis, which the router makes and
    # runs (types only, for annotations)
    "router._shared._client": {"SharedClient"},
    "router._shared._keys": {"SharedKeyLimits"},
}


def tool_modules() -> list[str]:
    """Every module of the tools package, by its full name."""
    import router._tools

    names = [f"router._tools.{m.name}" for m in pkgutil.iter_modules(router._tools.__path__)]
    assert len(names) >= 7, names  # cli, commands, demo, simulate, bench, chaos, format
    return sorted(names)


def imports_of(path: Path, package: str) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from X import name`` in a file, wherever it stands,
    relative imports resolved against ``package``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


# --------------------------------------------------------------------------- the layout


def test_importing_router_imports_no_tool() -> None:
    """``import router`` (the core) loads none of the tools' modules, not even the package,
    nor the gateway's public module (``router.gateway`` is imported only when asked for)."""
    code = (
        "import sys, router\n"
        "print(sorted(m for m in sys.modules if m.startswith(('router._tools', 'router.gateway'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert tool_modules()  # the tools are there to be left alone
    assert result.stdout.strip() == "[]"


def test_no_core_module_imports_a_tool() -> None:
    """No module of the core names the tools package in any import, even inside a function;
    only ``router.testing`` (the simulator), ``router.gateway`` (the gateway's public face,
    never imported by ``import router``) and ``python -m router`` reach into it."""
    offenders = []
    for path in sorted(ROUTER.glob("*.py")):
        if path.name in ("testing.py", "gateway.py", "__main__.py"):
            continue
        for module, _ in imports_of(path, "router"):
            if module.startswith("router._tools"):
                offenders.append(f"{path.name} imports {module}")
    assert offenders == []


def test_the_tools_use_the_public_api_and_only_the_listed_internals() -> None:
    """Every private name a tool imports is one of :data:`ALLOWED_INTERNALS`; the router
    itself (``Router``, ``open_router``) comes from ``router``, never ``router._router``."""
    extra = []
    for name in tool_modules():
        path = TOOLS / f"{name.rpartition('.')[2]}.py"
        for module, imported in imports_of(path, "router._tools"):
            ours = module.split(".")[0] in ("router", "providers")
            private = any(part.startswith("_") for part in module.split("."))
            if not ours or not private or module.startswith("router._tools"):
                continue
            if imported not in ALLOWED_INTERNALS.get(module, set()):
                extra.append(f"{name}: {module}.{imported}")
    assert extra == []


def test_python_dash_m_router_is_the_command_line() -> None:
    """``python -m router`` runs the same ``main`` as the ``llm-router`` script."""
    result = subprocess.run(
        [sys.executable, "-m", "router", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: llm-router")


def test_one_percentile_and_one_table_renderer() -> None:
    """No tool defines a percentile or a table of its own (by name, or a nearest-rank
    ``math.ceil(q * len(values))``): they all use :mod:`router._tools._format`."""
    own = []
    for path in sorted(TOOLS.glob("_*.py")):
        if path.name in ("__init__.py", "_format.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (
                "percentile" in node.name or "table" in node.name
            ):
                own.append(f"{path.name}: def {node.name}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "ceil"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "math"
                and any(
                    isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "len"
                    for arg in node.args
                    for n in ast.walk(arg)
                )
            ):
                # a rank: ceil(q * len(values)); rounding a wait up (retry-after) is not one
                own.append(f"{path.name}:{node.lineno}: math.ceil")
    assert own == []


# --------------------------------------------------------------------------- percentile


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=60),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_percentile_is_the_smallest_value_with_q_of_the_values_at_or_below_it(
    values: list[float], q: float
) -> None:
    """Invariant (nearest rank): the result is one of the values, at least ``q * n`` of
    the values are at or below it, and fewer than that are at or below any smaller value."""
    n = len(values)
    v = percentile(values, q)
    assert v in values
    assert sum(x <= v for x in values) >= q * n
    for smaller in {x for x in values if x < v}:
        assert sum(x <= smaller for x in values) < q * n


@given(st.lists(st.floats(allow_nan=False), min_size=1, max_size=30), st.floats(0.0, 1.0))
def test_percentile_ignores_the_order_of_its_input(values: list[float], q: float) -> None:
    """Invariant: shuffling (here, reversing or sorting) the values changes nothing."""
    assert percentile(values, q) == percentile(values[::-1], q) == percentile(sorted(values), q)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0, 1.0, 2.0], 0.0, 1.0),
        ([3.0, 1.0, 2.0], 1.0, 3.0),
        ([3.0, 1.0, 2.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),  # rank ceil(2) = 2: no interpolation
        ([float(i) for i in range(1, 101)], 0.95, 95.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(1, 1001)], 0.999, 999.0),
        ([5.0], 0.999, 5.0),
    ],
)
def test_percentile_scenarios(values: list[float], q: float, expected: float) -> None:
    """Known nearest-rank answers, the ends of ``[0, 1]`` included."""
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_nan_and_q_must_be_a_fraction() -> None:
    """No values: ``nan``; ``q`` outside ``[0, 1]`` (or ``nan``): a ValueError naming it."""
    assert math.isnan(percentile([], 0.5))
    for q in (-0.01, 1.5, math.nan, 99.0):
        with pytest.raises(ValueError, match="q must be in"):
            percentile([1.0], q)


# --------------------------------------------------------------------------- table


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({}, ["NAME   N   UNIT", "alpha  7   ms", "b      12"], id="plain"),
        pytest.param({"right": {1}}, ["NAME    N  UNIT", "alpha   7  ms", "b      12"], id="right"),
        pytest.param(
            {"right": {1}, "sep": " ", "indent": "> "},
            ["> NAME   N UNIT", "> alpha  7 ms", "> b     12"],
            id="sep-indent",
        ),
        pytest.param(
            {"widths": [7, 4], "right": {1}},
            ["NAME        N  UNIT", "alpha       7  ms", "b          12"],
            id="min-widths",
        ),
        pytest.param(
            {"rule": True, "strip": False},
            ["NAME   N   UNIT", "---------------", "alpha  7   ms  ", "b      12      "],
            id="rule-full-width",
        ),
    ],
)
def test_table_lines_pads_aligns_and_strips(kwargs: dict[str, object], expected: list[str]) -> None:
    """Each column as wide as its widest cell (or its minimum); left or right aligned;
    the separator, the indent, the rule under the header and trailing spaces as asked."""
    rows = [["NAME", "N", "UNIT"], ["alpha", "7", "ms"], ["b", "12", ""]]
    assert table_lines(rows, **kwargs) == expected  # type: ignore[arg-type]


def test_table_lines_of_nothing_and_of_ragged_rows() -> None:
    """No rows: no lines; rows of different lengths: a ValueError, not a silent shift."""
    assert table_lines([]) == []
    with pytest.raises(ValueError, match="needs 2 cells"):
        table_lines([["a", "b"], ["c"]])


def test_a_column_widens_for_a_wide_cell_and_stays_aligned() -> None:
    """A figure wider than its column's minimum widens the whole column (a hand-padded
    f-string shifted only that row)."""
    lines = table_lines([["p", "x"], ["a", "1.0s"], ["b", "12345.000s"]], right={1}, widths=[1, 5])
    assert lines == ["p           x", "a        1.0s", "b  12345.000s"]
    assert len({len(line) for line in lines}) == 1
