"""g-SAE: TopK whose selection is guided by the downstream-loss gradient (Olmo et al. 2025,
arXiv:2411.10397; docs/methods.md#gsae); selectors/gradient.py has the rule."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.losses import AuxK, Reconstruction
from saekit.sae.methods.common import linear_parts
from saekit.sae.methods.topk import TopKConfig
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import GradientTopK

GRAD_NORMS = ("none", "unit")
INFERENCE = ("gradient", "topk")


@dataclass
class GSAEConfig(TopKConfig):
    beta: float = option(
        1.0, "g-SAE: weight of the gradient term (saved SAEs store it in raw activation units)"
    )
    grad_norm: str = option(
        "none",
        "g-SAE: 'none' uses the gradient g as given; 'unit' uses g/‖g‖ per token, so that β "
        "means the same on every token, whatever the input scale or the loss's reduction",
        choices=("none", "unit"),
    )
    clip: float | None = option(
        None,
        "g-SAE: cap on |W_dec g| (after grad_norm), against heavy-tailed gradients letting one "
        "direction dominate the ranking (default: no cap)",
        lo=0,
        above=True,
    )
    inference: str = option(
        "gradient",
        "g-SAE: the selection encode uses: 'gradient' (needs g) or 'topk'",
        choices=("gradient", "topk"),
    )

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
