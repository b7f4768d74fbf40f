"""Architecture registry: one name -> one config dataclass + one composition of parts.
Names round-trip through cfg.json."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from saekit.sae.base import SAE, SAEConfig


class UnknownArchitectureError(ValueError):
    pass


@dataclass
class Composition:
    """The parts an architecture is made of (see base.py)."""

    dictionary: Any
    encoder: Any | None
    selector: Any
    losses: Sequence[Any]
    skip: Any | None = None


@dataclass(frozen=True)
class Architecture:
    """name: registry name, written to cfg.json; Config: its config dataclass; build: cfg ->
    Composition; needs_extras: per-token extras its training needs (g-SAE: "grad")."""

    name: str
    Config: type[SAEConfig]
    build: Callable[[Any], Composition]
    needs_extras: tuple[str, ...] = ()

    def __call__(self, cfg: SAEConfig) -> SAE:
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{self.name} needs a {self.Config.__name__}, got {type(cfg).__name__}")
        parts = self.build(cfg)
        return SAE(self.name, cfg, **vars(parts))

    @property
    def summary(self) -> str:
        """First line of the build function's docstring."""
        return (self.build.__doc__ or "").strip().splitlines()[0] if self.build.__doc__ else ""


_REGISTRY: dict[str, Architecture] = {}


def architecture(
    name: str, Config: type[SAEConfig], needs_extras: tuple[str, ...] = ()
) -> Callable[[Callable[[Any], Composition]], Callable[[Any], Composition]]:
    """Decorator on a build function: make `name` available to create/load/train."""

    def register(build: Callable[[Any], Composition]) -> Callable[[Any], Composition]:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = Architecture(name, Config, build, needs_extras)
        return build

    return register


def architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; valid names: {', '.join(architectures())}"
        ) from None


def make_config(name: str, **fields: Any) -> SAEConfig:
    """Build `name`'s config, rejecting fields it does not have with the list of valid ones."""
    cls = get_architecture(name).Config
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(
            f"architecture {name!r} has no option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(sorted(valid))}"
        )
    return cls(**fields)


def create(name: str, **fields: Any) -> SAE:
    """create("topk", d_in=64, n_latents=512, k=8) -> a freshly initialised SAE."""
    return get_architecture(name)(make_config(name, **fields))
