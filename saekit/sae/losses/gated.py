"""The Gated SAE's auxiliary reconstruction (Rajamanoharan et al. 2024a, arXiv 2404.16014
eq. 8): ‖x − (ReLU(π_gate) sg(W_dec) + sg(b_dec))‖². The Heaviside gate passes no gradient,
so the gate learns which latents to fire from this term and the L1 on ReLU(π_gate); the frozen
decoder keeps it from training the dictionary."""

from __future__ import annotations

from saekit.sae.losses.base import LossTerm, reconstruction_loss


class GatedAuxiliary(LossTerm):
    def compute(self, sae, fwd, stats):
        via_gate = fwd.pre.full().relu() @ sae.W_dec.detach() + sae.b_dec.detach()
        return {"gated_aux": reconstruction_loss(fwd.target, via_gate)}
