"""Gated SAE (Rajamanoharan et al. 2024a, arXiv 2404.16014): a gate path decides which latents
fire, a magnitude path with shared, rescaled weights decides how much."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.dictionary import Dictionary
from saekit.sae.encoders import GatedEncoder
from saekit.sae.losses import L1, GatedAuxiliary, Reconstruction
from saekit.sae.methods.common import EncoderConfig
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import Gate


@dataclass
class GatedConfig(EncoderConfig):
    l1_coeff: float = option(5.0, "λ on ReLU(π_gate)·‖d_i‖, at E‖x‖ = √d_in", lo=0)
    l1_warmup: float = option(
        0.05, "fraction of training over which λ ramps linearly from 0", lo=0, hi=1
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.transcode:
            raise ValueError("gated transcoders are not supported")


@architecture("gated", GatedConfig)
def gated(cfg: GatedConfig) -> Composition:
    """f = 1[π_gate > 0]·ReLU(π_mag), W_mag = diag(exp r_mag) W_gate; L1 on the gate only;
    auxiliary reconstruction through a frozen decoder."""
    return Composition(
        Dictionary(),
        GatedEncoder(),
        Gate(),
        losses=[Reconstruction(), L1(on="gate"), GatedAuxiliary()],
    )
