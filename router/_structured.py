"""Structured output: a type (or a JSON Schema) in, a validated value out.

``router.structured(request, User)`` asks for an answer in ``User``'s shape and returns a
``User``.  This module is the vendor-neutral part of it:

1. **Compile** the target once per type (:func:`output_schema`): the JSON Schema from
   ``msgspec.json.schema``, put in *strict form*, a ``msgspec`` decoder, and the
   :class:`~providers.ResponseFormat` to send.  Each adapter then translates that format
   into its vendor's form (OpenAI/Azure ``json_schema``, an Anthropic forced tool, Gemini
   ``responseJsonSchema``, Ollama ``format``).
2. **Validate inside the attempt**: the router's call for each target completes and then
   decodes; an answer that does not validate raises :class:`~providers.InvalidOutput`
   *in the attempt*, so the route retries it or fails over to the next target exactly as
   it does on a server error, and the trace shows why.

Strict form
    Every object in the schema gets ``additionalProperties: false`` and lists every
    property in ``required``, and ``default`` is dropped — what OpenAI's strict mode
    demands, and harmless elsewhere: the model must then write every field, and the
    decoder accepts that.  A schema strict mode cannot express (a free-form mapping such
    as ``dict[str, int]``, an object without ``properties``) is sent as it is, with
    ``strict: false``: the vendor is guided rather than constrained, and the router's
    validation still holds.  The root of the schema is always an object (OpenAI's
    strict mode and Anthropic's tool input require one): a ``$ref`` root is inlined, and
    any other root (``list[User]``, ``int``, a union) is wrapped as the one property
    ``"value"`` of an object and unwrapped after decoding.

What is validated
    For a type, everything msgspec checks while decoding into it: well-formed JSON, every
    type, required fields, ``Meta`` constraints, ``__post_init__``; unknown fields are
    ignored unless the Struct forbids them.  For a JSON Schema given as a ``dict`` (no
    full JSON Schema validator is a dependency): well-formed JSON, the root's ``type``,
    and, for an object root, that every ``required`` property is present — nothing
    deeper.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import msgspec

from providers import (
    ChatRequest,
    ChatResponse,
    InvalidOutput,
    InvalidRequest,
    Provider,
    ResponseFormat,
)
from providers._errors import scrub

__all__ = [
    "OutputSchema",
    "Structured",
    "output_schema",
    "strict_form",
    "structured_request",
    "validated",
]

T = TypeVar("T")

#: How much of a failed answer an :class:`~providers.InvalidOutput` keeps (``excerpt``).
EXCERPT_CHARS = 200
#: Compiled types kept at most (a program has few; a bound keeps a pathological one safe).
_MAX_CACHED = 256
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\r?\n(?P<body>.*?)\r?\n?```\s*$", re.DOTALL)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class Structured(msgspec.Struct, Generic[T], frozen=True):
    """A validated value and the answer it came from.

    ``response`` is the whole :class:`~providers.ChatResponse`: the provider that
    answered, ``usage``, ``cost`` and ``attempts`` (the trace, failed validations
    included).

    Example::

        result = await router.structured_response(request, User)
        print(result.value.name, result.response.provider, result.response.cost)
    """

    value: T
    response: ChatResponse


class OutputSchema(Generic[T]):
    """One compiled target of structured output: what to send, and how to validate.

    Made by :func:`output_schema` (cached per type); immutable once built.
    """

    __slots__ = ("_decode", "_wrapped", "format", "name", "schema")

    def __init__(
        self,
        name: str,
        schema: dict[str, Any],
        strict: bool,
        decode: Callable[[str], T],
        *,
        wrapped: bool,
    ) -> None:
        self.name = name
        #: The JSON Schema sent (strict form where possible, an object at the root).
        self.schema = schema
        #: The response format every request for this target carries.
        self.format = ResponseFormat.json_schema(schema, name=name, strict=strict)
        self._decode = decode
        self._wrapped = wrapped

    def __repr__(self) -> str:
        return f"<OutputSchema {self.name} strict={self.format.strict}>"

    def validate(self, response: ChatResponse, secrets: tuple[str, ...] = ()) -> T:
        """The value in ``response``'s text, or raise :class:`~providers.InvalidOutput`.

        A Markdown code fence around the JSON (```` ```json ... ``` ````) is tolerated.
        The error's message names the problem (msgspec's message, with the JSON path)
        without quoting the answer; ``excerpt`` holds its start, scrubbed of ``secrets``.
        """
        text = response.text
        stripped = text.strip()
        if stripped.startswith("```"):
            fenced = _FENCE.match(stripped)
            if fenced is not None:
                text = fenced.group("body")
        try:
            if not text.strip():
                what = "tool calls" if response.tool_calls else "nothing"
                raise ValueError(f"the answer has no text (it holds {what})")
            value: Any = self._decode(text)
            if self._wrapped:
                value = value["value"] if isinstance(value, dict) else value.value
            return value  # type: ignore[no-any-return]
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            problem = str(exc)
        cut = ""
        if response.finish_reason == "length":
            cut = " (the answer was cut off at its token limit: finish_reason 'length')"
        elif response.finish_reason == "content_filter":
            cut = " (the provider's content filter stopped the answer)"
        raise InvalidOutput(
            f"the answer does not match {self.name}: {problem}{cut}",
            validation=problem,
            excerpt=scrub(response.text[:EXCERPT_CHARS], secrets),
            provider=response.provider,
            request_id=response.request_id,
        )


def structured_request(
    request: ChatRequest, schema: type[T] | Mapping[str, Any]
) -> tuple[ChatRequest, OutputSchema[T]]:
    """``request`` asking for an answer in ``schema``'s shape, and the compiled schema.

    Raises:
        InvalidRequest: ``schema`` cannot be described as JSON Schema, or ``request``
            already has a ``response_format``.
    """
    target: OutputSchema[T] = output_schema(schema)
    if request.response_format is not None:
        raise InvalidRequest(
            "structured() sets the request's response_format from the schema; "
            "send the request without one"
        )
    return msgspec.structs.replace(request, response_format=target.format), target


async def validated(
    answer: Awaitable[ChatResponse], target: OutputSchema[T], provider: Provider
) -> tuple[ChatResponse, T]:
    """Await one attempt's ``answer`` and validate it: the structured call of an attempt."""
    response = await answer
    try:
        return response, target.validate(response)
    except InvalidOutput as exc:
        exc.excerpt = scrub(exc.excerpt, _secrets(provider))  # read only when it failed
        raise


def _secrets(provider: Provider) -> tuple[str, ...]:
    """The values ``provider`` must never show (its key), as the HTTP adapters keep them."""
    found = getattr(provider, "_secrets", ())
    return tuple(s for s in found if isinstance(s, str)) if isinstance(found, list | tuple) else ()


_cache: dict[Any, OutputSchema[Any]] = {}


def output_schema(target: type[T] | Mapping[str, Any]) -> OutputSchema[T]:
    """Compile ``target`` (a type msgspec can decode, or a JSON Schema ``dict``).

    Types are compiled once and cached; a schema ``dict`` is compiled on every call (it
    is not hashable, and may change between calls).

    Raises:
        InvalidRequest: msgspec cannot make a JSON Schema for the type, or ``target`` is
            neither a type nor a mapping.

    Example::

        >>> class User(msgspec.Struct):
        ...     name: str
        >>> output_schema(User).schema["required"]
        ['name']
    """
    if isinstance(target, Mapping):
        try:
            return _compile_dict(target)
        except RecursionError:
            raise InvalidRequest(
                f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels"
            ) from None
    try:
        cached = _cache.get(target)
    except TypeError:  # an unhashable "type" (e.g. a parametrised alias): compile afresh
        return _compile_type(target)
    if cached is None:
        cached = _compile_type(target)
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()
        _cache[target] = cached
    return cached


def _compile_type(target: Any) -> OutputSchema[Any]:
    try:
        raw = msgspec.json.schema(target)
    except (TypeError, ValueError, NameError) as exc:  # NameError: an unresolved annotation
        raise InvalidRequest(
            f"structured output needs a type msgspec can describe as JSON Schema "
            f"(a Struct, dataclass, TypedDict, ...), or a JSON Schema dict; {target!r} is "
            f"not one: {exc}"
        ) from None
    name = _name(getattr(target, "__name__", None) or raw.get("title"))
    root, wrapped = _object_root(raw)
    schema, strict = strict_form(root)
    decode: Callable[[str], Any]
    if wrapped:
        wrapper = msgspec.defstruct("_Wrapped", [("value", target)])
        decode = msgspec.json.Decoder(wrapper).decode
    else:
        decode = msgspec.json.Decoder(target).decode
    return OutputSchema(name, schema, strict, decode, wrapped=wrapped)


def _compile_dict(target: Mapping[str, Any]) -> OutputSchema[Any]:
    try:  # JSON in, JSON out: a copy of what will be sent, refused here if it cannot be
        raw = msgspec.json.decode(msgspec.json.encode(target))
    except (TypeError, ValueError) as exc:  # msgspec.EncodeError is a ValueError
        raise InvalidRequest(f"the JSON Schema dict cannot be encoded as JSON: {exc}") from None
    name = _name(raw.get("title") if isinstance(raw.get("title"), str) else None)
    root, wrapped = _object_root(raw)
    strict_schema, strict = strict_form(root)
    # The user's schema is theirs: sent as given (with an object root), strict only when
    # it already is in strict form.
    strict = strict and strict_schema == root
    check = _shallow_check(raw)
    decode = msgspec.json.Decoder().decode

    def validate(text: str) -> Any:
        value = decode(text)
        if not wrapped:
            return check(value)
        if not isinstance(value, dict) or "value" not in value:
            raise ValueError("Object missing required field `value` - at `$`")
        check(value["value"])
        return value

    return OutputSchema(name, root, strict, validate, wrapped=wrapped)


def _name(raw: str | None) -> str:
    """A name vendors accept for the schema (OpenAI and tool names: ``[A-Za-z0-9_-]{1,64}``)."""
    name = _NAME_CHARS.sub("_", raw or "")[:64]
    return name or "response"


def _object_root(raw: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``raw`` with an object at its root: a ``$ref`` root inlined, anything else wrapped.

    Returns the schema and whether it was wrapped (the value is then ``{"value": ...}``).
    """
    defs = raw.get("$defs")
    ref = raw.get("$ref")
    if isinstance(ref, str) and isinstance(defs, dict) and ref.startswith("#/$defs/"):
        target = defs.get(ref[len("#/$defs/") :])
        if isinstance(target, dict):
            rest = {k: v for k, v in raw.items() if k not in ("$ref", "$defs")}
            root = {**copy.deepcopy(target), **rest}
            return _with_defs(root, defs), False
    if raw.get("type") == "object" or (raw.get("type") is None and "properties" in raw):
        return raw, False
    inner = {k: v for k, v in raw.items() if k != "$defs"}
    wrapped = {"type": "object", "properties": {"value": inner}, "required": ["value"]}
    return _with_defs(wrapped, defs if isinstance(defs, dict) else {}), True


def _with_defs(root: dict[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """``root`` with the ``$defs`` it still references (transitively), and no others."""
    keep: dict[str, Any] = {}
    pending = _refs(root)
    while pending:
        name = pending.pop()
        if name in keep or name not in defs:
            continue
        keep[name] = defs[name]
        pending |= _refs(defs[name])
    if keep:
        root["$defs"] = {k: copy.deepcopy(defs[k]) for k in defs if k in keep}
    return root


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                found.add(ref[len("#/$defs/") :])
            stack.extend(v for k, v in item.items() if k != "$defs")
        elif isinstance(item, list):
            stack.extend(item)
    return found


def strict_form(schema: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``schema`` in strict form (see the module docs), and whether strict mode can take it.

    Pure: ``schema`` is not changed.  When strict mode cannot express some part (a
    free-form mapping, an object without ``properties``), that part is left as it is
    and the second item is ``False``.

    Example::

        >>> strict_form({"type": "object", "properties": {"a": {"type": "integer",
        ...                                                     "default": 1}}})
        ({'type': 'object', 'properties': {'a': {'type': 'integer'}}, \
'additionalProperties': False, 'required': ['a']}, True)
        >>> strict_form({"type": "object", "additionalProperties": {"type": "integer"}})[1]
        False
    """
    expressible = [True]
    out = _strict(schema, expressible, 0)
    assert isinstance(out, dict)
    return out, expressible[0]


_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")


#: Deeper schemas are refused: no real type nests this far, and recursion must not fail.
MAX_SCHEMA_DEPTH = 64


def _strict(node: Any, expressible: list[bool], depth: int) -> Any:
    if not isinstance(node, Mapping):
        return node
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidRequest(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    depth += 1
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "default":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {k: _strict(v, expressible, depth) for k, v in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_strict(v, expressible, depth) for v in value]
        elif key in ("items", "not", "additionalProperties") and isinstance(value, Mapping):
            out[key] = _strict(value, expressible, depth)
        else:
            out[key] = value
    kind = out.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object or (kind is None and "properties" in out):
        props = out.get("properties")
        extra = out.get("additionalProperties")
        if not isinstance(props, Mapping) or (extra is not None and extra is not False):
            expressible[0] = False  # a free-form mapping: strict mode has no form for it
            return out
        out["additionalProperties"] = False
        out["required"] = list(props)
    return out


def _shallow_check(schema: Mapping[str, Any]) -> Callable[[Any], Any]:
    """The check of a decoded value against a schema ``dict``: the root's type, required
    properties."""
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else []
    allowed = tuple(t for k in kinds for t in _JSON_TYPES.get(k, ()))
    required = schema.get("required") if "object" in kinds or not kinds else None
    required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []

    def check(value: Any) -> Any:
        if allowed:
            ok = isinstance(value, allowed) and not (
                isinstance(value, bool) and bool not in allowed
            )
            if not ok:
                raise ValueError(
                    f"Expected `{' | '.join(kinds)}`, got `{_json_type(value)}` - at `$`"
                )
        if required and isinstance(value, dict):
            missing = [r for r in required if r not in value]
            if missing:
                raise ValueError(f"Object missing required field `{missing[0]}` - at `$`")
        return value

    return check


def _json_type(value: Any) -> str:
    for name, types in _JSON_TYPES.items():
        if isinstance(value, types) and not (isinstance(value, bool) and name != "boolean"):
            return name
    return type(value).__name__
