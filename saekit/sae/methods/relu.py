"""ReLU + L1 in Anthropic's April-2024 form ("Circuits Updates – April 2024"): free atom
norms, an L1 penalty weighted by them, the coefficient warmed up from 0."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.losses import L1, Reconstruction
from saekit.sae.methods.common import EncoderConfig, linear_parts
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import ReLU


@dataclass
class ReLUConfig(EncoderConfig):
    l1_coeff: float = option(5.0, "λ on Σ f_i‖d_i‖, at E‖x‖ = √d_in", lo=0)
    l1_warmup: float = option(
        0.05, "fraction of training over which λ ramps linearly from 0", lo=0, hi=1
    )
    init_atom_norm: float = option(0.1, "initial decoder atom norm (free norms)", lo=0, above=True)


@architecture("relu", ReLUConfig)
def relu(cfg: ReLUConfig) -> Composition:
    """ReLU, free atom norms folded on save; λ Σ f_i‖d_i‖ warmed up."""
    parts = linear_parts(cfg, unit_norm=False, init_norm=cfg.init_atom_norm)
    return Composition(**parts, selector=ReLU(), losses=[Reconstruction(), L1()])
