"""ReLU + L1 in Anthropic's April-2024 form (methods.md §8): free atom norms, an L1 penalty
weighted by them, the coefficient warmed up from 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.sae.base import SAE, SAEConfig, TrainContext, TrainOutput, reconstruction_loss
from saekit.sae.registry import register


@dataclass
class ReLUConfig(SAEConfig):
    l1_coeff: float = 5.0  # λ at E||x|| = sqrt(d_in)
    l1_warmup: float = 0.05  # fraction of training over which λ ramps linearly from 0
    init_atom_norm: float = 0.1


@register
class ReLUSAE(SAE):
    """f = ReLU(W_enc (x - b_dec) + b_enc);  L = ||x - x̂||² + λ Σ_i f_i ||d_i||."""

    architecture = "relu"
    Config = ReLUConfig
    unit_norm_decoder = False
    cfg: ReLUConfig

    def __init__(self, cfg: ReLUConfig):
        super().__init__(cfg)
        with torch.no_grad():
            self.W_dec.mul_(cfg.init_atom_norm)
            self.W_enc.mul_(cfg.init_atom_norm)

    def encode(self, x: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        return self.pre_activations(x).relu()

    def l1_coeff_at(self, progress: float) -> float:
        if self.cfg.l1_warmup <= 0:
            return self.cfg.l1_coeff
        return self.cfg.l1_coeff * min(1.0, progress / self.cfg.l1_warmup)

    def training_forward(self, x: torch.Tensor, ctx: TrainContext) -> TrainOutput:
        codes = self.encode(x)
        x_hat = self.decode(codes)
        coeff = self.l1_coeff_at(ctx.progress)
        l1 = (codes * self.W_dec.norm(dim=-1)).sum(-1).mean()
        losses = {"mse": reconstruction_loss(x, x_hat), "l1": coeff * l1}
        return TrainOutput(x_hat, codes.detach(), losses, stats={"l1_coeff": coeff})

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        # Exact for ReLU (positively homogeneous per latent): d_i/n_i, e_i*n_i, b_enc,i*n_i.
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_dec /= norms[:, None]
        self.W_enc *= norms[:, None]
        self.b_enc *= norms
