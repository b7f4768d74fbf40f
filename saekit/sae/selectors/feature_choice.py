"""Feature Choice: each latent takes its top-m_i tokens of the batch (Ayonrinde 2024, arXiv
2411.02124; docs/methods.md#feature-choice),
like expert-choice routing. The capacities sum to k·batch, so the average L0
is k while a token may get any number of latents and no latent can die.

Capacities: "uniform" (m_i = k·batch/n_latents, the remainder spread over the densest
latents) or "zipf" (m_i ∝ (rank_i + zipf_b)^−zipf_a, normalised to k·batch, so common
features get more tokens than rare ones). Ranks come from a running estimate of each latent's
TopK density (how often it is among a token's k largest pre-activations): Feature Choice's own
firing rates equal the capacities, so ranking by them would only reproduce the initial order.

Inference cannot depend on the rest of the batch, so it uses a learned threshold per latent,
as BatchTopK does with one: θ_i tracks the smallest activation latent i kept in training (an
EMA) and is set exactly after training to the value that gives latent i its capacity's share
of fresh tokens. f_i = π_i ⊙ 1[π_i > θ_i · threshold_scale].
"""

from __future__ import annotations

import torch

from saekit.sae.selectors.base import Selector, code_at, knob, require_pre
from saekit.sae.sparse import sort_by_row

CAPACITIES = ("uniform", "zipf")


def capacities(
    total: int, batch: int, density: torch.Tensor, rule: str, a: float = 1.0, b: float = 1.0
) -> torch.Tensor:
    """Integer capacities [n_latents] summing to `total` (each at most `batch`, the excess
    spread over the others): the shares of `rule`, rounded by largest remainder.
    density [n_latents] orders the latents."""
    n = density.shape[0]
    rank = torch.empty(n, dtype=torch.long, device=density.device)
    order = density.argsort(descending=True, stable=True)
    rank[order] = torch.arange(n, device=density.device)
    if rule == "uniform":
        share = torch.full((n,), 1.0 / n, dtype=torch.float64, device=density.device)
    elif rule == "zipf":
        share = (rank.double() + 1 + b).pow(-a)
        share = share / share.sum()
    else:
        raise ValueError(f"capacity must be one of {CAPACITIES}, got {rule!r}")
    total = min(total, n * batch)
    exact = share * total
    full = torch.zeros(n, dtype=torch.bool, device=density.device)
    while bool((exact > batch).any()):  # a latent cannot take more than the batch: water-fill
        full |= exact >= batch
        left = total - batch * int(full.sum())
        exact = torch.where(full, float(batch), share * left / share[~full].sum())
    m = exact.floor().long()
    short = total - int(m.sum())
    if short > 0:  # largest remainders first, ties to the denser latent
        remainder = (exact - m).double() - rank.double() * 1e-12
        m[remainder.topk(short).indices] += 1
    return m


class FeatureChoice(Selector):
    knobs = ("threshold_scale",)
    finalises = True

    def attach(self, sae, atoms, gen):
        n = atoms.shape[0]
        sae.register_buffer("threshold", torch.full((n,), -1.0))  # -1: not calibrated
        sae.register_buffer("topk_density", torch.full((n,), 1.0 / n))
        sae.register_buffer("capacity_fraction", torch.full((n,), sae.cfg.k / n))

    def select(self, sae, x_centered, pre, extras, training=False, threshold_scale=None):
        pre = require_pre(pre, self)
        if training:
            return self._choose(sae, pre)
        if bool((sae.threshold < 0).any()):
            raise RuntimeError(
                "Feature Choice inference thresholds are not calibrated: train the SAE (the "
                "trainer sets them)"
            )
        p = pre.full()
        return p * (p > sae.threshold * knob(threshold_scale, 1.0))

    def _choose(self, sae, pre):
        acts = pre.detached.relu()
        batch, n = acts.shape
        cfg = sae.cfg
        m = capacities(cfg.k * batch, batch, sae.topk_density, cfg.capacity, cfg.zipf_a, cfg.zipf_b)
        with torch.no_grad():
            self._track(sae, acts, m, batch)
        top = acts.topk(int(m.max()), dim=0)  # [m_max, n_latents]: each latent's best tokens
        slot = torch.arange(top.indices.shape[0], device=acts.device)[:, None]
        keep = (slot < m[None, :]) & (top.values > 0)
        rows, cols = sort_by_row(top.indices[keep], keep.nonzero()[:, 1])
        return code_at(pre, rows, cols, batch, n)

    @staticmethod
    def _track(sae, acts, m, batch):
        in_topk = torch.zeros_like(acts, dtype=torch.bool)
        in_topk.scatter_(1, acts.topk(sae.cfg.k, dim=-1).indices, True)
        rate = sae.cfg.density_ema
        sae.topk_density.lerp_(in_topk.to(acts.dtype).mean(0), rate)
        sae.capacity_fraction.copy_(m / batch)

    @torch.no_grad()
    def calibrate(self, sae, codes):
        kept = torch.where(codes > 0, codes, torch.full_like(codes, float("inf"))).amin(0)
        seen = torch.isfinite(kept)
        fresh = seen & (sae.threshold < 0)
        sae.threshold[fresh] = kept[fresh]
        old = seen & ~fresh
        sae.threshold[old] = sae.threshold[old].lerp(kept[old], sae.cfg.threshold_ema)

    @torch.no_grad()
    def finalise(self, sae, pre):
        """θ_i = the (fraction_i · n)-th largest activation of latent i on n fresh tokens."""
        acts = pre.detached.relu()
        n_tokens = acts.shape[0]
        want = (sae.capacity_fraction * n_tokens).round().long().clamp(1, n_tokens)
        ordered = acts.sort(dim=0, descending=True).values  # [n_tokens, n_latents]
        theta = ordered.gather(0, (want - 1)[None, :]).squeeze(0)
        # A latent with fewer positive activations than its share keeps every positive one.
        sae.threshold.copy_(theta.clamp_min(0.0))

    @torch.no_grad()
    def fold_input_scale(self, sae, scale):
        calibrated = sae.threshold >= 0
        sae.threshold[calibrated] /= scale
