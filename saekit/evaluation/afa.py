"""The AFA diagnostic for any SAE: does the code norm match the input norm? (docs/evaluation.md#afa,
docs/methods.md#afa-bound; Lee, Davies, Canby, Hockenmaier 2025, arXiv:2503.24277).

Per token, f̃ = [f_i‖d_i‖ for every latent] ⊕ [‖b_dec‖] is the code on unit-norm atoms with
the decoder bias as one extra atom. If the atoms were ε-quasi-orthogonal and x = Σ f̃_j u_j
exactly, then |‖x‖² − ‖f̃‖²| ≤ ε(‖f̃‖₁² − ‖f̃‖₂²) ≤ ε(h − 1)‖f̃‖² for any h at least the
number of non-zero entries of f̃ (Cauchy–Schwarz: ‖f̃‖₁² ≤ h‖f̃‖₂²). The smallest ε consistent
with a token, in three forms, each under its own name:

  eps_lbo_width   = |‖x‖² − ‖f̃‖²| / ((p − 1)‖f̃‖²), h = p the dictionary width: the form
                    of the top-AFA paper (Lee et al. 2025, arXiv 2503.24277), whose h is the
                    SAE's width;
  eps_lbo_active  = |‖x‖² − ‖f̃‖²| / ((h − 1)‖f̃‖²), h = the active atoms of f̃ (active
                    latents, plus the bias atom when b_dec ≠ 0): per-token sparsity enters
                    it, so it ranks SAEs of different L0 differently from eps_lbo_width;
  eps_lbo_l1      = |‖x‖² − ‖f̃‖²| / (‖f̃‖₁² − ‖f̃‖₂²), the tighter form of the same inequality.

eps_lbo_active and eps_lbo_l1 are NaN where undefined (a single active atom). Lower is better;
the bound is vacuous once ε(h − 1) ≥ 1, so treat ε_LBO as a relative diagnostic. Above the
diagonal of the ZF plot (‖f̃‖ > ‖x‖) a token is over-activated, below it under-activated.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from saekit.evaluation.base import EvalRun, selection_means
from saekit.sae.base import SAE

BANDS = (0.25, 0.5, 1.0)  # values of ε(h − 1) drawn on the ZF plot
EPS_FORMS = ("eps_lbo_width", "eps_lbo_active", "eps_lbo_l1")
ZF_POINTS = 1000  # tokens kept in the JSON for the ZF plot


@torch.no_grad()
def afa_quantities(
    x: torch.Tensor, codes: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Per-token AFA quantities, float64 [n] each.

    x [n, d_in] raw inputs; codes [n, n_latents]; W_dec [n_latents, d_in]; b_dec [d_in].
    Returns input_norm ‖x‖, code_norm ‖f̃‖, n_atoms h (active atoms of f̃), the three ε_LBO
    forms (module docstring) and nmse ‖x − x̂‖²/‖x‖² (x̂ = codes W_dec + b_dec).
    """
    x, codes, W = x.double(), codes.double(), W_dec.double()
    width = W.shape[0]
    scaled = (codes * W.norm(dim=-1)).abs()  # |f_i| ‖d_i‖ [n, n_latents]
    bias = W.new_zeros(()) if b_dec is None else b_dec.double().norm()
    sq = scaled.pow(2).sum(-1) + bias.pow(2)  # ‖f̃‖₂²
    l1 = scaled.sum(-1) + bias  # ‖f̃‖₁
    h = (scaled > 0).sum(-1) + (bias > 0).long()
    gap = (x.pow(2).sum(-1) - sq).abs()
    nan = torch.full_like(gap, math.nan)
    eps_width = torch.where(sq > 0, gap / ((width - 1) * sq).clamp_min(1e-300), nan)
    eps_active = torch.where(h > 1, gap / ((h - 1) * sq).clamp_min(1e-300), nan)
    pairs = l1.pow(2) - sq  # Σ_{i≠j} |f̃_i f̃_j| ≥ 0
    eps_l1 = torch.where((h > 1) & (pairs > 0), gap / pairs.clamp_min(1e-300), nan)
    x_hat = codes @ W + (0 if b_dec is None else b_dec.double())
    nmse = (x - x_hat).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-300)
    return {
        "input_norm": x.norm(dim=-1),
        "code_norm": sq.sqrt(),
        "n_atoms": h.double(),
        "eps_lbo_width": eps_width if width > 1 else nan,
        "eps_lbo_active": eps_active,
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
    for key in (*EPS_FORMS, "nmse", "n_atoms"):
        v = q[key][~torch.isnan(q[key])]
        out[f"median_{key}"] = float(v.median()) if v.numel() else math.nan
        out[f"mean_{key}"] = float(v.mean()) if v.numel() else math.nan
    out["frac_undefined_eps_active"] = float(torch.isnan(q["eps_lbo_active"]).double().mean())
    out["frac_over_activated"] = float((f > x).double().mean())
    out["frac_under_activated"] = float((f < x).double().mean())
    out["median_norm_ratio"] = float((f / x.clamp_min(1e-300)).median())
    for c in BANDS:
        # Outside the band y ∈ [x/√(1+c), x/√(1−c)] (the upper edge is infinite at c = 1).
        below = f < x / math.sqrt(1 + c)
        above = f > x / math.sqrt(1 - c) if c < 1 else torch.zeros_like(below)
        out[f"frac_outside_band_{c:g}"] = float((below | above).double().mean())
    return out


def zf_sample(q: dict[str, torch.Tensor], n: int = ZF_POINTS, seed: int = 0) -> dict[str, list]:
    """Up to n tokens' (‖x‖, ‖f̃‖), drawn at random: what the ZF plot shows."""
    keep = torch.randperm(q["input_norm"].numel(), generator=torch.Generator().manual_seed(seed))
    keep = keep[:n].sort().values
    return {key: q[key][keep].tolist() for key in ("input_norm", "code_norm")}


@torch.no_grad()
def afa_diagnostic(
    sae: SAE,
    x: torch.Tensor,
    extras: dict[str, torch.Tensor] | None = None,
    batch_size: int = 1024,
    **knobs: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Per-token quantities of x [n, d_in] and their summary, with decoder coherence and the
    means of the selector's per-token stats (top-AFA: "cap_frac", the share of tokens whose
    k_max cap bound) under "selection". ``extras`` ([n, ...] each, e.g. g-SAE's "grad") and
    ``knobs`` (e.g. k=64) reach ``sae.encode``."""
    parts: list[dict[str, torch.Tensor]] = []
    stats: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].float()
        eb = {k: v[start : start + batch_size] for k, v in (extras or {}).items()}
        codes, batch_stats = sae.encode_with_stats(xb, eb, **knobs)
        # The code lives where the coder reads x: a standardised SAE's code is compared with
        # the standardised token, not the raw one.
        parts.append(afa_quantities(sae.coder_input(xb)[0], codes, sae.W_dec, sae.b_dec))
        stats.append(batch_stats)
    if not parts:
        raise ValueError("no tokens")
    q = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    summary = summarise(q)
    summary["coherence"] = decoder_coherence(sae.W_dec.detach())
    if stats[0]:
        summary["selection"] = selection_means(
            {k: torch.cat([s[k] for s in stats]) for k in stats[0]}
        )
    return q, summary


def afa_group(run: EvalRun) -> dict[str, Any]:
    """The afa group, on the core group's held-out sample."""
    run.require_not_transcoder(
        "afa compares the code norm with ‖x‖; a transcoder predicts a target"
    )
    q, summary = afa_diagnostic(run.label_free.sae, run.require_sample())
    summary["zf_sample"] = zf_sample(q, seed=run.settings.seed)
    return {"afa": {**summary, **run.mode_note()}}


__all__ = [
    "EPS_FORMS",
    "afa_diagnostic",
    "afa_group",
    "afa_quantities",
    "decoder_coherence",
    "summarise",
    "zf_sample",
]
