"""The parts of a data spec string, as `saekit train` reads them (one parser for the run's
cache, its run.json paths and its checks; saekit/data's own spec parser can replace it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataSpec:
    """kind: model, cache or synthetic; source: the model name, cache directory or recipe;
    hookpoints: those named after '@' (comma-separated; empty: the default)."""

    kind: str
    source: str
    hookpoints: tuple[str, ...] = ()

    def __str__(self) -> str:
        at = f"@{','.join(self.hookpoints)}" if self.hookpoints else ""
        return f"{self.kind}:{self.source}{at}"


def parse_data_spec(spec: str) -> DataSpec:
    """'model:NAME@H1,H2', 'cache:DIR[@H]', 'synthetic:RECIPE[:k=v,...]' -> its parts. A
    cache directory whose own name holds an '@' is taken whole when it exists."""
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        return DataSpec(kind, rest)
    source, at, hooks = rest.rpartition("@")
    if not at or (kind == "cache" and Path(rest).is_dir()):
        source, hooks = rest, ""
    return DataSpec(kind, source, tuple(h.strip() for h in hooks.split(",") if h.strip()))
