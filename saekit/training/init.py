"""Data-dependent initialisation: input scale and decoder bias (docs/methods.md#init,
docs/methods.md#conventions)."""

from __future__ import annotations

import math

import torch


def input_scale(x: torch.Tensor) -> float:
    """Constant s with E||s·x|| = sqrt(d_in) on the sample x [n, d_in] (Anthropic/SAELens
    convention; every loss coefficient in saekit assumes it)."""
    mean_norm = float(x.double().norm(dim=-1).mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"cannot normalise inputs: mean activation norm is {mean_norm}")
    return math.sqrt(x.shape[1]) / mean_norm


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld iterations from the mean: y <- Σ w_j x_j / Σ w_j with w_j = 1/||x_j - y||.
    Robust to the few huge-norm tokens that dominate a mean. x [n, d_in] -> [d_in]."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        done = (y_new - y).norm() <= tol * y.norm().clamp_min(1e-8)
        y = y_new
        if done:
            break
    return y.float()
