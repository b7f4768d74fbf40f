"""AbsTopK (Zhu, Khalili, Zhu 2025, arXiv 2510.00404): TopK by magnitude, signs kept."""

from __future__ import annotations

from saekit.sae.losses import AuxK, Reconstruction
from saekit.sae.methods.common import linear_parts
from saekit.sae.methods.topk import TopKConfig
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import AbsTopK


@architecture("abstopk", TopKConfig)
def abstopk(cfg: TopKConfig) -> Composition:
    """The k largest |pre-activations|, signed codes (one latent for both poles); AuxK ranks
    dead latents by |pre-activation|."""
    return Composition(**linear_parts(cfg), selector=AbsTopK(), losses=[Reconstruction(), AuxK()])
