"""Architecture registry: one name -> one SAE subclass. Names round-trip through cfg.json."""

from __future__ import annotations

import dataclasses
from typing import Any

from saekit.sae.base import SAE, SAEConfig

_REGISTRY: dict[str, type[SAE]] = {}


class UnknownArchitectureError(ValueError):
    pass


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: make an architecture available by its `architecture` name."""
    if not cls.architecture:
        raise ValueError(f"{cls.__name__} has no architecture name")
    if cls.architecture in _REGISTRY and _REGISTRY[cls.architecture] is not cls:
        raise ValueError(f"architecture {cls.architecture!r} registered twice")
    _REGISTRY[cls.architecture] = cls
    return cls


def architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(name: str) -> type[SAE]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; valid names: {', '.join(architectures())}"
        ) from None


def make_config(name: str, **fields: Any) -> SAEConfig:
    """Build `name`'s config, rejecting fields it does not have with the list of valid ones."""
    cls = get_architecture(name)
    valid = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(
            f"architecture {name!r} has no option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(sorted(valid))}"
        )
    return cls.Config(**fields)


def create(name: str, **fields: Any) -> SAE:
    """create("topk", d_in=64, n_latents=512, k=8) -> a freshly initialised SAE."""
    return get_architecture(name)(make_config(name, **fields))
