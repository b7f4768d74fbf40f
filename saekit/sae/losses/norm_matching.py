"""The top-AFA norm-matching term (Lee et al. 2025, arXiv 2503.24277 eq. 9):
λ_AFA (‖f‖₂ − ‖x‖₂)², pulling the code's norm to the input's so that the selection rule's
premise ‖f‖ ≈ ‖x − b_dec‖ holds.

afa_coeff is in the reference's units, where the MSE is a mean over elements; saekit's
reconstruction term sums over dimensions, so the term added is afa_coeff · d_in ·
mean_t (‖f‖ − ‖x‖)², which keeps the reference's balance. loss_target "input" uses the
un-centred ‖x‖ (the reference); "centred" uses ‖x − b_dec‖, the selection rule's own target.
"""

from __future__ import annotations

import torch

from saekit.sae.losses.base import LossTerm


class NormMatchingLoss(LossTerm):
    def compute(self, sae, fwd, stats):
        cfg = sae.cfg
        if cfg.afa_coeff <= 0:
            return {}
        code = fwd.code
        f_norm = torch.zeros(code.batch, dtype=code.values.dtype, device=code.values.device)
        f_norm = f_norm.index_add(0, code.rows, code.values.pow(2)).clamp_min(1e-12).sqrt()
        target = fwd.x if cfg.loss_target == "input" else fwd.x_centered.detach()
        afa = (f_norm - target.norm(dim=-1)).pow(2).mean()
        return {"afa": cfg.afa_coeff * sae.d_in * afa}
