"""pyproject.toml declares every third-party package that router/ and providers/ import.

A package that is imported when the library is (``import router``, ``providers``,
``providers.testing``, ``router.testing``, the ``llm-router`` console script's module)
needs a runtime dependency: ``pip install .`` must give a working ``llm-router demo`` and
``llm-router upstream``.  Any other import (inside a function, or in a module that is
only loaded when its feature is configured, such as metrics and tracing) may be an
optional extra instead.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"router", "providers", "tests"}


def _requirement_name(requirement: str) -> str:
    """``"trio-util>=0.8"`` -> ``"trio-util"``, normalised as PEP 503 says."""
    name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    """(runtime dependencies, every optional dependency), as normalised names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    optional = {
        _requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra
    }
    return runtime, optional


def _imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(top-level module, line) for each absolute import in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.partition(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.partition(".")[0], node.lineno


@functools.cache
def _loaded_on_import() -> frozenset[str]:
    """Top-level modules in ``sys.modules`` once the library and its CLI are imported."""
    return frozenset(m.partition(".")[0] for m in _modules_on_import())


@functools.cache
def _modules_on_import() -> frozenset[str]:
    """Every module in ``sys.modules`` once the library and its CLI are imported."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    scripts = [target.partition(":")[0] for target in project["project"]["scripts"].values()]
    modules = [*packages, "router.testing", *scripts]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return frozenset(result.stdout.split())


@functools.cache
def _installed() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    """The distributions that may provide ``module`` (installed, or named like it)."""
    installed = _installed().get(module, [])
    guessed = re.sub(r"[-_.]+", "-", module).lower()
    return {re.sub(r"[-_.]+", "-", d).lower() for d in installed} | {guessed}


def _third_party_imports() -> list[tuple[str, str]]:
    """(file:line, module) for every third-party import in router/ and providers/."""
    found: list[tuple[str, str]] = []
    for package in ("router", "providers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for module, line in _imports(tree):
                if module in sys.stdlib_module_names or module in FIRST_PARTY:
                    continue
                found.append((f"{path.relative_to(ROOT)}:{line}", module))
    return found


def _is_declared(module: str, declared: set[str]) -> bool:
    # "opentelemetry" is provided by opentelemetry-api (and -sdk): a prefix match.
    candidates = _distributions(module)
    return any(d == c or d.startswith(c + "-") for d in declared for c in candidates)


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """Each package router/ and providers/ import that is loaded with the library is a
    runtime dependency of pyproject.toml; every other one is at least in an extra."""
    runtime, optional = _declared()
    imports = _third_party_imports()
    assert {"trio", "httpx", "msgspec"} <= {module for _, module in imports}
    loaded = _loaded_on_import()
    assert {"router", "providers", "trio"} <= loaded
    ours_loaded = _modules_on_import()
    assert {"router._policy", "providers._mock"} <= ours_loaded
    missing: list[str] = []
    for where, module in imports:
        # A module of ours loaded only on demand (the pytest plugin, the hypothesis
        # harness) may import what an extra provides.
        ours = where.partition(":")[0].removesuffix(".py").replace("/", ".")
        ours = ours.removesuffix(".__init__")
        if module in loaded and ours in ours_loaded and not _is_declared(module, runtime):
            missing.append(f"{where}: {module!r} is loaded with the library, not a dependency")
        elif not _is_declared(module, runtime | optional):
            missing.append(f"{where}: {module!r} is neither a dependency nor in an extra")
    assert not missing, "\n".join(missing)


def test_the_fake_upstream_needs_only_the_runtime_dependencies() -> None:
    """h11 (the fake upstream's HTTP/1.1 server, behind ``llm-router upstream`` and
    ``demo``) is imported with ``providers.testing``, so it is a runtime dependency."""
    runtime, _ = _declared()
    assert "h11" in {module for _, module in _third_party_imports()}
    assert "h11" in _loaded_on_import()
    assert _is_declared("h11", runtime)


def test_every_package_directory_is_packaged() -> None:
    """Every directory of router/ and providers/ with an ``__init__.py`` is listed in
    ``[tool.setuptools] packages``, so ``pip install .`` ships all of it."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for package in ("router", "providers")
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert on_disk <= listed, sorted(on_disk - listed)
