"""BatchTopK / Mutual Choice: the k·batch largest activations of the whole batch in training
(average L0 exactly k), one learned threshold at inference (Bussmann, Leask, Nanda 2024, arXiv
2412.06410; Ayonrinde 2024, arXiv 2411.02124 calls the same rule Mutual Choice)."""

from __future__ import annotations

import torch

from saekit.sae.selectors.base import Selector, code_at, knob, require_pre
from saekit.sae.sparse import sort_by_row


def batch_topk_entries(acts: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols), row-sorted, of the `budget` largest positive entries of acts [batch, n]."""
    n = acts.shape[1]
    flat = acts.reshape(-1)
    top = flat.topk(min(budget, flat.numel())).indices
    top = top[flat[top] > 0]  # a zero activation is not a selection
    return sort_by_row(top // n, top % n)


class BatchTopK(Selector):
    """Training: global top-(k·batch) of ReLU(π). Inference: f = π ⊙ 1[π > θ·threshold_scale]
    with one θ, tracked by an EMA of the smallest kept training activation and set exactly
    after training (`finalise`). threshold_scale < 1 keeps more latents."""

    knobs = ("threshold_scale",)
    finalises = True

    def attach(self, sae, atoms, gen):
        # -1 = not calibrated; stored in the weights file so inference is reproducible.
        sae.register_buffer("threshold", torch.tensor(-1.0))

    def select(self, sae, x_centered, pre, extras, training=False, threshold_scale=None):
        pre = require_pre(pre, self)
        if training:
            rows, cols = batch_topk_entries(pre.detached.relu(), sae.cfg.k * pre.detached.shape[0])
            return code_at(pre, rows, cols, pre.detached.shape[0], sae.n_latents)
        if float(sae.threshold) < 0:
            raise RuntimeError(
                f"{sae.architecture} inference threshold is not calibrated: train the SAE (the "
                "trainer sets it), or use it as per-token TopK: "
                "sae.with_selector(saekit.sae.selectors.TopK(k))"
            )
        theta = sae.threshold * knob(threshold_scale, 1.0)
        p = pre.full()
        return p * (p > theta)

    @torch.no_grad()
    def calibrate(self, sae, codes):
        positive = codes[codes > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min()
        if float(sae.threshold) < 0:
            sae.threshold.copy_(smallest)
        else:
            sae.threshold.lerp_(smallest, sae.cfg.threshold_ema)

    @torch.no_grad()
    def finalise(self, sae, pre):
        """θ = the (k·n)-th largest activation of the final weights on n fresh tokens, so the
        inference L0 averages k. The running EMA lags behind weights that keep moving, and on
        short runs gave about half the intended L0."""
        acts = pre.detached.relu().flatten()
        kept = acts.topk(min(sae.cfg.k * pre.detached.shape[0], acts.numel())).values
        kept = kept[kept > 0]
        if kept.numel():
            sae.threshold.copy_(kept.min())

    @torch.no_grad()
    def fold_input_scale(self, sae, scale):
        if float(sae.threshold) >= 0:
            sae.threshold /= scale
