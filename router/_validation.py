"""Validating configuration: one path for TOML and for structs built in code.

msgspec checks types while it decodes, but a struct built in code is not checked at all
(a Struct's ``__init__`` trusts its arguments), and a decoding error names a dict entry
``$.providers[...]`` and an enum mistake without its choices.  So configuration is
validated here, by a small converter that walks a value and its annotation together:

* the value is raw TOML (tables as dicts) or the structs themselves, built in code; a
  struct is read field by field, so both take exactly the same path;
* each value is checked against its annotation (``int``, ``float``, ``str``, ``bool``,
  ``None``, ``Literal``, ``list``, ``dict``, a Struct, and unions of these) and converted
  as msgspec would (an int where a float goes becomes a float, a tuple a list);
* each struct is rebuilt from its converted fields, then asked for its problems: its
  ``_problems()`` method yields range and cross-field checks as data, ``(where,
  message)`` with ``where`` a tuple of field names and indices relative to the struct
  (``(("targets", 2), "must look like 'provider:model', got 'gpt-4o'")``).  Checks are
  never raised from ``__post_init__``, so building a struct in code never raises, and a
  mistake is reported with its whole path (``$.routes.fast.hedge.delay``);
* the first mistake is a :class:`~providers.ConfigError` whose ``path`` names it and
  whose message says what is allowed: the choices of an enum (with a "did you mean"),
  the fields of a struct, the expected type.

* a constrained number or string (``Annotated[float, msgspec.Meta(gt=0)]``) is checked
  against its ``Meta`` bounds here too, and the message says the bound and the value.
* a ``runtime_checkable`` Protocol (``RouteConfig.strategy`` may be a
  :class:`~router.policy.Strategy` given in code) is checked with ``isinstance`` and
  kept as it is; its struct's ``_problems`` checks the rest.

Every message is built from what the converter holds — the path it walked, the type,
the value — never by reading another library's error text.  A type the converter does
not know (a tagged union of structs, say) is a ``TypeError`` naming it: teach the
converter the type before a config uses it (tests/test_config.py walks every config
struct to check that).  A ``__post_init__`` that raises (a check written the old way)
gives a ConfigError at the struct, with its message.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

import msgspec
import msgspec.structs

from providers import ConfigError

#: Where a problem is, relative to its struct: field names (or dict keys) and list indices.
Where: TypeAlias = tuple[str | int, ...]
#: A problem a struct's ``_problems()`` reports: where, and what is wrong and allowed.
Problem: TypeAlias = tuple[Where, str]

_T = TypeVar("_T")
_NONE = type(None)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: The integers a config holds: TOML's (64-bit signed).
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def key_path(name: str) -> str:
    """One step of a path: ``.name``, or ``['a:b']`` for a key that is not an identifier."""
    return f".{name}" if _IDENT.fullmatch(name) else f"[{name!r}]"


def where_path(where: Where) -> str:
    """``("targets", 2)`` → ``.targets[2]``."""
    return "".join(key_path(s) if isinstance(s, str) else f"[{s}]" for s in where)


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """`` — did you mean 'x'?`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


def validate(value: object, type_: type[_T], *, source: str | None = None) -> _T:
    """``value`` (raw TOML, or structs built in code) checked and converted to ``type_``.

    Raises:
        ConfigError: the first mistake; ``path`` names it from ``$``, and the message
            ends with ``(in <source>)`` when a source is given.
    """
    try:
        result: _T = _Validator(source).convert(value, type_, "$")
    except ConfigError as exc:
        # The walk's frames say nothing to the user: the path does.
        raise exc.with_traceback(None) from None
    return result


def describe(type_: object) -> str:
    """A type as a message shows it: ``int``, ``list[str]``, ``HedgeConfig``."""
    origin = typing.get_origin(type_)
    if origin is Annotated:
        return describe(typing.get_args(type_)[0])
    if origin is typing.Union or isinstance(type_, types.UnionType):
        members = [m for m in typing.get_args(type_) if m is not _NONE]
        return " or ".join(describe(m) for m in members) or "None"
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in typing.get_args(type_))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(describe(a) for a in typing.get_args(type_))}]"
    if type_ is _NONE:
        return "None"
    return getattr(type_, "__name__", str(type_))


def _shown(value: object) -> str:
    """What a message says it got: the type, and a scalar's value (shortened)."""
    kind = type(value).__name__
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"
    return kind


def _struct_type(type_: object) -> bool:
    """A struct this converter rebuilds itself (any but an array-like one)."""
    if not (isinstance(type_, type) and issubclass(type_, msgspec.Struct)):
        return False
    return not type_.__struct_config__.array_like


def _tag(type_: object) -> tuple[str, str] | None:
    """A tagged struct's ``(tag field, tag)`` (``("dist", "fixed")``), else ``None``."""
    if not _struct_type(type_):
        return None
    config = type_.__struct_config__  # type: ignore[attr-defined]
    if config.tag is None or config.tag_field is None:
        return None
    return config.tag_field, str(config.tag)


def _shape(value: object, type_: object) -> bool:
    """Whether ``value`` is of the kind ``type_`` (one member of a union) takes."""
    if typing.get_origin(type_) is Annotated:
        type_ = typing.get_args(type_)[0]
    origin = typing.get_origin(type_) or type_
    if isinstance(value, bool):
        return type_ is bool
    if isinstance(value, int):
        return type_ in (int, float)
    if isinstance(value, float):
        return type_ is float
    if isinstance(value, str):
        return type_ is str
    if isinstance(value, list | tuple):
        return origin is list
    if isinstance(value, Mapping):
        return origin is dict or _struct_type(type_)
    if isinstance(value, msgspec.Struct):
        return isinstance(type_, type) and isinstance(value, type_)
    return _protocol(type_) and isinstance(value, type_)  # type: ignore[arg-type]


def _protocol(type_: object) -> bool:
    """A ``runtime_checkable`` Protocol (a value given in code is checked by isinstance:
    ``RouteConfig.strategy`` may be the strategy itself)."""
    return getattr(type_, "_is_protocol", False) and getattr(type_, "_is_runtime_protocol", False)


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    """A struct's fields, their annotations resolved (slow: once per class)."""
    return msgspec.structs.fields(cls)


#: The ``msgspec.Meta`` constraints the converter checks, with how a message says each.
_BOUNDS: tuple[tuple[str, str, Callable[[Any, Any], bool]], ...] = (
    ("gt", ">", lambda value, bound: value > bound),
    ("ge", ">=", lambda value, bound: value >= bound),
    ("lt", "<", lambda value, bound: value < bound),
    ("le", "<=", lambda value, bound: value <= bound),
)
_LENGTHS: tuple[tuple[str, str, Callable[[int, int], bool]], ...] = (
    ("min_length", ">=", lambda length, bound: length >= bound),
    ("max_length", "<=", lambda length, bound: length <= bound),
)
_CHECKED_META = {name for name, _, _ in _BOUNDS + _LENGTHS} | {"pattern"}
#: What a Meta may carry that says nothing about validity (documentation, schema).
_DESCRIPTIVE_META = {"title", "description", "examples", "extra_json_schema", "extra"}


def _metas(type_: object) -> list[msgspec.Meta]:
    """The ``msgspec.Meta`` of an ``Annotated`` type (other annotations are ignored)."""
    return [m for m in typing.get_args(type_)[1:] if isinstance(m, msgspec.Meta)]


def _known(type_: object) -> bool:
    """Whether the converter checks ``type_`` (an ``Annotated`` one with its constraints)."""
    origin = typing.get_origin(type_)
    if origin is Annotated:
        constraints = {
            name
            for meta in _metas(type_)
            for name in dir(meta)
            if not name.startswith("_") and getattr(meta, name) is not None
        }
        return _known(typing.get_args(type_)[0]) and constraints <= (
            _CHECKED_META | _DESCRIPTIVE_META
        )
    if origin is typing.Union or isinstance(type_, types.UnionType):
        return all(_known(m) for m in typing.get_args(type_))
    return (
        type_ in (bool, int, float, str, _NONE, Any, object)
        or origin in (list, dict, Literal)
        or _struct_type(type_)
        or _protocol(type_)
    )


class _Validator:
    """One validation: the source named in messages."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    def error(self, path: str, message: str) -> ConfigError:
        suffix = f" (in {self.source})" if self.source else ""
        return ConfigError(message + suffix, path=path)

    def expected(self, value: object, type_: object, path: str) -> ConfigError:
        return self.error(path, f"expected {describe(type_)}, got {_shown(value)}")

    def convert(self, value: object, type_: Any, path: str) -> Any:
        origin = typing.get_origin(type_)
        if type_ is Any or type_ is object:
            return value
        if origin is Annotated:
            return self.constrained(value, type_, path)
        if origin is typing.Union or isinstance(type_, types.UnionType):
            return self.union(value, type_, path)
        if origin is Literal:
            return self.literal(value, typing.get_args(type_), [], path)
        if type_ is bool or type_ is str or type_ is _NONE:
            if not isinstance(value, type_):
                raise self.expected(value, type_, path)
            return value
        if type_ is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.expected(value, type_, path)
            if not _INT_MIN <= value <= _INT_MAX:
                # TOML's integers are 64-bit (Python's tomllib reads any size), and the
                # limits become floats in the rate arithmetic: a bigger one would be an
                # OverflowError deep in the router, not a config error here.
                raise self.error(
                    path,
                    f"must be a 64-bit integer ({_INT_MIN} to {_INT_MAX}), got {_shown(value)}",
                )
            return value
        if type_ is float:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise self.expected(value, type_, path)
            try:
                return float(value)
            except OverflowError:
                raise self.error(path, f"{_shown(value)} is too large for a float") from None
        if origin is list:
            if not isinstance(value, list | tuple):
                raise self.expected(value, type_, path)
            (item,) = typing.get_args(type_)
            return [self.convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, Mapping):
                raise self.expected(value, type_, path)
            key_type, item = typing.get_args(type_)
            out = {}
            for k, v in value.items():
                if key_type is str and not isinstance(k, str):
                    raise self.error(path, f"keys must be str, got {_shown(k)}")
                out[k] = self.convert(v, item, path + key_path(str(k)))
            return out
        if _tag(type_) is not None:
            return self.tagged(value, [type_], path)
        if _struct_type(type_):
            return self.struct(value, type_, path)
        if _protocol(type_):
            if not isinstance(value, type_):
                raise self.expected(value, type_, path)
            return value
        raise TypeError(f"router._validation cannot check values of type {type_!r}")

    def union(self, value: object, type_: Any, path: str) -> Any:
        members = typing.get_args(type_)
        if value is None and _NONE in members:
            return None
        literals = [a for m in members if typing.get_origin(m) is Literal for a in m.__args__]
        others = [m for m in members if typing.get_origin(m) is not Literal and m is not _NONE]
        tagged = [m for m in others if _tag(m) is not None]
        if tagged and isinstance(value, (Mapping, *tagged)):
            return self.tagged(value, tagged, path)
        for member in others:
            if _shape(value, member):
                return self.convert(value, member, path)
        if literals and isinstance(value, str):
            return self.literal(value, literals, others, path)
        raise self.expected(value, type_, path)

    def tagged(self, value: object, members: list[Any], path: str) -> Any:
        """One of the tagged structs ``members``, chosen by the value's tag field (as
        msgspec decodes a tagged union: ``{dist = "fixed", seconds = 0.5}``)."""
        for cls in members:
            if isinstance(value, cls):
                return self.struct(value, cls, path)
        if not isinstance(value, Mapping):
            raise self.expected(value, typing.Union[tuple(members)], path)  # noqa: UP007
        by_tag: dict[str, Any] = {}
        fields: set[str] = set()
        for cls in members:
            field, tag = _tag(cls) or ("", "")
            fields.add(field)
            by_tag[tag] = cls
        if len(fields) != 1:
            raise TypeError(f"router._validation: tagged structs with unlike tag fields: {members}")
        (field,) = fields
        if field not in value:
            raise self.error(path, f"missing required field {field!r}")
        tag = self.literal(value[field], list(by_tag), [], path + key_path(field))
        return self.struct(value, by_tag[tag], path)

    def constrained(self, value: object, type_: Any, path: str) -> Any:
        """``Annotated[T, msgspec.Meta(...)]``: ``value`` as a ``T``, within the bounds."""
        if not _known(type_):
            raise TypeError(f"router._validation cannot check the constraints of {type_!r}")
        result = self.convert(value, typing.get_args(type_)[0], path)
        for meta in _metas(type_):
            for name, sign, holds in _BOUNDS:
                bound = getattr(meta, name)
                if bound is not None and not holds(result, bound):
                    raise self.error(path, f"must be {sign} {bound}, got {result}")
            for name, sign, fits in _LENGTHS:
                bound = getattr(meta, name)
                if bound is not None and not fits(len(result), bound):
                    raise self.error(path, f"length must be {sign} {bound}, got {len(result)}")
            if meta.pattern is not None and not re.search(meta.pattern, result):
                raise self.error(path, f"must match {meta.pattern!r}, got {_shown(result)}")
        return result

    def literal(
        self, value: object, choices: typing.Sequence[object], others: list[Any], path: str
    ) -> Any:
        for c in choices:
            # A str subclass (a StrEnum member built in code) is its plain choice, as
            # msgspec takes it; an int or a bool is only itself (True is not 1).
            if value == c and (
                type(value) is type(c) or (isinstance(c, str) and isinstance(value, str))
            ):
                return c
        listed = ", ".join(str(c) for c in choices)
        alternatives = "".join(f", or {describe(o)}" for o in others)
        if not isinstance(value, str):
            raise self.error(path, f"expected one of: {listed}{alternatives}, got {_shown(value)}")
        hint = suggest(value, [c for c in choices if isinstance(c, str)])
        raise self.error(path, f"{value!r} is not one of: {listed}{alternatives}{hint}")

    def struct(self, value: object, cls: type[msgspec.Struct], path: str) -> Any:
        fields = _fields(cls)
        if isinstance(value, cls):
            given: Mapping[Any, object] = {f.encode_name: getattr(value, f.name) for f in fields}
        elif isinstance(value, Mapping):
            given = value
            names = [f.encode_name for f in fields]
            tag = _tag(cls)
            for key in given:
                if tag is not None and key == tag[0]:
                    continue  # the tag: its struct was chosen by it (see tagged)
                if key not in names and cls.__struct_config__.forbid_unknown_fields:
                    raise self.error(
                        path + key_path(str(key)),
                        f"unknown field {key!r}{suggest(str(key), names)} "
                        f"({cls.__name__} has: {', '.join(names)})",
                    )
            missing = [f.encode_name for f in fields if f.required and f.encode_name not in given]
            if missing:
                raise self.error(path, f"missing required field {missing[0]!r}")
        else:
            raise self.expected(value, cls, path)
        kwargs = {
            f.name: self.convert(given[f.encode_name], f.type, path + key_path(f.encode_name))
            for f in fields
            if f.encode_name in given
        }
        try:
            result = cls(**kwargs)
        except (ValueError, TypeError) as exc:
            # A __post_init__ check (they belong in _problems): its message, at the struct.
            raise self.error(path, str(exc)) from None
        problems: Callable[[], Iterator[Problem]] | None = getattr(result, "_problems", None)
        for where, message in problems() if problems is not None else ():
            raise self.error(path + where_path(where), message)
        return result


# --------------------------------------------------------------------------- ${VAR}

#: ``$$`` (a literal ``$``), ``${NAME}``, ``${NAME:-default}``, or a ``${`` that is neither.
_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{"
)


def expand_env(
    raw: object,
    environ: Mapping[str, str],
    *,
    source: str | None = None,
    protected: Callable[[Where], str | None] = lambda where: None,
) -> Any:
    """``raw`` TOML with ``${NAME}`` in every string value replaced from ``environ``.

    ``${NAME:-default}`` takes ``default`` when ``NAME`` is unset or empty; ``$$`` is a
    literal ``$``; any other ``$`` is kept.  Keys are not expanded.  ``protected(where)``
    returns why a value may not reference the environment (``None`` where it may).

    Raises:
        ConfigError: at the value's path: a variable that is unset and has no default,
            a malformed ``${``, or a reference where ``protected`` forbids one.
    """
    validator = _Validator(source)

    def walk(value: object, where: Where) -> object:
        if isinstance(value, dict):
            return {k: walk(v, (*where, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*where, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return expand_text(value, where)
        return value

    def expand_text(text: str, where: Where) -> str:
        path = "$" + where_path(where)

        def replace(match: re.Match[str]) -> str:
            if match[0] == "$$":
                return "$"
            name = match["name"]
            if name is None:
                raise validator.error(
                    path, "'${' must start ${NAME} or ${NAME:-default} (write $$ for a '$')"
                )
            reason = protected(where)
            if reason is not None:
                raise validator.error(path, f"cannot reference ${{{name}}}: {reason}")
            value = environ.get(name)
            default = match["default"]
            if default is not None and "${" in default.replace("$$", ""):
                # ${A:-${B}} would give a literal "${B}" (and a stray "}"): say so.
                raise validator.error(
                    path, f"a default cannot reference a variable (${{{name}:-{default}...)"
                )
            if default is not None and not value:
                return default.replace("$$", "$")
            if value is None:
                raise validator.error(
                    path,
                    f"environment variable {name} is not set (write ${{{name}:-default}} "
                    "to give a default)",
                )
            return value

        return _REFERENCE.sub(replace, text)

    return walk(raw, ())
