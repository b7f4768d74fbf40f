"""Matryoshka prefixes (Bussmann, Nabeshima, Karvonen, Nanda 2025, arXiv 2503.17547 eq. 3):
every prefix of the dictionary must reconstruct the target on its own, so early latents
learn general features and later ones refine them. Replaces the plain reconstruction term:

    L = (ℓ(b_dec) + Σ_g ℓ(x̂_g)) / (G + 1),  x̂_g = b_dec + decoded first g groups.
"""

from __future__ import annotations

import torch

from saekit.sae.losses.base import LossTerm, reconstruction_loss
from saekit.sae.sparse import sparse_decode


class MatryoshkaPrefixes(LossTerm):
    """Config: group_sizes (summing to n_latents). Needs a sparse code."""

    def compute(self, sae, fwd, stats):
        code = fwd.code
        bounds = torch.tensor(sae.cfg.group_sizes, device=code.cols.device).cumsum(0)
        group = torch.bucketize(code.cols, bounds, right=True)  # group index of each entry
        prefix = sae.b_dec.expand_as(fwd.target)
        terms = [reconstruction_loss(fwd.target, prefix)]
        for g in range(len(sae.cfg.group_sizes)):
            prefix = prefix + sparse_decode(code.select(group == g), sae.W_dec, None)
            terms.append(reconstruction_loss(fwd.target, prefix))
        return {"matryoshka_mse": torch.stack(terms).mean()}
