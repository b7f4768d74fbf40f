"""JumpReLU: a learned threshold per latent, trained through straight-through kernel
pseudo-gradients (Rajamanoharan et al. 2024b, arXiv 2407.14435 eqs. 11-12)."""

from __future__ import annotations

import torch

from saekit.sae.selectors.base import Selector, knob, require_pre


def rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """f = π · H(π − θ). ∂f/∂π = H (exact); ∂f/∂θ := −(θ/ε) K((π − θ)/ε)."""

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
        grad_theta = (-(threshold / eps) * rectangle((pre - threshold) / eps) * grad).sum(0)
        return grad_pre, grad_theta, None


class StepFunction(torch.autograd.Function):
    """H(π − θ). ∂H/∂π := 0 (the L0 term trains only θ); ∂H/∂θ := −(1/ε) K((π − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * rectangle((pre - threshold) / eps) * grad).sum(0)
        return None, grad_theta, None


class JumpReLU(Selector):
    """f = π ⊙ 1[π > θ]; θ [n_latents] is a raw fp32 parameter (an exp parameterisation
    under Adam can freeze θ). Inference knob threshold_scale multiplies θ."""

    knobs = ("threshold_scale",)

    def attach(self, sae, atoms, gen):
        sae.threshold = torch.nn.Parameter(torch.full((atoms.shape[0],), sae.cfg.init_threshold))

    def select(self, sae, x_centered, pre, extras, training=False, threshold_scale=None):
        p = require_pre(pre, self).full()
        if training:
            return JumpReLUFunction.apply(p, sae.threshold, sae.cfg.bandwidth)
        return p * (p > sae.threshold * knob(threshold_scale, 1.0))

    @torch.no_grad()
    def after_step(self, sae):
        sae.threshold.clamp_(min=0.0)  # θ < 0 would let negative pre-activations through

    @torch.no_grad()
    def fold_input_scale(self, sae, scale):
        sae.threshold /= scale
