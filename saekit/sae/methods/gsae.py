"""g-SAE: TopK whose selection is guided by the downstream-loss gradient (Olmo et al. 2025,
arXiv 2505.18234); selectors/gradient.py has the rule."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.sae.losses import AuxK, Reconstruction
from saekit.sae.methods.common import linear_parts
from saekit.sae.methods.topk import TopKConfig
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import GradientTopK

GRAD_NORMS = ("none", "unit")
INFERENCE = ("gradient", "topk")


@dataclass
class GSAEConfig(TopKConfig):
    """beta: weight of the gradient term; saved SAEs store it in raw activation units.
    grad_norm: "none" uses g as given; "unit" uses g/‖g‖ per token, which makes β mean the
      same on every token and independent of the input scale and the loss's reduction.
    clip: cap on |W_dec g| (after grad_norm); guards against heavy-tailed gradients letting
      one direction dominate the ranking. None = no cap.
    inference: the selection `encode` uses: "gradient" (needs g) or "topk".
    """

    beta: float = 1.0
    grad_norm: str = "none"
    clip: float | None = None
    inference: str = "gradient"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.grad_norm not in GRAD_NORMS:
            raise ValueError(f"grad_norm must be one of {GRAD_NORMS}, got {self.grad_norm!r}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be positive or None, got {self.clip}")
        if self.inference not in INFERENCE:
            raise ValueError(f"inference must be one of {INFERENCE}, got {self.inference!r}")


@architecture("gsae", GSAEConfig, needs_extras=("grad",))
def gsae(cfg: GSAEConfig) -> Composition:
    """TopK ranked by a·(1 + β·|W_dec g|), g = ∂(LM loss)/∂x; AuxK."""
    return Composition(
        **linear_parts(cfg), selector=GradientTopK(), losses=[Reconstruction(), AuxK()]
    )
