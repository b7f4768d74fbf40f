"""aux_zipf: AuxK for under-used latents, not only dead ones (after Ayonrinde 2024, arXiv
2411.02124, whose exact form is unpublished; this is our reading: docs/methods.md#aux-zipf).

TopK-style latent densities follow a Zipf law except in a tail of under-used latents. We keep
an EMA of each latent's firing density, fit log density ≈ log C − a·log(rank + 1) on the
well-used bulk (ranks above the bottom `zipf_tail` fraction, densities > 0), and call latent i
*dying* when its density is below zipf_slack × the fitted law at its rank. Dying and dead
latents then get the AuxK term (auxk.py), weighted by aux_zipf_coeff.
"""

from __future__ import annotations

import torch

from saekit.sae.losses.auxk import auxk_loss
from saekit.sae.losses.base import LossTerm


def zipf_fit(density: torch.Tensor, tail: float) -> tuple[float, float]:
    """(log C, a) of log d ≈ log C − a log(rank + 1), fitted by least squares on the bulk:
    the densest (1 − tail) fraction of latents with density > 0. rank is 0-based."""
    d = density.double().sort(descending=True).values
    n_bulk = max(2, int(round(d.numel() * (1 - tail))))
    d = d[:n_bulk]
    d = d[d > 0]
    if d.numel() < 2:
        return 0.0, 0.0
    u = torch.arange(1, d.numel() + 1, dtype=torch.float64).log()
    v = d.log()
    a = -float(((u - u.mean()) * (v - v.mean())).sum() / (u - u.mean()).pow(2).sum())
    return float(v.mean() + a * u.mean()), a


def dying_mask(density: torch.Tensor, tail: float, slack: float) -> torch.Tensor:
    """[n_latents] bool: density below slack × the bulk's Zipf law at the latent's rank."""
    log_c, a = zipf_fit(density, tail)
    rank = torch.empty_like(density, dtype=torch.long)
    rank[density.argsort(descending=True, stable=True)] = torch.arange(density.numel())
    expected = (log_c - a * (rank.double() + 1).log()).exp()
    return density.double() < slack * expected


class AuxZipf(LossTerm):
    """Config: aux_zipf_coeff, zipf_tail, zipf_slack, density_ema (and k_aux)."""

    def attach(self, sae, atoms, gen):
        sae.register_buffer("latent_density", torch.full((atoms.shape[0],), -1.0))

    @torch.no_grad()
    def calibrate(self, sae, codes):
        fired = (codes != 0).to(sae.latent_density.dtype).mean(0)
        if bool((sae.latent_density < 0).all()):
            sae.latent_density.copy_(fired)
        else:
            sae.latent_density.lerp_(fired, sae.cfg.density_ema)

    def compute(self, sae, fwd, stats):
        cfg = sae.cfg
        if cfg.aux_zipf_coeff <= 0:
            return {}
        mask = fwd.ctx.dead_mask
        if bool((sae.latent_density >= 0).all()):
            dying = dying_mask(sae.latent_density, cfg.zipf_tail, cfg.zipf_slack)
            mask = dying if mask is None else mask | dying
        stats["dying_frac"] = float(mask.float().mean()) if mask is not None else 0.0
        return {"aux_zipf": cfg.aux_zipf_coeff * auxk_loss(sae, fwd, mask)}
