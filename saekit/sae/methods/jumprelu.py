"""JumpReLU (Rajamanoharan et al. 2024b, arXiv 2407.14435) with a sparsity coefficient that
can steer L0 to a target (losses/l0.py)."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.losses import L0, AuxK, Reconstruction
from saekit.sae.methods.common import AuxKConfig, EncoderConfig, linear_parts
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import JumpReLU


@dataclass
class JumpReLUConfig(EncoderConfig, AuxKConfig):
    """AuxK on dead latents too: a latent whose θ rose above all its pre-activations gets no
    gradient from either loss term and would stay dead forever."""

    sparsity_coeff: float = option(
        0.01, "λ on the mean L0 (the initial value when target_l0 is set)", lo=0
    )
    target_l0: float | None = option(
        None, "when set, λ adapts so that the L0 reaches this value", lo=0, above=True
    )
    target_lr: float = option(0.01, "multiplicative step of the adaptive λ", lo=0, above=True)
    sparsity_warmup: float = option(
        0.1, "fraction of training over which a fixed λ ramps from 0", lo=0, hi=1
    )
    bandwidth: float = option(
        0.05, "ε, in units of pre-activations at E‖x‖ = √d_in", lo=0, above=True
    )
    init_threshold: float = option(0.1, "initial per-latent threshold θ", lo=0)


@architecture("jumprelu", JumpReLUConfig)
def jumprelu(cfg: JumpReLUConfig) -> Composition:
    """Per-latent learned thresholds (straight-through kernel); λ·L0 steered to a target; AuxK."""
    return Composition(
        **linear_parts(cfg), selector=JumpReLU(), losses=[Reconstruction(), L0(), AuxK()]
    )
