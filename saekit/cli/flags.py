"""Command-line flags generated from option dataclasses (saekit/options.py): one flag per
field, its type, range, choices, default and help taken from the field's declaration, so a
new field is a new flag. Config files (--config, TOML or JSON) take the same names as keys."""

from __future__ import annotations

import argparse
import json
import tomllib
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from saekit.cli.common import UsageError, float_in, int_in, parse_value, text_arg
from saekit.options import describe, help_text, matches, type_hints, value_problem


def flag_name(f: Field) -> str:
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def add_fields(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    skip: tuple[str, ...] = (),
    aliases: dict[str, list[str]] | None = None,
) -> None:
    """One flag per field of the dataclass `cls` (dest = the field's name; absent from the
    namespace unless given, so config files and defaults can sit below flags)."""
    group = parser.add_argument_group(title)
    hints = type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        group.add_argument(
            flag_name(f),
            *(aliases or {}).get(f.name, []),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{help_text(f)} (default {_shown(f.default)})",
            **_value_kwargs(f, hints[f.name]),
        )


def add_sweep_fields(
    parser: argparse.ArgumentParser, options: dict[str, list[tuple[str, Field]]], title: str
) -> None:
    """One flag per option name over several dataclasses (the architectures' options): a
    value applies to every architecture that has the option; a comma list sweeps."""
    group = parser.add_argument_group(title)
    for name, owners in sorted(options.items()):
        f = owners[0][1]
        tp = type_hints(_owner_class(owners[0]))[name]
        defaults = sorted({_shown(g.default) for _, g in owners})
        where = ", ".join(a for a, _ in owners)
        kw: dict[str, Any] = {"type": sweep_type(f, tp), "metavar": "V[,V...]"}
        if _unwrap_optional(tp)[0] is bool:
            kw.update(nargs="?", const=[True])
        group.add_argument(
            flag_name(f),
            dest=f"option:{name}",
            default=argparse.SUPPRESS,
            help=f"{help_text(f)} [{where}; default {' / '.join(defaults)}]",
            **kw,
        )


def _owner_class(owner: tuple[str, Field]) -> type:
    from saekit.sae import get_architecture

    return get_architecture(owner[0]).Config


def _shown(default: Any) -> str:
    if default is MISSING:
        return "required"
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return "none" if default is None else str(default)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for X | None, else (tp, False)."""
    args = typing.get_args(tp)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _value_kwargs(f: Field, tp: Any) -> dict[str, Any]:
    base, optional = _unwrap_optional(tp)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(args)}
    if origin is tuple:
        return {"nargs": len(args), "type": _scalar(f, args[0], False), "metavar": "V"}
    kw: dict[str, Any] = {"type": _scalar(f, base, optional)}
    if "choices" in f.metadata:
        kw["choices"] = list(f.metadata["choices"])
    return kw


def _scalar(f: Field, tp: Any, optional: bool):
    """An argparse type for one value of type tp (int, float or str), within the field's
    declared range; 'none' for optional fields."""
    lo, hi, above = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("above", False)
    if tp is int:
        parse = int_in(lo, hi)
    elif tp is float:
        parse = float_in(lo, hi, open_lo=above)
    else:
        parse = text_arg
    if not optional:
        return parse

    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    parse_optional.__name__ = parse.__name__
    return parse_optional


def sweep_type(f: Field, tp: Any):
    """An argparse type for 'V[,V...]': the list of values, each checked against the field's
    type and range ('[...]' is one list value, for list-typed options)."""

    def parse(text: str) -> list[Any]:
        text_arg(text)
        parts = [text] if text.startswith("[") else text.split(",")
        return [check_value(f, tp, parse_value(p)) for p in parts]

    parse.__name__ = "value"
    return parse


def check_value(f: Field, tp: Any, value: Any) -> Any:
    if not matches(value, tp):
        raise argparse.ArgumentTypeError(f"must be {describe(tp)}, got {value!r}")
    problem = value_problem(f, value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def sweep_values(f: Field, tp: Any, value: Any) -> list[Any]:
    """A config file's value of a sweepable option: a list sweeps, unless the option itself
    takes a list."""
    values = value if isinstance(value, list) and not matches(value, tp) else [value]
    return [check_value(f, tp, v) for v in values]


def load_config_file(path: Path) -> dict[str, Any]:
    """A TOML (.toml) or JSON file holding a table of settings."""
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    if path.stat().st_size > 2**20:
        raise UsageError(f"config file {path}: larger than 1 MiB")
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {path}: {e}") from None
    except RecursionError:
        raise UsageError(f"config file {path}: nested too deeply") from None
    if not isinstance(doc, dict):
        raise UsageError(f"config file {path}: expected a table of options")
    return doc
