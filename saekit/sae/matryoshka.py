"""Matryoshka BatchTopK: every prefix of the dictionary must reconstruct the input
(Bussmann, Nabeshima, Karvonen, Nanda 2025; methods.md §11)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.sae.base import TrainContext, TrainOutput, reconstruction_loss
from saekit.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from saekit.sae.registry import register
from saekit.sae.sparse import sparse_decode
from saekit.sae.topk import auxk_loss


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    # Sizes of the nested groups, summing to n_latents. Default: fractions 1/16, 1/16, 1/8,
    # 1/4 and the rest (the ratios of the reference recipe).
    group_sizes: list[int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_sizes is None:
            n = self.n_latents
            first = [max(1, n // 16), max(1, n // 16), max(1, n // 8), max(1, n // 4)]
            self.group_sizes = [*first, n - sum(first)]
        if sum(self.group_sizes) != self.n_latents or min(self.group_sizes) < 1:
            raise ValueError(
                f"group_sizes {self.group_sizes} must be positive and sum to n_latents={self.n_latents}"
            )


@register
class MatryoshkaSAE(BatchTopKSAE):
    """L = (ℓ(b_dec, x) + Σ_g ℓ(x̂_g, x)) / (G + 1) + AuxK, with x̂_g the reconstruction from
    the first g groups of latents."""

    architecture = "matryoshka"
    Config = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def training_forward(self, x: torch.Tensor, ctx: TrainContext) -> TrainOutput:
        code, x_centered, pre = self.sparse_training_code(x, ctx)
        bounds = torch.tensor(self.cfg.group_sizes, device=x.device).cumsum(0)
        group = torch.bucketize(code.cols, bounds, right=True)  # group index of each entry
        prefix = self.b_dec.expand_as(x)
        terms = [reconstruction_loss(x, prefix)]
        for g in range(len(self.cfg.group_sizes)):
            prefix = prefix + sparse_decode(code.select(group == g), self.W_dec, None)
            terms.append(reconstruction_loss(x, prefix))
        x_hat = prefix
        losses = {"matryoshka_mse": torch.stack(terms).mean()}
        if self.cfg.aux_coeff > 0:
            aux = auxk_loss(self, x_centered, pre, x - x_hat, ctx.dead_mask, self.k_aux)
            losses["auxk"] = self.cfg.aux_coeff * aux
        return TrainOutput(x_hat, code.dense(), losses)
