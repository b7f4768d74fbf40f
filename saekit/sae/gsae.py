"""g-SAE: TopK whose selection is guided by the downstream-loss gradient (Olmo et al. 2025;
methods.md §4).

With a = ReLU(pre) and g = ∂L/∂x (the downstream loss's gradient at the hooked activation,
a constant per token), the latents kept are the top-k of the score

    σ = pre + β · a ⊙ |W_dec g|        (= a ⊙ (1 + β|W_dec g|) wherever pre > 0)

and their values are the plain activations a. Removing latent i changes the loss by about
−a_i ⟨d_i, g⟩, so a small activation with a large effect can win a slot. Where pre ≤ 0 the
score is pre itself, exactly TopK's ranking, so β = 0 is TopK bit for bit (ties included).
Only *which* latents are kept changes; the loss is TopK's (reconstruction + AuxK).

Inference modes: "gradient" (the training rule; needs g per token) and "topk" (plain TopK on
the same weights, no gradient needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.sae.registry import register
from saekit.sae.sparse import from_topk
from saekit.sae.topk import TopKConfig, TopKSAE

GRAD_NORMS = ("none", "unit")
INFERENCE_MODES = ("gradient", "topk")


@dataclass
class GSAEConfig(TopKConfig):
    """beta: weight of the gradient term. Saved SAEs store it in raw activation units (see
    `GSAE.fold_input_scale`).
    grad_norm: "none" uses g as given; "unit" uses g/‖g‖ per token, which makes β mean the
      same on every token and makes β independent of the input scale and of the loss's
      sum-vs-mean reduction.
    clip: cap on |W_dec g| (after grad_norm); guards against heavy-tailed gradients letting
      one direction dominate the ranking. None = no cap.
    inference: default mode of `encode`: "gradient" or "topk".
    """

    beta: float = 1.0
    grad_norm: str = "none"
    clip: float | None = None
    inference: str = "gradient"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.grad_norm not in GRAD_NORMS:
            raise ValueError(f"grad_norm must be one of {GRAD_NORMS}, got {self.grad_norm!r}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be positive or None, got {self.clip}")
        if self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {self.inference!r}")


class MissingGradientError(ValueError):
    """g-SAE asked to select by gradient without the gradient."""


def require_grad(grad: torch.Tensor | None, x_shape: torch.Size) -> torch.Tensor:
    if grad is None:
        raise MissingGradientError(
            "g-SAE in 'gradient' mode needs the downstream-loss gradient per token: pass "
            "grad=[batch, d_in] (saekit.data.gradients.capture_gradients computes it; "
            "GradientModelStream or a `saekit cache --with-grad` cache supplies it as "
            "extras['grad']), or encode with mode='topk' for plain TopK on the same weights"
        )
    if grad.shape != x_shape:
        raise ValueError(f"grad must have the shape of x {tuple(x_shape)}, got {tuple(grad.shape)}")
    return grad


@register
class GSAE(TopKSAE):
    """Gradient-informed TopK: rank by pre + β·a·|W_dec g|, keep a (module docstring)."""

    architecture = "gsae"
    Config = GSAEConfig
    cfg: GSAEConfig
    needs_extras = ("grad",)

    @torch.no_grad()
    def impact(self, grad: torch.Tensor) -> torch.Tensor:
        """|W_dec g| after normalisation and clipping: [batch, d_in] -> [batch, n_latents]."""
        g = grad.to(self.W_dec.dtype)
        if self.cfg.grad_norm == "unit":
            g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        s = (g @ self.W_dec.T).abs()
        return s if self.cfg.clip is None else s.clamp_max(self.cfg.clip)

    @torch.no_grad()
    def scores(self, pre: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Selection score [batch, n_latents] from pre-activations and gradients."""
        return torch.addcmul(pre, pre.relu(), self.impact(grad), value=self.cfg.beta)

    def select(
        self, pre: torch.Tensor, **extras: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grad = require_grad(extras.get("grad"), pre.shape[:1] + self.W_dec.shape[1:])
        idx = self.scores(pre, grad).topk(self.cfg.k, dim=-1).indices
        return from_topk(idx, self.n_latents)

    def encode(
        self,
        x: torch.Tensor,
        grad: torch.Tensor | None = None,
        mode: str | None = None,
        k: int | None = None,
        **extras: torch.Tensor,
    ) -> torch.Tensor:
        """x, grad [batch, d_in] -> codes [batch, n_latents].

        mode: "gradient" (needs grad) or "topk"; default cfg.inference.
        k: kept latents per token (default cfg.k)."""
        mode = mode or self.cfg.inference
        if mode == "topk":
            return super().encode(x, k=k)
        if mode != "gradient":
            raise ValueError(
                f"unknown g-SAE encode mode {mode!r}; use {' or '.join(INFERENCE_MODES)}"
            )
        grad = require_grad(grad, x.shape)
        pre = self.pre_activations(x)
        idx = self.scores(pre, grad).topk(k or self.cfg.k, dim=-1).indices
        return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Trained on x' = s·x with g' = g/s: a' = s·a_raw and |W g'| = |W g|/s, so the raw-unit
        score is the training score / s with β_raw = β/s and clip_raw = clip·s. With
        grad_norm="unit" the impact term is scale-free and β, clip stay as they are."""
        super().fold_input_scale(scale)
        if self.cfg.grad_norm == "none":
            self.cfg.beta = self.cfg.beta / scale
            if self.cfg.clip is not None:
                self.cfg.clip = self.cfg.clip * scale
