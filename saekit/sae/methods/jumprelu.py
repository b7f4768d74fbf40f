"""JumpReLU (Rajamanoharan et al. 2024b, arXiv 2407.14435) with a sparsity coefficient that
can steer L0 to a target (losses/l0.py)."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.sae.losses import L0, AuxK, Reconstruction
from saekit.sae.methods.common import EncoderConfig, linear_parts
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import JumpReLU


@dataclass
class JumpReLUConfig(EncoderConfig):
    sparsity_coeff: float = 0.01  # λ on the mean L0 (initial value when target_l0 is set)
    target_l0: float | None = None  # when set, λ adapts so the L0 reaches this value
    target_lr: float = 0.01  # multiplicative step of the adaptive λ
    sparsity_warmup: float = 0.1  # fraction of training over which a fixed λ ramps from 0
    bandwidth: float = 0.05  # ε, in units of pre-activations at E||x|| = sqrt(d_in)
    init_threshold: float = 0.1
    # AuxK on dead latents: a latent whose θ rose above all its pre-activations gets no
    # gradient from either loss term and would stay dead forever.
    k_aux: int | None = None  # default d_in // 2
    aux_coeff: float = 1 / 32


@architecture("jumprelu", JumpReLUConfig)
def jumprelu(cfg: JumpReLUConfig) -> Composition:
    """Per-latent learned thresholds (straight-through kernel); λ·L0 steered to a target; AuxK."""
    return Composition(
        **linear_parts(cfg), selector=JumpReLU(), losses=[Reconstruction(), L0(), AuxK()]
    )
