"""Hostile review of issue 14 (the restructure): the public API and the tools as a user meets them.

Each test pins one defect found by using the installed package as a newcomer would:
types a user must name, the documented errors of the public loaders, Ctrl-C on every
command, and the runtime dependencies a plain ``pip install`` brings.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import signal
import sys
import time
import tomllib
import typing
from pathlib import Path

import msgspec
import pytest

import router
import router.testing
from router._tools import _cli
from router.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = (
    "router",
    "router.errors",
    "router.config",
    "router.events",
    "router.stats",
    "router.policy",
    "router.models",
    "router.testing",
    "providers",
    "providers.testing",
)
# Besides public methods, what ``async with`` / ``async for`` hand to the user.
PROTOCOL_METHODS = ("__aenter__", "__anext__", "__aiter__", "__enter__", "__call__")


def public_homes() -> set[int]:
    """The ids of every object some public module lists in its ``__all__``."""
    homes: set[int] = set()
    for name in PUBLIC:
        module = importlib.import_module(name)
        homes.update(id(getattr(module, n)) for n in module.__all__)
    return homes


def our_types(tp: object) -> list[type]:
    """The classes of this project named by annotation ``tp`` (through unions and generics)."""
    if isinstance(tp, type) and tp.__module__.startswith(("router", "providers")):
        return [tp]
    found: list[type] = []
    origin = typing.get_origin(tp)
    if origin is not None and origin is not typing.Literal:
        found += our_types(origin)
        for arg in typing.get_args(tp):
            found += our_types(arg)
    return found


def signature_types(function: object) -> list[type]:
    """The project classes in ``function``'s parameter and return annotations.

    A name imported only under ``TYPE_CHECKING`` resolves to the public object of that
    name when there is one, else to ``object`` (an optional extra's type, not ours).
    """
    localns: dict[str, object] = {}
    while True:
        try:
            hints = typing.get_type_hints(function, localns=localns)
            break
        except NameError as exc:
            assert exc.name is not None and exc.name not in localns, exc
            localns[exc.name] = getattr(router, exc.name, object)
    return [cls for tp in hints.values() for cls in our_types(tp)]


def methods_of(cls: type) -> list[tuple[str, object]]:
    """The public methods and properties of ``cls`` (its constructor excepted)."""
    found: list[tuple[str, object]] = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in PROTOCOL_METHODS:
            continue
        if isinstance(member, property) and member.fget is not None:
            found.append((name, member.fget))
        elif isinstance(member, classmethod | staticmethod):
            found.append((name, member.__func__))
        elif inspect.isfunction(member):
            found.append((name, member))
    return found


def test_every_type_in_a_public_signature_has_a_public_home() -> None:
    """Invariant: a class a public function or method of ``router`` takes or returns is exported.

    ``router.stream(request)`` returned ``router._stream.StreamContext``, a type a user who
    writes a helper around it could only name from a private module.
    """
    homes = public_homes()
    missing: dict[str, set[str]] = {}
    queue: list[tuple[str, object]] = []
    for name in PUBLIC:
        if not name.startswith("router"):
            continue  # providers' adapters are the adapter author's layer
        module = importlib.import_module(name)
        queue += [(f"{name}.{n}", getattr(module, n)) for n in module.__all__]
    seen: set[int] = set()
    while queue:
        where, obj = queue.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if inspect.isclass(obj):
            if issubclass(obj, BaseException | msgspec.Struct):
                continue  # fields: test_exports.py; errors: the tree
            members = methods_of(obj)
        elif inspect.isroutine(obj):
            members = [("", obj)]
        else:
            continue
        for member_name, function in members:
            label = f"{where}.{member_name}" if member_name else where
            for cls in signature_types(function):
                if id(cls) not in homes:
                    missing.setdefault(f"{cls.__module__}.{cls.__qualname__}", set()).add(label)
                queue.append((f"{cls.__module__}.{cls.__qualname__}", cls))
    assert missing == {}


def test_stream_context_is_public_and_typed_as_what_stream_returns() -> None:
    """``router.StreamContext`` is the class ``Router.stream`` is annotated to return."""
    hints = typing.get_type_hints(router.Router.stream)
    assert hints["return"] is router.StreamContext
    assert "StreamContext" in router.__all__
