"""Options as dataclass fields: each field declares its help text and valid range once, and
the command line (saekit/cli/flags.py), config files, cfg.json and checkpoints are all
checked against the same declaration."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any


def option(default: Any, help: str, lo: float | None = None, hi: float | None = None, **more: Any):
    """A dataclass field with its help text and, for numbers, its valid range [lo, hi]
    (`above=True` makes lo exclusive). `flag="name"` names its command-line flag when the
    field's own name would read badly there."""
    metadata = {"help": help, "lo": lo, "hi": hi, **more}
    return dataclasses.field(default=default, metadata=metadata)


def help_text(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_config_values(
    config_cls: type, values: dict[str, Any], label: Callable[[str], str] = repr
) -> None:
    """Check each value against its field's type annotation and declared range in
    `config_cls` (a dataclass): a cfg.json, a config file or a command line that says
    `k: 4.5`, `aux_coeff: "abc"` or `steps: 0` fails here, at the boundary, with the field
    named, instead of deep inside the library. NaN and infinities are rejected for float
    fields. Unknown names are left to the caller. `label` names a field in the message
    (default: 'name'; the command line says --name)."""
    hints = type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name not in values:
            continue
        value, tp = values[f.name], hints.get(f.name, Any)
        if not matches(value, tp):
            raise ValueError(f"{_name(f.name, label)} must be {describe(tp)}, got {value!r}")
        problem = value_problem(f, value)
        if problem:
            raise ValueError(f"{_name(f.name, label)} {problem}")


def _name(field_name: str, label: Callable[[str], str]) -> str:
    return f"option {field_name!r}" if label is repr else label(field_name)


def value_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` lies outside the field's declared range or choices, or None."""
    lo, hi, above = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("above", False)
    if isinstance(value, list | tuple):  # each element (Adam's betas)
        return next(filter(None, (value_problem(f, v) for v in value)), None)
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}, got {value!r}"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if lo is not None and (value < lo or (above and value == lo)):
        return f"must be {'>' if above else '>='} {lo}, got {value}"
    if hi is not None and value > hi:
        return f"must be <= {hi}, got {value}"
    return None


def matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if tp is type(None) or tp is None:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return (
            isinstance(value, list | tuple)
            and len(value) == len(args)
            and all(matches(v, a) for v, a in zip(value, args))
        )
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        item = args[0] if args else Any
        return all(matches(v, item) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # an annotation we do not model: the dataclass checks it


def describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if tp is type(None):
        return "null"
    if tp is float:
        return "a finite number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin in (list, tuple):
        return f"a list of {describe(args[0]) if args else 'values'}"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    return str(tp)
