"""top-AFA (Lee, Davies, Canby, Hockenmaier 2025, arXiv 2503.24277): no k; the code's norm is
matched to the input's (selectors/norm_matching.py, losses/norm_matching.py)."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.losses import AuxK, NormMatchingLoss, Reconstruction
from saekit.sae.methods.common import AuxKConfig, EncoderConfig, linear_parts
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import NormMatching
from saekit.sae.selectors.norm_matching import RULES

LOSS_TARGETS = ("input", "centred")


@dataclass
class TopAFAConfig(EncoderConfig, AuxKConfig):
    """Saved SAEs keep the k_max they were trained with."""

    rule: str = option(
        "nearest",
        "top-AFA: keep the prefix whose code norm is nearest to the input's, or the first to "
        "exceed it",
        choices=RULES,
    )
    k_max: int = option(
        4096,
        "top-AFA: cap on latents kept per token (effective min(k_max, n_latents − 1), the "
        "reference's own limit); far above the L0 top-AFA reaches on LM activations (512 bound "
        "on SmolLM2 at 2,304 latents), so it rarely binds: the share of capped tokens is the "
        "selector's cap_frac, reported by training and evaluation",
        lo=1,
    )
    afa_coeff: float = option(1 / 32, "top-AFA: λ_AFA in the reference's units", lo=0)
    loss_target: str = option(
        "input",
        "top-AFA: the norm the code's norm is matched to: 'input' (un-centred ‖x‖, the "
        "reference) or 'centred' (‖x − b_dec‖)",
        choices=LOSS_TARGETS,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.loss_target not in LOSS_TARGETS:
            raise ValueError(f"loss_target must be one of {LOSS_TARGETS}, got {self.loss_target!r}")
        if self.k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {self.k_max}")
        if self.afa_coeff < 0:
            raise ValueError(f"afa_coeff must be >= 0, got {self.afa_coeff}")


@architecture("topafa", TopAFAConfig)
def topafa(cfg: TopAFAConfig) -> Composition:
    """Per-token k: keep contributions until the code norm matches ‖x − b_dec‖;
    λ(‖f‖ − ‖x‖)² + AuxK."""
    return Composition(
        **linear_parts(cfg),
        selector=NormMatching(),
        losses=[Reconstruction(), NormMatchingLoss(), AuxK()],
    )
