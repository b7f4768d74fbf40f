"""JumpReLU with straight-through kernel pseudo-gradients (Rajamanoharan et al. 2024b;
methods.md §9) and a sparsity coefficient that can steer L0 to a target.

Why the target mode: with a fixed λ the reached L0 depends on the data scale, ε and the
run length, and users of other libraries report L0 that never falls. Here, when
`target_l0` is set, λ is a dual variable: after each step it is multiplied by
exp(lr·(L0/target − 1)), so L0 above target raises the pressure and below target lowers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from saekit.sae.base import SAE, SAEConfig, TrainContext, TrainOutput, reconstruction_loss
from saekit.sae.registry import register
from saekit.sae.topk import auxk_loss


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """f = pre · H(pre − θ). ∂f/∂pre = H (exact); ∂f/∂θ := −(θ/ε) K((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        grad_theta = (-(threshold / eps) * _rectangle((pre - threshold) / eps) * grad).sum(0)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    """H(pre − θ). ∂H/∂pre := 0 (the L0 term trains only θ); ∂H/∂θ := −(1/ε) K((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad).sum(0)
        return None, grad_theta, None


@dataclass
class JumpReLUConfig(SAEConfig):
    sparsity_coeff: float = 0.01  # λ on the mean L0 (initial value when target_l0 is set)
    target_l0: float | None = None  # when set, λ adapts so the L0 reaches this value
    target_lr: float = 0.01  # multiplicative step of the adaptive λ
    sparsity_warmup: float = 0.1  # fraction of training over which a fixed λ ramps from 0
    bandwidth: float = 0.05  # ε, in units of pre-activations at E||x|| = sqrt(d_in)
    init_threshold: float = 0.1
    # AuxK on dead latents: a latent whose θ rose above all its pre-activations gets no
    # gradient from either loss term and would stay dead forever.
    k_aux: int | None = None  # default d_in // 2
    aux_coeff: float = 1 / 32


@register
class JumpReLUSAE(SAE):
    """f = π ⊙ H(π − θ) with π = W_enc (x − b_dec) + b_enc and a learned θ per latent."""

    architecture = "jumprelu"
    Config = JumpReLUConfig
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        # Raw (not exp-parameterised) threshold, kept in fp32: an exp parameterisation under
        # Adam can freeze θ (methods.md §9.6).
        self.threshold = torch.nn.Parameter(torch.full((cfg.n_latents,), cfg.init_threshold))
        self.register_buffer("sparsity_coeff", torch.tensor(cfg.sparsity_coeff))

    def encode(self, x: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        return pre * (pre > self.threshold)

    def current_coeff(self, progress: float) -> float:
        if self.cfg.target_l0 is not None or self.cfg.sparsity_warmup <= 0:
            return float(self.sparsity_coeff)
        return float(self.sparsity_coeff) * min(1.0, progress / self.cfg.sparsity_warmup)

    def training_forward(self, x: torch.Tensor, ctx: TrainContext) -> TrainOutput:
        pre = self.pre_activations(x)
        eps = self.cfg.bandwidth
        codes = _JumpReLU.apply(pre, self.threshold, eps)
        x_hat = self.decode(codes)
        l0 = _Step.apply(pre, self.threshold, eps).sum(-1).mean()
        coeff = self.current_coeff(ctx.progress)
        losses = {"mse": reconstruction_loss(x, x_hat), "l0": coeff * l0}
        if self.cfg.aux_coeff > 0 and ctx.dead_mask is not None and ctx.dead_mask.any():
            k_aux = self.cfg.k_aux or max(1, self.d_in // 2)
            aux = auxk_loss(self, x - self.b_dec, pre.detach(), x - x_hat, ctx.dead_mask, k_aux)
            losses["auxk"] = self.cfg.aux_coeff * aux
        if self.training and self.cfg.target_l0 is not None:
            with torch.no_grad():
                ratio = float(l0) / self.cfg.target_l0 - 1.0
                step = math.exp(self.cfg.target_lr * max(-1.0, min(1.0, ratio)))
                self.sparsity_coeff.mul_(step).clamp_(1e-8, 1e4)
        return TrainOutput(x_hat, codes.detach(), losses, stats={"sparsity_coeff": coeff})

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        super().normalise_decoder()
        self.threshold.clamp_(min=0.0)  # θ < 0 would let negative pre-activations through

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.threshold /= scale
