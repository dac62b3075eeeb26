"""Naming a route's strategy, and checking a plan at the boundary.

A route's ``strategy`` (``RouteConfig.strategy``) is one of three things:

==========================  ===========================================================
``"least-cost"``            a built-in strategy's name: a :class:`BuiltinStrategy`
                            carrying the route's panic threshold
``"pkg.mod:attr"``          an import path (TOML or code): ``attr`` of module
                            ``pkg.mod`` (``attr`` may be dotted: ``mod:obj.method``)
a callable                  in code only: the strategy itself
==========================  ===========================================================

:func:`resolve` turns it into a :class:`Strategy` once, when the config is validated
(``load_config``, ``validate_config``, ``open_router``, a simulator scenario) and when
the router builds its routes; :func:`problem` is the ``ConfigError`` message for one
that cannot be resolved: a name that is neither built in nor an import path, a module
that is not found, whose import raised, or that lacks the attribute, and an object of
the wrong shape (not callable, a class, ``async``, or not taking the five arguments).

:func:`plan_problem` is the boundary check of a plan a strategy of the user's returned,
O(len(candidates)): a :class:`Plan`, whose targets are candidates (by ``index``; a copy
may differ only in ``panic``), none twice, and whose exclusions name the others, each
candidate planned or excluded exactly once, each with a reason.  The built-in
strategies are not checked per request: their properties are proven by tests.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Sequence

import msgspec

from ._policy import (
    BUILTIN_STRATEGIES,
    BuiltinStrategy,
    Candidate,
    Exclusion,
    Plan,
    Strategy,
)
from ._validation import suggest

__all__ = ["plan_problem", "problem", "resolve", "strategy_name"]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_IMPORT_PATH = re.compile(rf"(?P<module>{_DOTTED}):(?P<attr>{_DOTTED})")
_PARAMETERS = "(candidates, needs, health, now, rng)"


class _Unresolvable(Exception):
    """Why a strategy cannot be resolved (the message of the ConfigError)."""


def strategy_name(spec: object) -> str:
    """How messages name a strategy: its name or import path, or ``module:qualname`` of
    a callable given in code."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, BuiltinStrategy):
        return spec.name
    target = spec if inspect.isfunction(spec) or inspect.ismethod(spec) else type(spec)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}:{getattr(target, '__qualname__', type(spec).__name__)}"


def resolve(spec: str | Strategy, panic_threshold: float) -> Strategy:
    """The strategy ``spec`` names (see the module docstring).

    Raises:
        ValueError: ``spec`` cannot be resolved; the message says why (as ``problem``).
    """
    try:
        return _resolve(spec, panic_threshold)
    except _Unresolvable as exc:
        raise ValueError(str(exc)) from None


def problem(spec: object) -> str | None:
    """Why ``spec`` names no usable strategy (a ConfigError's message), or ``None``."""
    try:
        _resolve(spec, 0.0)
    except _Unresolvable as exc:
        return str(exc)
    return None


def _resolve(spec: object, panic_threshold: float) -> Strategy:
    if isinstance(spec, str):
        if spec in BUILTIN_STRATEGIES:
            return BuiltinStrategy(spec, panic_threshold)
        return _shaped(_imported(spec), repr(spec))
    return _shaped(spec, strategy_name(spec))


def _imported(path: str) -> object:
    match = _IMPORT_PATH.fullmatch(path)
    if match is None:
        choices = ", ".join(BUILTIN_STRATEGIES)
        raise _Unresolvable(
            f"{path!r} is not one of: {choices}, nor an import path 'package.module:name'"
            f"{suggest(path, BUILTIN_STRATEGIES)}"
        )
    module_name, attr = match["module"], match["attr"]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise _Unresolvable(
                f"cannot import {path!r}: no module named {missing!r} "
                "(is its directory on sys.path / PYTHONPATH?)"
            ) from None
        raise _Unresolvable(
            f"cannot import {path!r}: importing {module_name!r} raised ModuleNotFoundError: {exc}"
        ) from None
    except (Exception, SystemExit) as exc:
        # SystemExit too: a script that parses its arguments or exits when imported is
        # a config mistake to report, not a reason for load_config to end the program.
        # KeyboardInterrupt (and trio's Cancelled) pass through.
        raise _Unresolvable(
            f"cannot import {path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    value: object = module
    where = module_name
    for part in attr.split("."):
        if not hasattr(value, part):
            names = [n for n in dir(value) if not n.startswith("_")]
            raise _Unresolvable(
                f"cannot import {path!r}: {where!r} has no attribute {part!r}{suggest(part, names)}"
            )
        value = getattr(value, part)
        where = f"{where}.{part}"
    return value


def _shaped(value: object, name: str) -> Strategy:
    """``value`` if it has a strategy's shape: a plain callable taking five arguments."""
    shown = type(value).__name__
    if isinstance(value, type):
        raise _Unresolvable(
            f"{name} is a class ({value.__name__}); name a function or an instance "
            f"whose __call__ takes {_PARAMETERS}"
        )
    if not callable(value):
        raise _Unresolvable(
            f"{name} is a {shown}, not callable: a strategy is a function {_PARAMETERS} -> Plan"
        )
    call = value if inspect.isfunction(value) or inspect.ismethod(value) else value.__call__
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        raise _Unresolvable(
            f"{name} is async; a strategy is a plain function {_PARAMETERS} -> Plan (pure: no I/O)"
        )
    if inspect.isgeneratorfunction(call):
        raise _Unresolvable(f"{name} is a generator; a strategy returns a Plan")
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        signature = None  # a builtin or extension callable: checked when called
    if signature is not None:
        try:
            signature.bind(None, None, None, None, None)
        except TypeError:
            raise _Unresolvable(
                f"{name} takes {signature}; a strategy is called with 5 positional "
                f"arguments {_PARAMETERS}"
            ) from None
    return value


def plan_problem(plan: object, candidates: Sequence[Candidate]) -> str | None:
    """What is wrong with ``plan`` as the plan of ``candidates``, or ``None``.

    O(len(candidates) + len(plan)): one pass over the planned targets (each must be the
    candidate at its ``index``, perhaps marked ``panic``, and appear once), one over
    the candidates, one over the exclusions (each must name a candidate neither planned
    nor already excluded, with a non-empty reason).
    """
    if not isinstance(plan, Plan):
        return f"returned {type(plan).__name__}, not a Plan"
    targets, excluded = plan.targets, plan.excluded
    if not isinstance(targets, tuple) or not isinstance(excluded, tuple):
        return "returned a Plan whose targets and excluded are not tuples"
    count = len(candidates)
    planned = [False] * count
    for c in targets:
        if not isinstance(c, Candidate):
            return f"planned a {type(c).__name__}, not a Candidate"
        i = c.index
        if type(i) is not int:
            return f"planned {c.target!r} with index {i!r}, not an int"
        original = candidates[i] if 0 <= i < count else None
        if original is None or original.provider != c.provider or original.model != c.model:
            if any(o.target == c.target for o in candidates):
                return (
                    f"planned {c.target!r} with index {i}, which is not that candidate's "
                    "(plan the candidates given, or copies that change only panic)"
                )
            return f"planned {c.target!r}, which is not among the candidates"
        if c is not original and msgspec.structs.replace(c, panic=original.panic) != original:
            return f"planned a changed copy of {c.target!r} (a copy may change only panic)"
        if planned[i]:
            return f"planned {c.target!r} twice"
        planned[i] = True
    unplanned: dict[str, int] = {}
    for i, c in enumerate(candidates):
        if not planned[i]:
            unplanned[c.target] = unplanned.get(c.target, 0) + 1
    for e in excluded:
        if not isinstance(e, Exclusion) or not isinstance(e.target, str):
            return f"excluded a {type(e).__name__}, not an Exclusion(target, reason)"
        if not isinstance(e.reason, str) or not e.reason:
            return f"excluded {e.target!r} without a reason"
        left = unplanned.get(e.target)
        if left is None:
            if any(c.target == e.target for c in candidates):
                return f"both planned and excluded {e.target!r}"
            return f"excluded {e.target!r}, which is not among the candidates"
        if left == 0:
            return f"excluded {e.target!r} twice"
        unplanned[e.target] = left - 1
    missing = [t for t, left in unplanned.items() if left]
    if missing:
        return f"neither planned nor excluded: {', '.join(missing)}"
    return None
