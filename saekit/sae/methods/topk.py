"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024, arXiv 2406.04093)."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.losses import AuxK, Reconstruction
from saekit.sae.methods.common import AuxKConfig, EncoderConfig, check_k, linear_parts
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import TopK


@dataclass
class TopKConfig(EncoderConfig, AuxKConfig):
    k: int = option(32, "latents kept per token (the sparsity L0)", lo=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self.k, self.n_latents)


@architecture("topk", TopKConfig)
def topk(cfg: TopKConfig) -> Composition:
    """TopK of ReLU pre-activations; AuxK on dead latents."""
    return Composition(**linear_parts(cfg), selector=TopK(), losses=[Reconstruction(), AuxK()])
