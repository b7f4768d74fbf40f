"""MP-SAE: matching pursuit over the decoder atoms as the encoder (Costa, Fel et al. 2025,
arXiv 2506.03093). No encoder weights; b_dec is the pursuit's b_pre."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.sae.base import SAEConfig
from saekit.sae.dictionary import Dictionary
from saekit.sae.losses import AuxK, Reconstruction
from saekit.sae.pursuit import SIGNS
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import MatchingPursuit


@dataclass
class PursuitOptions(SAEConfig):
    """n_steps: pursuit steps T (the cap at inference too). sign: `nonneg` (argmax ReLU(c),
    codes ≥ 0, comparable with TopK), `signed` (argmax c) or `abs` (classic MP: argmax |c|,
    signed coefficient). residual_threshold / relative_threshold: default adaptive stop
    ‖r‖ < τ or ‖r‖²/‖x − b_pre‖² < τ_rel, in training and inference alike; None = off.
    refresh_every: exact correlation recompute interval of the Gram path (fp32 drift).
    gram_budget_mb: largest n_latents² Gram to build; beyond it only the rows of selected
    atoms are computed. cache_gram: keep the inference Gram until W_dec changes.
    """

    n_steps: int = 32
    sign: str = "nonneg"
    residual_threshold: float | None = None
    relative_threshold: float | None = None
    refresh_every: int | None = 32
    gram_budget_mb: float = 1024.0
    cache_gram: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.sign not in SIGNS:
            raise ValueError(f"sign must be one of {', '.join(SIGNS)}, got {self.sign!r}")


@dataclass
class MPSAEConfig(PursuitOptions):
    """use_b_pre: learn b_pre (= b_dec); off keeps it at 0 as overcomplete does. k_aux,
    aux_coeff: the dead-atom AuxK term on the final residual."""

    use_b_pre: bool = True
    k_aux: int | None = None
    aux_coeff: float = 1 / 32


@architecture("mpsae", MPSAEConfig)
def mpsae(cfg: MPSAEConfig) -> Composition:
    """T matching-pursuit steps over the dictionary itself; re-selection; adaptive stop at
    inference; AuxK on the final residual for dead atoms."""
    dictionary = Dictionary(learn_bias=cfg.use_b_pre, bias_from_data=cfg.use_b_pre)
    return Composition(
        dictionary, None, MatchingPursuit(cfg.sign), losses=[Reconstruction(), AuxK()]
    )
