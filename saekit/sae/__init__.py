"""Sparse coders: one module per architecture behind one registry (see base.py)."""

from saekit.sae.base import SAE, SAEConfig, TrainContext, TrainOutput
from saekit.sae.registry import architectures, create, get_architecture, make_config, register

# Importing an architecture module registers it.
from saekit.sae import relu, topk, batchtopk, jumprelu, matryoshka, mpsae  # noqa: E402,F401,I001

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
