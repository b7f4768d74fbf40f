"""Gradient-guided TopK (g-SAE: Olmo et al. 2025, arXiv:2411.10397).

With a = ReLU(π) and g = ∂L/∂x (the downstream loss's gradient at the hooked activation, a
constant per token), the kept latents are the top-k of the score

    σ = π + β · a ⊙ |W_dec g|        (= a ⊙ (1 + β|W_dec g|) wherever π > 0)

and their values are the plain activations a. Removing latent i changes the loss by about
−a_i ⟨d_i, g⟩, so a small activation with a large effect can win a slot. Where π ≤ 0 the
score is π itself, exactly TopK's ranking, so β = 0 is TopK bit for bit (ties included).

Inference follows the config's `inference`: "gradient" (needs g per token, which for a
next-token loss contains the label: its ΔCE is label-informed) or "topk" (plain TopK on the
same weights). `sae.with_selector(TopK())` gives the TopK view of any g-SAE.
"""

from __future__ import annotations

import torch

from saekit.sae.selectors.base import Selector, knob, require_pre, topk_code


class GradientTopK(Selector):
    knobs = ("k",)
    needs_extras = ("grad",)

    def missing_extras_message(self, missing):
        return (
            "g-SAE in 'gradient' mode needs the downstream-loss gradient per token: pass "
            "extras={'grad': [batch, d_in]} (saekit.data.gradients.capture_gradients computes "
            "it; GradientModelStream or a `saekit cache --with-grad` cache supplies it), or "
            "use the TopK view: sae.with_selector(saekit.sae.selectors.TopK())"
        )

    @torch.no_grad()
    def impact(self, sae, grad: torch.Tensor) -> torch.Tensor:
        """|W_dec g| after normalisation and clipping: [batch, d_in] -> [batch, n_latents]."""
        g = grad.to(sae.W_dec.dtype)
        if sae.cfg.grad_norm == "unit":
            g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        s = (g @ sae.W_dec.T).abs()
        return s if sae.cfg.clip is None else s.clamp_max(sae.cfg.clip)

    @torch.no_grad()
    def scores(self, sae, pre: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Selection score [batch, n_latents] from pre-activations and gradients."""
        return torch.addcmul(pre, pre.relu(), self.impact(sae, grad), value=sae.cfg.beta)

    def select(self, sae, x_centered, pre, extras, training=False, k=None):
        pre = require_pre(pre, self)
        k = int(knob(k, sae.cfg.k))
        if not training and sae.cfg.inference == "topk":
            return topk_code(pre, pre.detached, k, sae.n_latents)
        grad = extras["grad"]
        if grad.shape != x_centered.shape:
            raise ValueError(
                f"grad must have the shape of x {tuple(x_centered.shape)}, got {tuple(grad.shape)}"
            )
        return topk_code(pre, self.scores(sae, pre.detached, grad), k, sae.n_latents)

    def extras_needed(self, sae, training: bool) -> tuple[str, ...]:
        return self.needs_extras if training or sae.cfg.inference == "gradient" else ()

    @torch.no_grad()
    def fold_input_scale(self, sae, scale):
        """Trained on x' = s·x with g' = g/s: a' = s·a_raw and |W g'| = |W g|/s, so the raw-unit
        score is the training score / s with β_raw = β/s and clip_raw = clip·s. With
        grad_norm="unit" the impact term is scale-free and β, clip stay as they are."""
        if sae.cfg.grad_norm == "none":
            sae.cfg.beta = sae.cfg.beta / scale
            if sae.cfg.clip is not None:
                sae.cfg.clip = sae.cfg.clip * scale
