"""The public API: what each module exports, one home per name, nothing private leaking.

Modelled on trio's ``_tests/test_exports.py``.  Implementation lives in ``_private``
modules; a public module's names are its explicit re-exports (``from ._x import Y as
Y``), each documented, each listed in the module's ``__all__`` and in docs/api.md, so a
helper never becomes public by accident.  The rules:

- ``router.__all__`` is small: the names a caller needs for every request (25 to 35);
- every public module (found by walking the packages, not from a list) has an
  ``__all__`` and exports exactly it;
- within a package a public name has one home: no two public modules export it;
- every exported name is documented in the source and listed in docs/api.md under its
  module;
- no private module, and no object a private module does not list in ``__all__``,
  leaks out through a public name.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import subprocess
import sys
import types
import typing
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest

import providers
import providers.testing
import router
import router.testing

OURS = ("router", "providers")
API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def public_modules() -> list[str]:
    """Every importable module of both packages with no ``_private`` part in its name."""
    found = list(OURS)
    for top in OURS:
        package = importlib.import_module(top)
        for info in pkgutil.walk_packages(package.__path__, prefix=top + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                found.append(info.name)
    return sorted(found)


PACKAGES = public_modules()


def public_names(module: types.ModuleType) -> list[str]:
    """Every attribute of ``module`` without a leading underscore.

    Names that are not identifiers are left out: pytest's assertion rewriting adds
    ``@py_builtins`` and ``@pytest_ar`` to every module of a distribution that registers
    a ``pytest11`` plugin, as ours does (``router._plugin``), when pytest imports it.
    """
    return sorted(name for name in dir(module) if not name.startswith("_") and name.isidentifier())


def is_public_submodule(package: types.ModuleType, value: object) -> bool:
    """Whether ``value`` is a public submodule of ``package`` (``router.testing``)."""
    return (
        isinstance(value, types.ModuleType)
        and value.__name__.startswith(package.__name__ + ".")
        and not any(part.startswith("_") for part in value.__name__.split("."))
    )


def source_path(name: str) -> Path:
    """The file module ``name`` is loaded from."""
    spec = importlib.util.find_spec(name)
    assert spec is not None, name
    assert spec.origin is not None, name
    return Path(spec.origin)


def module_ast(name: str) -> ast.Module:
    """The parsed source of module ``name``."""
    return ast.parse(source_path(name).read_text(encoding="utf-8"))


def package_of(name: str) -> str:
    """The package relative imports in module ``name`` are resolved against."""
    module = sys.modules[name]
    return module.__package__ or name.rpartition(".")[0]


def definition(module_name: str, name: str) -> tuple[str, ast.Module, int]:
    """Follow re-exports of ``name`` to the module statement that defines it.

    Returns the defining module's name, its AST, and the index of the defining statement
    in its body.
    """
    tree = module_ast(module_name)
    for index, node in enumerate(tree.body):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = importlib.util.resolve_name(
                        "." * node.level + (node.module or ""), package_of(module_name)
                    )
                    importlib.import_module(source)
                    return definition(source, alias.name)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        elif (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.name == name
        ):
            return module_name, tree, index
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return module_name, tree, index
    raise AssertionError(f"{name} is not defined or imported at the top level of {module_name}")


def explicit_reexports(module_name: str) -> set[str]:
    """Names bound by ``from X import Y as Y`` (the explicit re-export form) in a module,
    at top level or in a top-level ``if`` (``if TYPE_CHECKING:`` beside a module
    ``__getattr__`` that imports the name on first use, as router.testing's
    ``RouterMachine``, which needs hypothesis)."""
    names: set[str] = set()
    body = module_ast(module_name).body
    for node in [*body, *(n for top in body if isinstance(top, ast.If) for n in top.body)]:
        if isinstance(node, ast.ImportFrom):
            names.update(a.name for a in node.names if a.asname == a.name)
    return names


def defined_here(module_name: str) -> set[str]:
    """Names a module defines itself at top level (classes, functions, assignments)."""
    names: set[str] = set()
    for node in module_ast(module_name).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def has_source_doc(module_name: str, tree: ast.Module, index: int) -> bool:
    """A ``#:`` comment right above the statement, or a string literal right after it."""
    if index + 1 < len(tree.body):
        after = tree.body[index + 1]
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
            and after.value.value.strip()
        ):
            return True
    lines = source_path(module_name).read_text(encoding="utf-8").splitlines()
    line = tree.body[index].lineno - 2  # 0-based index of the line above
    return line >= 0 and lines[line].lstrip().startswith("#:")


def exported(package: str) -> list[tuple[str, str]]:
    """``(package, name)`` for every public name of ``package`` that is not a submodule."""
    module = importlib.import_module(package)
    return [
        (package, name)
        for name in public_names(module)
        if not is_public_submodule(module, getattr(module, name))
    ]


ALL_EXPORTS = [pair for package in PACKAGES for pair in exported(package)]


def test_the_public_modules_are_the_documented_families() -> None:
    """The walk finds each documented family (a renamed or private one would drop out)."""
    assert set(PACKAGES) >= {
        "router",
        "router.config",
        "router.errors",
        "router.events",
        "router.gateway",
        "router.models",
        "router.policy",
        "router.stats",
        "router.testing",
        "providers",
        "providers.testing",
    }


def test_router_top_level_is_small() -> None:
    """``router.__all__`` holds the names a caller needs for every request: 25 to 35."""
    assert 25 <= len(router.__all__) <= 35, sorted(router.__all__)
    assert router.__version__, "router.__version__ is set (and kept out of __all__)"
    assert "__version__" not in router.__all__


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_an_explicit_reexport_or_defined_here(package: str) -> None:
    """No public name arrives by accident (a stray ``import trio``, a helper, a star import)."""
    module = importlib.import_module(package)
    intended = explicit_reexports(package) | defined_here(package)
    accidental = [
        name
        for name in public_names(module)
        if name not in intended and not is_public_submodule(module, getattr(module, name))
    ]
    assert accidental == []


@pytest.mark.parametrize("package", PACKAGES)
def test_dunder_all_matches_the_public_names(package: str) -> None:
    """Each public module has ``__all__`` listing exactly its public names: none missing or stale."""
    module = importlib.import_module(package)
    dunder_all = getattr(module, "__all__", None)
    assert dunder_all is not None, f"{package} has no __all__"
    assert len(dunder_all) == len(set(dunder_all)), "duplicates in __all__"
    assert sorted(dunder_all) == [name for p, name in exported(package) if p == package]


@pytest.mark.parametrize("top", OURS)
def test_each_public_name_has_one_home_in_its_package(top: str) -> None:
    """Within a package, no two public modules export the same name or the same object."""
    homes: dict[str, list[str]] = defaultdict(list)
    objects: dict[int, list[str]] = defaultdict(list)
    for package, name in ALL_EXPORTS:
        if package == top or package.startswith(top + "."):
            homes[name].append(package)
            value = getattr(importlib.import_module(package), name)
            if inspect.isclass(value) or inspect.isroutine(value):
                objects[id(value)].append(f"{package}.{name}")
    assert {n: where for n, where in homes.items() if len(where) > 1} == {}
    assert [where for where in objects.values() if len(where) > 1] == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_module_leaks(package: str) -> None:
    """No public name of a public module is a module, except its own public submodules."""
    module = importlib.import_module(package)
    leaked = [
        name
        for name in public_names(module)
        if isinstance(getattr(module, name), types.ModuleType)
        and not is_public_submodule(module, getattr(module, name))
    ]
    assert leaked == []


def api_doc_sections() -> dict[str, set[str]]:
    """docs/api.md: for each ``## module`` section, the names its tables' first column lists."""
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"## ([\w.]+)", line)
        if heading:
            current = sections.setdefault(heading.group(1), set())
        elif current is not None and line.startswith("| ") and not line.startswith("| name "):
            first_column = line.split(" | ")[0]
            current.update(re.findall(r"`(\w+)`", first_column))
    return sections


def test_docs_api_lists_every_export_under_its_module() -> None:
    """docs/api.md has a section per public module listing exactly the names it exports."""
    sections = api_doc_sections()
    assert sorted(sections) == sorted(PACKAGES)
    for package in PACKAGES:
        exported_names = {name for p, name in ALL_EXPORTS if p == package}
        assert sections[package] == exported_names, package


def test_the_error_tree_is_drawn_in_router_errors() -> None:
    """``router.errors`` draws every class it exports in its docstring's tree, and only those."""
    errors = importlib.import_module("router.errors")
    doc = errors.__doc__ or ""
    drawn = set(re.findall(r"^    (?:[│ ]   )*(?:[├└]── )?([A-Z]\w+)\s", doc, flags=re.M))
    assert drawn == set(errors.__all__)
    assert all(issubclass(getattr(errors, n), errors.LLMError) for n in drawn)


def struct_types(tp: object, seen: set[type]) -> set[type]:
    """Every msgspec Struct type reachable from ``tp`` through field annotations."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if tp not in seen:
            seen.add(tp)
            for field_type in typing.get_type_hints(tp).values():
                struct_types(field_type, seen)
    else:
        for arg in typing.get_args(tp):
            struct_types(arg, seen)
    return seen


@pytest.mark.parametrize(
    "root",
    [
        "router.config:RouterConfig",
        "router.stats:RouterStatistics",
        "router.stats:HealthSnapshot",
        "router.stats:SubscriptionStatistics",
        "router.policy:Plan",
        "router.events:RouterEvent",
        "router:ChatRequest",
        "router:ChatResponse",
        "router:EmbeddingResponse",
        "router:StreamEvent",
    ],
)
def test_every_type_a_user_builds_or_reads_is_exported(root: str) -> None:
    """Each Struct reachable from a config, a snapshot, a plan or an event has a public home."""
    module_name, _, attribute = root.partition(":")
    root_type = getattr(importlib.import_module(module_name), attribute)
    public = {id(getattr(importlib.import_module(package), name)) for package, name in ALL_EXPORTS}
    missing = sorted(
        cls.__qualname__ for cls in struct_types(root_type, set()) if id(cls) not in public
    )
    assert missing == []


@pytest.mark.parametrize(("package", "name"), ALL_EXPORTS)
def test_every_export_is_importable_and_documented(package: str, name: str) -> None:
    """``from package import name`` works and the object says what it is."""
    namespace: dict[str, object] = {}
    exec(f"from {package} import {name}", namespace)
    value = namespace[name]
    assert value is getattr(importlib.import_module(package), name)
    if inspect.isclass(value) or inspect.isroutine(value):
        assert (value.__doc__ or "").strip(), f"{package}.{name} has no docstring"
    else:
        # Type aliases and constants cannot carry a __doc__: document them in the source
        # the way Sphinx reads it, with a ``#:`` comment or a string after the assignment.
        where, tree, index = definition(package, name)
        assert has_source_doc(where, tree, index), f"{package}.{name} ({where}) is undocumented"


@pytest.mark.parametrize(("package", "name"), ALL_EXPORTS)
def test_reexports_from_private_modules_are_intentional(package: str, name: str) -> None:
    """An object from a ``_private`` module is in that module's ``__all__``, under its own name."""
    value = getattr(importlib.import_module(package), name)
    if not (inspect.isclass(value) or inspect.isroutine(value)) or not value.__module__.split(".")[
        -1
    ].startswith("_"):
        # Constants, and the classes that report their public module as their module
        # (the error tree): follow the re-exports to the defining statement instead.
        where, _, _ = definition(package, name)
        owner = sys.modules[where]
    else:
        if not value.__module__.startswith(OURS):
            pytest.fail(f"{package}.{name} is a foreign object from {value.__module__}")
        assert value.__name__ == name, f"{package}.{name} is {value.__name__} renamed"
        owner = sys.modules[value.__module__]
    if owner.__name__ == package:
        return
    private = [part for part in owner.__name__.split(".") if part.startswith("_")]
    assert private, f"{package}.{name} comes from the public module {owner.__name__}"
    assert name in getattr(owner, "__all__", ()), (
        f"{package}.{name} is re-exported from {owner.__name__}, whose __all__ does not list it"
    )


def test_router_reexports_the_same_objects_as_providers() -> None:
    """One class, two import paths: ``router.X is providers.X`` for the shared vocabulary."""
    errors = importlib.import_module("router.errors")
    pairs = [(router, providers), (errors, providers), (router.testing, providers.testing)]
    for module_a, module_b in pairs:
        shared = set(module_a.__all__) & set(module_b.__all__)
        assert shared
        different = [n for n in sorted(shared) if getattr(module_a, n) is not getattr(module_b, n)]
        assert different == []
    assert set(errors.__all__) <= set(providers.__all__)


def test_providers_never_import_router_and_imports_are_warning_free() -> None:
    """Dependency direction holds (providers never imports router) and imports warn nothing."""
    code = (
        "import importlib, sys\n"
        f"modules = {PACKAGES!r}\n"
        "for name in modules:\n"
        "    if name.startswith('providers'):\n"
        "        importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'router' or m.startswith('router.'))\n"
        "assert not leaked, leaked\n"
        "for name in modules:\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def public_errors() -> list[type[BaseException]]:
    """Every exception class any public module exports, and every class of the error tree."""
    found: dict[str, type[BaseException]] = {}
    for package, name in ALL_EXPORTS:
        value = getattr(importlib.import_module(package), name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            found[name] = value
    errors_module = importlib.import_module("providers._errors")
    for name in errors_module.__all__:
        value = getattr(errors_module, name)
        if inspect.isclass(value):
            found[name] = value
    return [found[name] for name in sorted(found)]


@pytest.mark.parametrize("cls", public_errors(), ids=lambda cls: cls.__name__)
def test_tracebacks_name_the_public_path_and_errors_pickle(cls: type[Exception]) -> None:
    """A traceback says ``router.errors.<Name>``, the class is there, and pickling keeps it."""
    import pickle
    import traceback

    errors = importlib.import_module("router.errors")
    assert getattr(errors, cls.__name__) is cls, f"router.errors lacks {cls.__name__}"
    try:
        raise cls("it broke", provider="p", status_code=503)
    except cls as exc:
        caught = exc
    last = traceback.format_exception(caught)[-1]
    assert last == f"router.errors.{cls.__name__}: [p] HTTP 503: it broke\n"
    assert repr(caught) == f"{cls.__name__}('[p] HTTP 503: it broke')"
    copy = pickle.loads(pickle.dumps(caught))
    assert type(copy) is cls
    assert (str(copy), copy.provider, copy.status_code) == (str(caught), "p", 503)


def test_errors_pickle_when_only_providers_was_imported() -> None:
    """Importing providers still imports no router; pickling an error imports it on demand."""
    code = (
        "import pickle, sys, traceback\n"
        "import providers\n"
        "assert 'router' not in sys.modules\n"
        "exc = providers.RateLimited('slow down', provider='p', retry_after=2.0)\n"
        "line = traceback.format_exception_only(exc)[-1]\n"
        "assert line.startswith('router.errors.RateLimited: '), line\n"
        "copy = pickle.loads(pickle.dumps(exc))\n"
        "assert type(copy) is providers.RateLimited, type(copy)\n"
        "assert copy.retry_after == 2.0\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
