"""BatchTopK: global top-(k·batch) in training, one learned threshold at inference
(Bussmann, Leask, Nanda 2024; methods.md §7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.sae.registry import register
from saekit.sae.sparse import sort_by_row
from saekit.sae.topk import TopKConfig, TopKSAE


@dataclass
class BatchTopKConfig(TopKConfig):
    # EMA rate of the inference threshold θ, tracked as the smallest kept training activation.
    threshold_ema: float = 0.01


@register
class BatchTopKSAE(TopKSAE):
    """Training keeps the k·batch largest ReLU'd pre-activations of the whole batch (average
    L0 exactly k); inference keeps a_i > θ with a single θ learned during training."""

    architecture = "batchtopk"
    Config = BatchTopKConfig
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        # -1 = not calibrated; stored in the weights file so inference is reproducible.
        self.register_buffer("threshold", torch.tensor(-1.0))

    def select(
        self, pre: torch.Tensor, **extras: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n = pre.shape
        flat = pre.relu().reshape(-1)
        top = flat.topk(min(self.cfg.k * batch, flat.numel())).indices
        top = top[flat[top] > 0]  # a zero activation is not a selection
        return sort_by_row(top // n, top % n)

    def encode(
        self, x: torch.Tensor, mode: str = "threshold", k: int | None = None, **extras: torch.Tensor
    ) -> torch.Tensor:
        """mode: "threshold" (default; per-token, batch-independent), "batch" (training rule),
        or "topk" (per-token TopK at k)."""
        pre = self.pre_activations(x)
        if mode == "topk":
            return super().encode(x, k=k)
        if mode == "batch":
            rows, cols = self.select(pre)
            out = torch.zeros_like(pre)
            out[rows, cols] = pre[rows, cols]
            return out
        if mode != "threshold":
            raise ValueError(
                f"unknown BatchTopK encode mode {mode!r}; use threshold, batch or topk"
            )
        if float(self.threshold) < 0:
            raise RuntimeError(
                "BatchTopK inference threshold is not calibrated: train the SAE (the trainer "
                "tracks it) or use encode(x, mode='batch')"
            )
        return pre * (pre > self.threshold)

    @torch.no_grad()
    def calibrate(self, codes: torch.Tensor) -> None:
        positive = codes[codes > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min()
        if float(self.threshold) < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, self.cfg.threshold_ema)

    @torch.no_grad()
    def finalise(self, x: torch.Tensor) -> None:
        """θ = the (k·n)-th largest activation of the final weights on n fresh tokens, so the
        inference L0 averages k. The running EMA lags behind weights that keep moving, and
        on short runs gave about half the intended L0."""
        acts = self.pre_activations(x).relu().flatten()
        kept = acts.topk(min(self.cfg.k * x.shape[0], acts.numel())).values
        kept = kept[kept > 0]
        if kept.numel():
            self.threshold.copy_(kept.min())

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        if float(self.threshold) >= 0:
            self.threshold /= scale
