"""Sparse coders: one module per architecture behind one registry (see base.py)."""

# Importing an architecture module registers it.
from saekit.sae import (  # noqa: E402,F401,I001
    batchtopk,
    gsae,
    jumprelu,
    matryoshka,
    mpsae,
    relu,
    topafa,
    topk,
)
from saekit.sae.base import SAE, SAEConfig, TrainContext, TrainOutput
from saekit.sae.registry import architectures, create, get_architecture, make_config, register

__all__ = [
    "SAE",
    "SAEConfig",
    "TrainContext",
    "TrainOutput",
    "architectures",
    "create",
    "get_architecture",
    "make_config",
    "register",
]
