"""Reconstruction of the target (the input, or a transcoder's target)."""

from __future__ import annotations

from saekit.sae.losses.base import LossTerm, reconstruction_loss


class Reconstruction(LossTerm):
    def compute(self, sae, fwd, stats):
        return {"mse": reconstruction_loss(fwd.target, fwd.x_hat)}
