"""Data specs: the one-line strings that say where activations come from.

    synthetic:[RECIPE[:KEY=VALUE,...]][#SPLIT]   a synthetic recipe (default superposition)
    model:[NAME][@HOOKPOINTS][#SPLIT]            activations captured from a model
    cache:DIR[@HOOKPOINTS][#SPLIT]               an activation cache written by `saekit cache`

NAME defaults to "default" (SmolLM2-135M); see `saekit.data.models` for the names a model
may have. HOOKPOINTS is one hookpoint, or several separated by commas (module-parallel
training: one SAE set per hookpoint); none means the source's default (a model's middle
decoder layer, a cache's only hookpoint). A hookpoint is a module path with an optional
``:in`` or ``:out`` (``model.layers.6.mlp:in``), or a transcoder pair SOURCE->TARGET
(``model.layers.6.mlp:in->out``, see `saekit.data.hooks.HookPair`).

#SPLIT names the split to read, ``train`` or ``heldout`` (`saekit.data.splits`), and wins
over the split the caller asks for: ``saekit eval --data cache:DIR#train`` evaluates on the
training tokens of a cache written without a held-out split. '#' cannot be confused with a
hookpoint: module paths are Python identifiers joined by dots. A cache directory whose name
holds '@' or '#' is read whole when it exists.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from saekit.data.hooks import HookPair, is_pair, parse_site
from saekit.data.splits import check_split

Kind = Literal["synthetic", "model", "cache"]
KINDS: tuple[Kind, ...] = ("synthetic", "model", "cache")
DEFAULT_SOURCES = {"synthetic": "superposition", "model": "default"}
USAGE = (
    "use synthetic:RECIPE[:KEY=VALUE,...], model:NAME[@HOOKPOINT,...][#SPLIT] "
    "or cache:DIR[@HOOKPOINT,...][#SPLIT]"
)


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec; ``str()`` spells it back (defaults written out).

    kind: "synthetic", "model" or "cache".
    source: the recipe with its options, the model name, or the cache directory.
    hookpoints: () for the source's default, else one or more hookpoints.
    split: the split the spec names, or None (the caller chooses).
    """

    kind: Kind
    source: str
    hookpoints: tuple[str, ...] = ()
    split: str | None = None

    @property
    def hookpoint(self) -> str | None:
        """The one hookpoint, or None for the source's default."""
        if len(self.hookpoints) > 1:
            raise ValueError(f"{self} names several hookpoints; open one of them at a time")
        return self.hookpoints[0] if self.hookpoints else None

    def with_hookpoint(self, hookpoint: str) -> DataSpec:
        return replace(self, hookpoints=(hookpoint,))

    def __str__(self) -> str:
        hookpoints = "@" + ",".join(self.hookpoints) if self.hookpoints else ""
        split = f"#{self.split}" if self.split else ""
        return f"{self.kind}:{self.source}{hookpoints}{split}"


def parse_data_spec(text: str) -> DataSpec:
    """``text`` as a DataSpec (module docstring); a bad spec is a one-line ValueError."""
    kind, colon, rest = text.partition(":")
    if not colon or kind not in KINDS:
        raise ValueError(f"unknown data source {text!r}; {USAGE}")
    if kind == "cache" and _is_dir(rest):
        return DataSpec("cache", rest)
    body, split = _cut(rest, "#")
    source, hookpoints = (body, None) if kind == "cache" and _is_dir(body) else _cut(body, "@")
    if split is not None:
        try:
            check_split(split)
        except ValueError as e:
            raise ValueError(f"bad data spec {text!r}: {e}") from None
    if kind == "synthetic" and hookpoints is not None:
        raise ValueError(f"bad data spec {text!r}: synthetic data has no hookpoints")
    source = source or DEFAULT_SOURCES.get(kind, "")
    if not source:
        raise ValueError(f"bad data spec {text!r}: a cache spec needs a directory; {USAGE}")
    names = tuple(h.strip() for h in (hookpoints or "").split(",") if h.strip())
    for name in names:  # a malformed hookpoint fails now, before any model loads
        if is_pair(name):
            HookPair.parse(name)
        else:
            parse_site(name)
    return DataSpec(kind, source, names, split)


def _is_dir(path: str) -> bool:
    return bool(path) and Path(path).is_dir()  # Path("") is the working directory


def _cut(text: str, sep: str) -> tuple[str, str | None]:
    """(before, after) the last ``sep``; (text, None) without one."""
    before, found, after = text.rpartition(sep)
    return (before, after) if found else (text, None)
