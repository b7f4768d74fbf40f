"""AuxK: latents that stopped firing are asked to explain the residual (Gao et al. 2024,
arXiv:2406.04093, appendix A.2; docs/methods.md#auxk).
The one implementation behind every auxiliary dead-latent term.

Among the masked latents (dead ones; for aux_zipf, under-used ones), each token takes the
k_aux with the largest scores, their values reconstruct the stop-gradient residual
e = sg(target − x̂) without the decoder bias, and the loss is scaled by
min(n_masked / k_aux, 1). Scores are the encoder's pre-activations; for coders without an
encoder (pursuit), the correlations ⟨d_i, e⟩, i.e. the next pursuit step restricted to the
masked atoms. Signed coders rank by magnitude and keep signs; the others ReLU.
Gradient reaches the masked latents only, through their values and their atoms.
"""

from __future__ import annotations

import torch

from saekit.sae.encoders import PreActivations
from saekit.sae.losses.base import LossTerm
from saekit.sae.sparse import SparseCode, from_topk, row_topk, sparse_decode


def default_k_aux(sae) -> int:
    """k_aux = d_in / 2 unless configured (as sparsify, SAELens, dictionary_learning)."""
    return getattr(sae.cfg, "k_aux", None) or max(1, sae.d_in // 2)


def auxk_loss(sae, fwd, mask: torch.Tensor | None) -> torch.Tensor:
    """The scaled AuxK term (unweighted) for the latents in `mask` [n_latents] bool."""
    residual = (fwd.target - fwd.x_hat).detach()
    if mask is None or not bool(mask.any()):
        return residual.new_zeros(())
    k_aux = default_k_aux(sae)
    masked = mask.nonzero().squeeze(1)
    k = min(k_aux, masked.numel())
    pre = fwd.pre if fwd.pre is not None else PreActivations(residual, sae.W_dec, None)
    with torch.no_grad():
        scores = pre.columns(masked)
        if sae.signed_codes:
            scores = scores.abs()
        idx = row_topk(scores, k)[1]
    rows, cols = from_topk(masked[idx], sae.n_latents)
    values = pre.at(rows, cols)
    if not sae.signed_codes:
        values = values.relu()
    code = SparseCode(rows, cols, values, residual.shape[0], sae.n_latents)
    e_hat = sparse_decode(code, sae.W_dec, None)
    return min(masked.numel() / k_aux, 1.0) * (residual - e_hat).pow(2).sum(-1).mean()


class AuxK(LossTerm):
    """aux_coeff · AuxK on the dead latents (config: k_aux, aux_coeff)."""

    def compute(self, sae, fwd, stats):
        coeff = sae.cfg.aux_coeff
        if coeff <= 0:
            return {}
        return {"auxk": coeff * auxk_loss(sae, fwd, fwd.ctx.dead_mask)}
