"""ReLU + L1 in Anthropic's April-2024 form ("Circuits Updates – April 2024"): free atom
norms, an L1 penalty weighted by them, the coefficient warmed up from 0."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.sae.losses import L1, Reconstruction
from saekit.sae.methods.common import EncoderConfig, linear_parts
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import ReLU


@dataclass
class ReLUConfig(EncoderConfig):
    l1_coeff: float = 5.0  # λ at E||x|| = sqrt(d_in)
    l1_warmup: float = 0.05  # fraction of training over which λ ramps linearly from 0
    init_atom_norm: float = 0.1


@architecture("relu", ReLUConfig)
def relu(cfg: ReLUConfig) -> Composition:
    """ReLU, free atom norms folded on save; λ Σ f_i‖d_i‖ warmed up."""
    parts = linear_parts(cfg, unit_norm=False, init_norm=cfg.init_atom_norm)
    return Composition(**parts, selector=ReLU(), losses=[Reconstruction(), L1()])
