"""Sparse coders: parts (dictionary, encoders, selectors/, losses/) composed into named
architectures (methods/) behind one registry. See base.py."""

from saekit.sae import methods  # noqa: F401  (registers every architecture)
from saekit.sae.base import SAE, MissingExtrasError, SAEConfig, TrainContext, TrainOutput
from saekit.sae.registry import (
    Architecture,
    Composition,
    architecture,
    architectures,
    create,
    get_architecture,
    make_config,
)

__all__ = [
    "SAE",
    "Architecture",
    "Composition",
    "MissingExtrasError",
    "SAEConfig",
    "TrainContext",
    "TrainOutput",
    "architecture",
    "architectures",
    "create",
    "get_architecture",
    "make_config",
]
