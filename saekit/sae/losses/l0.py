"""L0 with an optional target (JumpReLU, Rajamanoharan et al. 2024b, arXiv 2407.14435 eq. 10).

λ · mean_t Σ_i H(π_ti − θ_i), differentiated through the straight-through kernel, so it
trains only the thresholds. Why the target mode: with a fixed λ the reached L0 depends on the
data scale, ε and the run length. When `target_l0` is set, λ is a dual variable: after each
training step it is multiplied by exp(target_lr · clip(L0/target − 1, ±1)), so an L0 above
target raises the pressure and one below lowers it.
"""

from __future__ import annotations

import math

import torch

from saekit.sae.losses.base import LossTerm, warmed_up
from saekit.sae.selectors.jumprelu import StepFunction


class L0(LossTerm):
    def attach(self, sae, atoms, gen):
        sae.register_buffer("sparsity_coeff", torch.tensor(sae.cfg.sparsity_coeff))

    def compute(self, sae, fwd, stats):
        cfg = sae.cfg
        l0 = StepFunction.apply(fwd.pre.full(), sae.threshold, cfg.bandwidth).sum(-1).mean()
        coeff = float(sae.sparsity_coeff)
        if cfg.target_l0 is None:
            coeff = warmed_up(coeff, fwd.ctx.progress, cfg.sparsity_warmup)
        elif sae.training:
            with torch.no_grad():
                ratio = float(l0) / cfg.target_l0 - 1.0
                step = math.exp(cfg.target_lr * max(-1.0, min(1.0, ratio)))
                sae.sparsity_coeff.mul_(step).clamp_(1e-8, 1e4)
        stats["sparsity_coeff"] = coeff
        return {"l0": coeff * l0}
