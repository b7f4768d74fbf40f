"""The AFA diagnostic for any SAE: does the code norm match the input norm? (evaluation.md §8,
methods.md §5.2).

Per token, f̃ = [f_i‖d_i‖ for every latent] ⊕ [‖b_dec‖] is the code on unit-norm atoms with
the decoder bias as one extra atom. If the active atoms were ε-quasi-orthogonal and
x = Σ f̃_j u_j exactly, then |‖x‖² − ‖f̃‖²| ≤ ε(‖f̃‖₁² − ‖f̃‖₂²) ≤ ε(h − 1)‖f̃‖², with h the
number of active atoms (Cauchy–Schwarz: ‖f̃‖₁² ≤ h‖f̃‖₂²). The smallest ε consistent with a
token, in both forms (labelled):

  eps_lbo_h   = |‖x‖² − ‖f̃‖²| / ((h − 1)‖f̃‖²)      (the reference plots' form)
  eps_lbo_l1  = |‖x‖² − ‖f̃‖²| / (‖f̃‖₁² − ‖f̃‖₂²)    (the tighter form of the same inequality)

Both are NaN where undefined (a single active atom). Lower is better; the bound is vacuous
once ε(h − 1) ≥ 1, so treat ε_LBO as a relative diagnostic. Above the diagonal of the ZF plot
(‖f̃‖ > ‖x‖) a token is over-activated, below it under-activated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from saekit.data.stream import ActivationStream
from saekit.sae.base import SAE

BANDS = (0.25, 0.5, 1.0)  # values of ε(h − 1) drawn on the ZF plot


@torch.no_grad()
def afa_quantities(
    x: torch.Tensor, codes: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Per-token AFA quantities, float64 [n] each.

    x [n, d_in] raw inputs; codes [n, n_latents]; W_dec [n_latents, d_in]; b_dec [d_in].
    Returns input_norm ‖x‖, code_norm ‖f̃‖, n_atoms h, eps_lbo_h, eps_lbo_l1 and nmse
    ‖x − x̂‖²/‖x‖² (x̂ = codes W_dec + b_dec).
    """
    x, codes, W = x.double(), codes.double(), W_dec.double()
    scaled = (codes * W.norm(dim=-1)).abs()  # |f_i| ‖d_i‖ [n, n_latents]
    bias = W.new_zeros(()) if b_dec is None else b_dec.double().norm()
    sq = scaled.pow(2).sum(-1) + bias.pow(2)  # ‖f̃‖₂²
    l1 = scaled.sum(-1) + bias  # ‖f̃‖₁
    h = (scaled > 0).sum(-1) + (bias > 0).long()
    gap = (x.pow(2).sum(-1) - sq).abs()
    nan = torch.full_like(gap, math.nan)
    eps_h = torch.where(h > 1, gap / ((h - 1) * sq).clamp_min(1e-300), nan)
    pairs = l1.pow(2) - sq  # Σ_{i≠j} |f̃_i f̃_j| ≥ 0
    eps_l1 = torch.where((h > 1) & (pairs > 0), gap / pairs.clamp_min(1e-300), nan)
    x_hat = codes @ W + (0 if b_dec is None else b_dec.double())
    nmse = (x - x_hat).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-300)
    return {
        "input_norm": x.norm(dim=-1),
        "code_norm": sq.sqrt(),
        "n_atoms": h.double(),
        "eps_lbo_h": eps_h,
        "eps_lbo_l1": eps_l1,
        "nmse": nmse,
    }


@torch.no_grad()
def decoder_coherence(W_dec: torch.Tensor, chunk: int = 2048) -> dict[str, float]:
    """ε_max = max_{i≠j} |cos(d_i, d_j)| and the mean off-diagonal cosine, signed (as the
    reference logs it) and absolute; the Gram matrix is built in row chunks."""
    d = W_dec.double() / W_dec.double().norm(dim=-1, keepdim=True).clamp_min(1e-300)
    p = d.shape[0]
    if p < 2:
        return {"eps_max": math.nan, "mean_offdiag_cos": math.nan, "mean_abs_offdiag_cos": math.nan}
    eps_max, total, total_abs = 0.0, 0.0, 0.0
    for start in range(0, p, chunk):
        g = d[start : start + chunk] @ d.T
        rows = torch.arange(g.shape[0])
        g[rows, rows + start] = 0.0  # drop the diagonal
        eps_max = max(eps_max, float(g.abs().max()))
        total += float(g.sum())
        total_abs += float(g.abs().sum())
    n_pairs = p * (p - 1)
    return {
        "eps_max": eps_max,
        "mean_offdiag_cos": total / n_pairs,
        "mean_abs_offdiag_cos": total_abs / n_pairs,
    }


def summarise(q: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Medians, means and over/under-activation fractions of `afa_quantities` output."""
    x, f = q["input_norm"], q["code_norm"]
    out: dict[str, Any] = {"n_tokens": int(x.numel())}
    for key in ("eps_lbo_h", "eps_lbo_l1", "nmse", "n_atoms"):
        v = q[key][~torch.isnan(q[key])]
        out[f"median_{key}"] = float(v.median()) if v.numel() else math.nan
        out[f"mean_{key}"] = float(v.mean()) if v.numel() else math.nan
    out["frac_undefined_eps"] = float(torch.isnan(q["eps_lbo_h"]).double().mean())
    out["frac_over_activated"] = float((f > x).double().mean())
    out["frac_under_activated"] = float((f < x).double().mean())
    out["median_norm_ratio"] = float((f / x.clamp_min(1e-300)).median())
    for c in BANDS:
        # Outside the band y ∈ [x/√(1+c), x/√(1−c)] (the upper edge is infinite at c = 1).
        below = f < x / math.sqrt(1 + c)
        above = f > x / math.sqrt(1 - c) if c < 1 else torch.zeros_like(below)
        out[f"frac_outside_band_{c:g}"] = float((below | above).double().mean())
    return out


@torch.no_grad()
def afa_diagnostic(
    sae: SAE,
    stream: ActivationStream,
    n_tokens: int = 16384,
    **knobs: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Per-token quantities (concatenated) and their summary, with decoder coherence, over
    ``n_tokens`` tokens of ``stream``. Batch extras reach the encoder for SAEs that need them
    (g-SAE's "grad"); ``knobs`` (e.g. k=64) are passed to ``sae.encode``."""
    parts: list[dict[str, torch.Tensor]] = []
    seen = 0
    for batch in stream:
        x = batch.x.float()
        codes = sae.encode(x, extras=batch.extras, **knobs)
        parts.append(afa_quantities(x, codes, sae.W_dec, sae.b_dec))
        seen += len(batch)
        if seen >= n_tokens:
            break
    if not parts:
        raise ValueError("the stream yielded no tokens")
    q = {k: torch.cat([p[k] for p in parts])[:n_tokens] for k in parts[0]}
    summary = summarise(q)
    summary["coherence"] = decoder_coherence(sae.W_dec.detach())
    return q, summary


def zf_plot(
    q: dict[str, torch.Tensor],
    path: str | Path,
    title: str = "",
    max_points: int = 5000,
    seed: int = 0,
) -> Path:
    """Scatter ‖x‖ (horizontal) vs ‖f̃‖ (vertical) with y = x and the bands
    y = x/√(1 ± ε(h−1)), ε(h−1) ∈ {0.25, 0.5, 1}; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, f = q["input_norm"], q["code_norm"]
    if x.numel() > max_points:
        idx = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(seed))
        x, f = x[idx[:max_points]], f[idx[:max_points]]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(x.numpy(), f.numpy(), s=3, alpha=0.4, color="tab:blue", label="tokens")
    hi = float(max(x.max(), f.max())) * 1.05
    grid = torch.linspace(0, hi, 100).numpy()
    ax.plot(grid, grid, color="black", lw=1, label="‖f̃‖ = ‖x‖")
    for c, color in zip(BANDS, ("tab:green", "tab:orange", "tab:red")):
        ax.plot(grid, grid / math.sqrt(1 + c), color=color, lw=0.8, ls="--",
                label=f"ε(h−1) = {c:g}")  # fmt: skip
        if c < 1:
            ax.plot(grid, grid / math.sqrt(1 - c), color=color, lw=0.8, ls="--")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("input norm ‖x‖")
    ax.set_ylabel("code norm ‖f̃‖ (decoder-norm scaled, with ‖b_dec‖)")
    ax.set_title(title or "ZF plot: above = over-activation, below = under-activation", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["afa_diagnostic", "afa_quantities", "decoder_coherence", "summarise", "zf_plot"]
