"""Option checking and description shared by every options dataclass (attacks, defenses, configs).

Options are the fields of a dataclass. :func:`build` checks option names against the fields and
coerces each value to its field's type hint (``int``, ``float``, ``bool``, ``str``, ``X | None``,
``list[X]``, ``dict``, ``Literal[...]``), so values may be Python objects or the strings a command
line gives: ``"0.5"``, ``"true"``, a list as ``"a,b"`` or ``'["a", "b"]'``, ``"none"`` for an
optional number. Range checks stay with each class (its ``__post_init__``), which runs when
:func:`build` constructs it.

:func:`describe` lists a class's options with their type, default and help text. Help is the
trailing ``# comment`` of the field's declaration (searched along the class hierarchy), else the
shared text in :data:`COMMON_HELP` for options that mean the same everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import os
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from .errors import BackdoorLabError

T = TypeVar("T")
NoneType = type(None)

COMMON_HELP: dict[str, str] = {
    "seed": "random seed",
    "batch_size": "rows per forward/training batch",
    "epochs": "training epochs",
    "learning_rate": "optimiser learning rate",
    "device": "auto, cpu, cuda, cuda:1, mps",
    "max_length": "longest tokenized input, in tokens",
}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}
_SCALARS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
            str: ("a string", "strings")}


class OptionTypeError(ValueError):
    """A value that does not fit a type hint; ``expected`` says what would."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True)
class OptionInfo:
    """One option: its name, type (as written in the code), default and help text."""

    name: str
    type: str
    default: Any
    help: str
    required: bool = False


# ----------------------------------------------------------------------------------------- building
def parse_option_pairs(pairs: Iterable[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` (``--option`` arguments) → ``{key: "value"}``; the method or config parses
    each value by its option's type (:func:`build`)."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BackdoorLabError(f"option {pair!r} must look like key=value")
        options[key.strip().replace("-", "_")] = value
    return options


def build(cls: type[T], options: Mapping[str, Any] | None, owner: str) -> T:
    """``cls(**options)`` after checking names and coercing values (see the module docstring).

    ``owner`` names what the options belong to in messages, e.g. ``"defense 'onion'"``.
    """
    return cls(**check_options(cls, options, owner))


def check_options(cls: type, options: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """``options`` with each value coerced to its field's type; unknown names or bad values raise."""
    options = dict(options or {})
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    moved: Mapping[str, str] = getattr(cls, "moved_options", {})
    for name in options:
        if name in moved and name not in names:
            raise BackdoorLabError(f"{owner} has no option {name!r} any more: {moved[name]}")
    unknown = [name for name in options if name not in names]
    if unknown:
        listed = ", ".join(names) or "(none)"
        which = "option" if len(unknown) == 1 else "options"
        raise BackdoorLabError(f"{owner} has no {which} {', '.join(map(repr, unknown))}; its options: {listed}")
    hints = type_hints(cls)
    checked = {}
    for name, value in options.items():
        try:
            checked[name] = coerce(value, hints.get(name, Any))
        except OptionTypeError as error:
            raise BackdoorLabError(f"{owner}, option {name}: expected {error.expected}, got {value!r}") from None
    return checked


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of ``cls``'s fields (``Any`` where a hint cannot be resolved)."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # a hint naming something imported only for type checkers
        return {f.name: f.type for f in dataclasses.fields(cls) if not isinstance(f.type, str)}


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint``; strings are parsed. Raises :class:`OptionTypeError`."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return value
    if origin is Union or origin is types.UnionType:
        return _coerce_union(value, typing.get_args(hint))
    if origin is Literal:
        return _coerce_choice(value, typing.get_args(hint))
    if hint in _SCALARS:
        return _coerce_scalar(value, hint)
    if hint is list or origin is list:
        args = typing.get_args(hint)
        return _coerce_list(value, args[0] if args else Any)
    if hint is dict or origin is dict:
        parsed = _json(value) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise OptionTypeError("a JSON object")
        return parsed
    return value  # callables, protocols and other classes are the class's own business


def _coerce_scalar(value: Any, hint: type) -> Any:
    if hint is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if text in _TRUE | _FALSE:
            return text in _TRUE
    if hint in (int, float) and not isinstance(value, bool):
        if isinstance(value, str):
            try:
                return hint(value.strip())
            except ValueError:
                value = _number(value.strip())  # "3.0" or "1e3" for an integer
        if isinstance(value, float) and hint is int and value.is_integer():
            return int(value)
        if isinstance(value, (int, float)) and (hint is float or isinstance(value, int)):
            return hint(value)
    raise OptionTypeError(_SCALARS[hint][0])


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _coerce_list(value: Any, item: Any) -> list[Any]:
    items = value
    if isinstance(value, str):
        text = value.strip()
        items = _json(text) if text.startswith("[") else [part.strip() for part in text.split(",")] if text else []
    if not isinstance(items, (list, tuple)):
        raise OptionTypeError(f"a list of {_plural(item)}")
    try:
        return [coerce(element, item) for element in items]
    except OptionTypeError:
        raise OptionTypeError(f"a list of {_plural(item)}") from None


def _coerce_union(value: Any, members: tuple[Any, ...]) -> Any:
    optional = NoneType in members
    members = tuple(m for m in members if m is not NoneType)
    expected = " or ".join([_expected(m) for m in members] + (["none"] if optional else []))
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE
                                       and str not in members)):
        return None
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):  # a JSON list or object given as text
        members = tuple(sorted(members, key=lambda m: not _is_container(m)))
    else:  # a value that already has one of the types keeps it
        members = tuple(sorted(members, key=lambda m: not _fits(value, m)))
    for member in members:
        try:
            return coerce(value, member)
        except OptionTypeError:
            continue
    raise OptionTypeError(expected)


def _coerce_choice(value: Any, choices: tuple[Any, ...]) -> Any:
    for choice in choices:
        if value == choice or (isinstance(value, str) and not isinstance(choice, str) and value.strip() == str(choice)):
            return choice
    raise OptionTypeError(f"one of {', '.join(map(str, choices))}")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _is_container(hint: Any) -> bool:
    return hint in (list, dict) or typing.get_origin(hint) in (list, dict)


def _fits(value: Any, hint: Any) -> bool:
    base = typing.get_origin(hint) or hint
    try:
        return isinstance(value, base) and not (isinstance(value, bool) and base is not bool)
    except TypeError:  # not a class, or a protocol that cannot be checked at run time
        return False


def _expected(hint: Any) -> str:
    if hint in _SCALARS:
        return _SCALARS[hint][0]
    if hint is list or typing.get_origin(hint) is list:
        args = typing.get_args(hint)
        return f"a list of {_plural(args[0] if args else Any)}"
    if typing.get_origin(hint) is Literal:
        return f"one of {', '.join(map(str, typing.get_args(hint)))}"
    return type_name(hint)


def _plural(hint: Any) -> str:
    return _SCALARS[hint][1] if hint in _SCALARS else "values" if hint is Any else type_name(hint)


# --------------------------------------------------------------------------------------- describing
def describe(cls: type, fallback_help: Mapping[str, str] | None = None) -> list[OptionInfo]:
    """Every option of ``cls`` in declaration order, with type, default and help text."""
    hints = type_hints(cls)
    comments = field_comments(cls)
    shared = {**COMMON_HELP, **(fallback_help or {})}
    infos = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default_factory() if f.default is dataclasses.MISSING else f.default
        infos.append(OptionInfo(f.name, type_name(hints.get(f.name, f.type)), default,
                                comments.get(f.name) or shared.get(f.name, ""), required))
    return infos


def defaults(cls: type) -> dict[str, Any]:
    """Option name → default value (``None`` for required options)."""
    return {info.name: info.default for info in describe(cls)}


def type_name(hint: Any) -> str:
    """A type hint as it reads in the code: ``int``, ``float | None``, ``list[str]``."""
    if isinstance(hint, str):
        return hint
    if hint is NoneType:
        return "None"
    if hint is Any:
        return "Any"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def field_comments(cls: type) -> dict[str, str]:
    """Field name → the trailing ``# comment`` of its declaration, along ``cls``'s MRO (nearest class wins)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        found.update(_class_comments(klass))
    return found


@functools.lru_cache(maxsize=None)
def _class_comments(cls: type) -> dict[str, str]:
    """Comments of the field declarations written in ``cls``'s own body (empty when its source is unknown)."""
    if cls.__module__ == "builtins" or not dataclasses.is_dataclass(cls):
        return {}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    return _body_comments(tokenize.generate_tokens(io.StringIO(source).readline))


def _body_comments(tokens: Iterable[tokenize.TokenInfo]) -> dict[str, str]:
    """``name: type = value  # help`` statements at the top level of a class body → ``{name: help}``."""
    comments: dict[str, str] = {}
    depth, statement = 0, []  # depth 1: the class body
    for token in tokens:
        if token.type == tokenize.INDENT:
            depth += 1
        elif token.type == tokenize.DEDENT:
            depth -= 1
        elif token.type == tokenize.NEWLINE:
            if depth == 1 and len(statement) > 2 and statement[0].type == tokenize.NAME and statement[1].string == ":":
                text = " ".join(t.string.lstrip("#").strip() for t in statement if t.type == tokenize.COMMENT)
                if text:
                    comments[statement[0].string] = text
            statement = []
        elif token.type not in (tokenize.NL, tokenize.ENCODING) and (statement or token.type != tokenize.COMMENT):
            statement.append(token)  # (comments on lines of their own are not a field's help)
    return comments
