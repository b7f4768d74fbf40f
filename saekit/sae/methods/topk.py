"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024, arXiv 2406.04093)."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.sae.losses import AuxK, Reconstruction
from saekit.sae.methods.common import EncoderConfig, check_k, linear_parts
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import TopK


@dataclass
class TopKConfig(EncoderConfig):
    k: int = 32
    k_aux: int | None = None  # default d_in // 2 (as sparsify, SAELens, dictionary_learning)
    aux_coeff: float = 1 / 32

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self.k, self.n_latents)


@architecture("topk", TopKConfig)
def topk(cfg: TopKConfig) -> Composition:
    """TopK of ReLU pre-activations; AuxK on dead latents."""
    return Composition(**linear_parts(cfg), selector=TopK(), losses=[Reconstruction(), AuxK()])
