"""Norm matching (top-AFA: Lee, Davies, Canby, Hockenmaier 2025, arXiv:2503.24277): keep
as many latents as it takes for the code's norm to match the input's.

Per token, with a = ReLU(π) and unit-norm atoms, ε-quasi-orthogonality gives ‖f‖ ≈ ‖x‖. So:
rank latents by a_i‖d_i‖, take prefix norms √(Σ_{r≤k} (a_(r)‖d_(r)‖)²), and keep the prefix
whose norm is closest to τ = ‖x − b_dec‖ ("nearest"; k ≤ p − 1 as in the reference) or the
first one reaching τ ("first_exceed"). k varies per token. Vectorised: one topk with a cap
k_max instead of a full sort, then a cumsum; a token whose k_max largest contributions fall
short of τ is "capped" (per-token stat "cap_frac", which evaluation reports with every
top-AFA result). The cap should rarely bind: where it does, the rule is TopK at k_max.
"""

from __future__ import annotations

import torch

from saekit.sae.selectors.base import Selector, code_at, knob, require_pre

RULES = ("nearest", "first_exceed")


def afa_prefix_length(
    contributions: torch.Tensor, target: torch.Tensor, rule: str = "nearest"
) -> torch.Tensor:
    """Number of leading entries to keep, per row.

    contributions: [batch, K] non-negative, sorted in decreasing order along each row.
    target: [batch] the norm to reach. Returns k* [batch] int64 in [1, K].
    nearest: argmin_k |√S_k − τ| (first k on ties); first_exceed: min{k : √S_k ≥ τ}, else K.
    """
    prefix = contributions.pow(2).cumsum(-1).sqrt()  # √S_k, [batch, K]
    if rule == "nearest":
        return (prefix - target[:, None]).abs().argmin(-1) + 1
    if rule == "first_exceed":
        reached = prefix >= target[:, None]
        first = reached.int().argmax(-1) + 1  # argmax of a bool row = first True
        return torch.where(reached.any(-1), first, torch.full_like(first, prefix.shape[-1]))
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


class NormMatching(Selector):
    """Knob k_max: the cap on latents kept per token (effective cap min(k_max, n − 1))."""

    knobs = ("k_max",)

    def select(self, sae, x_centered, pre, extras, training=False, k_max=None):
        pre = require_pre(pre, self)
        cap = max(1, min(int(knob(k_max, sae.cfg.k_max)), sae.n_latents - 1))
        with torch.no_grad():
            scaled = pre.detached.relu() * sae.W_dec.norm(dim=-1)  # a_i ‖d_i‖
            top = scaled.topk(cap, dim=-1)
            target = x_centered.detach().norm(dim=-1)
            k_star = afa_prefix_length(top.values, target, sae.cfg.rule)
            slots = torch.arange(cap, device=scaled.device)
            keep = (slots < k_star[:, None]) & (top.values > 0)
            rows, slot = keep.nonzero(as_tuple=True)  # row-major: rows stay sorted
            capped = top.values.pow(2).sum(-1).sqrt() < target
        cols = top.indices[rows, slot]
        stats = {"cap_frac": capped.float()}
        return code_at(pre, rows, cols, scaled.shape[0], sae.n_latents, stats=stats)
