"""Intrinsic metrics on activations (docs/evaluation.md#core): reconstruction, sparsity, density,
weight geometry.

Conventions (docs/evaluation.md#conventions):
averages are ratios of sums over all evaluated tokens, accumulated
streaming in float64; a latent is active when its code is non-zero (signed codes count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Tokens whose input norm is below this use denominator 1 in the L2 ratio (docs/evaluation.md#core).
L2_RATIO_MIN_NORM = 1e-4


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")


def _validate_batch(
    x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor, n_latents: int
) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be [batch, d_in], got shape {tuple(x.shape)}")
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat shape {tuple(x_hat.shape)} != x shape {tuple(x.shape)}")
    if codes.shape != (x.shape[0], n_latents):
        raise ValueError(
            f"codes must be [batch={x.shape[0]}, n_latents={n_latents}], got {tuple(codes.shape)}"
        )
    for name, t in (("x", x), ("x_hat", x_hat), ("codes", codes)):
        _check_finite(name, t)


class ReconstructionMetrics:
    """Streaming accumulator for reconstruction and sparsity metrics.

    Call `update(x, x_hat, codes, mask)` per batch, then `compute()`. Every sum is float64.
    Per-batch quantities (`mse_saebench_v060`, `relative_reconstruction_bias`) use the
    batch's evaluated (unmasked) tokens.
    """

    def __init__(self, n_latents: int):
        if n_latents < 1:
            raise ValueError(f"n_latents must be >= 1, got {n_latents}")
        self.n_latents = n_latents
        self.n_tokens = 0
        self.n_batches = 0
        self.fire_counts = torch.zeros(n_latents, dtype=torch.float64)
        self.sum_x: torch.Tensor | None = None  # Σ x [d_in], for the centred variance
        self.sums = dict.fromkeys(
            ("l0", "l1", "sq_err", "sq_x", "mse_saebench", "cosine", "l2_ratio", "rrb"), 0.0
        )

    @torch.no_grad()
    def update(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        codes: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> None:
        """x, x_hat [batch, d_in]; codes [batch, n_latents]; mask [batch] bool (True =
        evaluate this token). Batches with no evaluated token are skipped."""
        _validate_batch(x, x_hat, codes, self.n_latents)
        if mask is not None:
            if mask.shape != (x.shape[0],) or mask.dtype != torch.bool:
                raise ValueError(
                    f"mask must be bool [batch={x.shape[0]}], got {mask.dtype} {tuple(mask.shape)}"
                )
            x, x_hat, codes = x[mask], x_hat[mask], codes[mask]
        n = x.shape[0]
        if n == 0:
            return
        # float64 on the batch's own device; only scalars and [d_in], [n_latents] sums move.
        x, x_hat, codes = x.double(), x_hat.double(), codes.double()
        if self.sum_x is None:
            self.sum_x = torch.zeros(x.shape[1], dtype=torch.float64)
        elif self.sum_x.shape[0] != x.shape[1]:
            raise ValueError(f"d_in changed between batches: {self.sum_x.shape[0]} -> {x.shape[1]}")

        active = codes != 0
        sq_err = (x - x_hat).pow(2).sum(-1)  # [batch]
        x_norm, x_hat_norm = x.norm(dim=-1), x_hat.norm(dim=-1)
        dot = (x * x_hat).sum(-1)
        s = self.sums
        s["l0"] += active.sum().item()
        s["l1"] += codes.abs().sum().item()
        s["sq_err"] += sq_err.sum().item()
        s["sq_x"] += x.pow(2).sum().item()
        # SAEBench 0.6.0 divides each token's error by the batch's token count
        # (docs/evaluation.md#saebench-formulas).
        s["mse_saebench"] += sq_err.sum().item() / n
        s["cosine"] += (dot / (x_norm * x_hat_norm).clamp_min(1e-12)).sum().item()
        denom = torch.where(x_norm < L2_RATIO_MIN_NORM, torch.ones_like(x_norm), x_norm)
        s["l2_ratio"] += (x_hat_norm / denom).sum().item()
        # Gated-SAE eq. 10: γ = E‖x̂‖² / E⟨x, x̂⟩ within the batch.
        s["rrb"] += _safe_div(x_hat_norm.pow(2).sum().item(), dot.sum().item())
        self.sum_x += x.sum(0).cpu()
        self.fire_counts += active.sum(0).cpu()
        self.n_tokens += n
        self.n_batches += 1

    def density(self) -> torch.Tensor:
        """[n_latents] float64: fraction of evaluated tokens on which each latent fired."""
        return self.fire_counts / max(self.n_tokens, 1)

    def compute(self) -> dict[str, float]:
        """All metrics as plain floats (NaN where undefined, e.g. no tokens)."""
        n, s = self.n_tokens, self.sums
        if n == 0:
            raise ValueError("no tokens evaluated: call update() with at least one token")
        d_in = self.sum_x.shape[0]
        mean_sq_err = s["sq_err"] / n
        mean_sq_x = s["sq_x"] / n
        # Σ‖x − x̄‖² = Σ‖x‖² − ‖Σx‖²/N.
        centred = s["sq_x"] - self.sum_x.pow(2).sum().item() / n
        fvu = _safe_div(s["sq_err"], centred)
        # SAEBench 0.6.0: total variance E‖x‖² − ((1/m)·E‖x‖²)², not the centred one
        # (docs/evaluation.md#saebench-formulas).
        ev_saebench = 1 - _safe_div(mean_sq_err, mean_sq_x - (mean_sq_x / d_in) ** 2)
        density = self.density()
        return {
            "n_tokens": float(n),
            "l0": s["l0"] / n,
            "l1": s["l1"] / n,
            "mse": mean_sq_err,
            "fvu": fvu,
            "ev": 1 - fvu,
            "ev_saebench_v060": ev_saebench,
            "mse_saebench_v060": s["mse_saebench"] / n,
            "cosine": s["cosine"] / n,
            "l2_ratio": s["l2_ratio"] / n,
            "relative_reconstruction_bias": s["rrb"] / self.n_batches,
            "frac_alive": (density > 0).double().mean().item(),
            "frac_dead": (density == 0).double().mean().item(),
            "frac_dense_1pct": (density > 0.01).double().mean().item(),
            "frac_dense_10pct": (density > 0.1).double().mean().item(),
        }


def _safe_div(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


# ---- density histogram ------------------------------------------------------------------


@dataclass
class DensityHistogram:
    """Histogram of log10 firing density over the alive latents.

    counts [bins]; edges [bins + 1] in log10 units; n_dead: latents with density 0 (not in
    the histogram, since log10 0 = −inf).
    """

    counts: np.ndarray
    edges: np.ndarray
    n_dead: int


def density_histogram(
    density: torch.Tensor, bins: int = 50, log10_range: tuple[float, float] | None = None
) -> DensityHistogram:
    """density [n_latents] in [0, 1] -> histogram of log10 density of the alive latents.
    The range defaults to the alive latents' min and max."""
    if density.ndim != 1:
        raise ValueError(f"density must be [n_latents], got shape {tuple(density.shape)}")
    d = density.detach().double().cpu().numpy()
    if np.isnan(d).any() or (d < 0).any() or (d > 1).any():
        raise ValueError("density must lie in [0, 1] without NaN")
    alive = d[d > 0]
    logs = np.log10(alive)
    if log10_range is None:
        log10_range = (float(logs.min()), float(logs.max())) if logs.size else (-1.0, 0.0)
        if log10_range[0] == log10_range[1]:
            log10_range = (log10_range[0] - 0.5, log10_range[1] + 0.5)
    counts, edges = np.histogram(logs, bins=bins, range=log10_range)
    return DensityHistogram(counts, edges, int((d == 0).sum()))


def plot_density_histogram(
    density: torch.Tensor, path: str | Path, bins: int = 50, title: str | None = None
) -> Path:
    """Write the log10-density histogram to a PNG; dead latents are stated in the title."""
    # Figure + Agg canvas directly: no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = density_histogram(density, bins)
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.stairs(hist.counts, hist.edges, fill=True)
    ax.set_xlabel("log10 firing density")
    ax.set_ylabel("latents")
    dead = f"{hist.n_dead} dead of {density.shape[0]}"
    ax.set_title(f"{title} ({dead})" if title else dead)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


# ---- weight geometry --------------------------------------------------------------------


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def max_cos_to_others(w: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """[p, d] -> [p]: each row's largest signed cosine with any other row, computed in
    row chunks of `chunk` so memory stays chunk × p."""
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"need a [p >= 2, d] weight matrix, got shape {tuple(w.shape)}")
    _check_finite("weights", w)
    unit = _unit_rows(w.detach().float())
    out = torch.empty(unit.shape[0], device=unit.device)
    for start in range(0, unit.shape[0], chunk):
        sims = unit[start : start + chunk] @ unit.T  # [chunk, p]
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -math.inf  # exclude each atom itself
        out[start : start + chunk] = sims.max(-1).values
    return out.cpu()


def weight_geometry(
    W_dec: torch.Tensor, W_enc: torch.Tensor | None = None, chunk: int = 4096
) -> dict[str, float]:
    """Means over latents of: max cosine of each decoder atom to another atom
    (`dec_max_cos`), the same for encoder rows (`enc_max_cos`), and cos(e_i, d_i)
    (`enc_dec_cos`). W_dec, W_enc [n_latents, d_in]."""
    out = {"dec_max_cos": max_cos_to_others(W_dec, chunk).double().mean().item()}
    if W_enc is not None:
        if W_enc.shape != W_dec.shape:
            raise ValueError(f"W_enc {tuple(W_enc.shape)} and W_dec {tuple(W_dec.shape)} differ")
        out["enc_max_cos"] = max_cos_to_others(W_enc, chunk).double().mean().item()
        pair_cos = _unit_rows(W_enc.detach().double()) * _unit_rows(W_dec.detach().double())
        out["enc_dec_cos"] = pair_cos.sum(-1).mean().item()
    return out


__all__ = [
    "DensityHistogram",
    "ReconstructionMetrics",
    "density_histogram",
    "max_cos_to_others",
    "plot_density_histogram",
    "weight_geometry",
]
