"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024; methods.md §6, §2.4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.sae.base import SAE, SAEConfig, TrainContext, TrainOutput, reconstruction_loss
from saekit.sae.registry import register
from saekit.sae.sparse import SparseCode, from_topk, gather_values, sparse_decode


@dataclass
class TopKConfig(SAEConfig):
    k: int = 32
    k_aux: int | None = None  # default: d_in // 2 (as sparsify, SAELens, dictionary_learning)
    aux_coeff: float = 1 / 32

    def __post_init__(self) -> None:
        if not 0 < self.k <= self.n_latents:
            raise ValueError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")


def auxk_loss(
    sae: SAE,
    x_centered: torch.Tensor,
    pre: torch.Tensor,
    residual: torch.Tensor,
    dead_mask: torch.Tensor | None,
    k_aux: int,
    score: torch.Tensor | None = None,
) -> torch.Tensor:
    """AuxK: the top-k_aux dead latents reconstruct the stop-gradient residual.

    pre [batch, n_latents] (no grad) ranks the dead latents (by `score` if given, e.g. |pre|
    for signed codes); their values are recomputed with gradient so both their encoder rows
    and atoms learn. Scaled by min(n_dead / k_aux, 1); zero when nothing is dead.
    Units match `reconstruction_loss`, so no normaliser (and no 0/0) is needed.
    """
    if dead_mask is None:
        return pre.new_zeros(())
    n_dead = int(dead_mask.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    ranking = (pre if score is None else score).masked_fill(~dead_mask, float("-inf"))
    idx = ranking.topk(k, dim=-1).indices
    rows, cols = from_topk(idx, sae.n_latents)
    values = gather_values(x_centered, sae.W_enc, sae.b_enc, rows, cols, pre)
    if score is None:
        values = values.relu()
    code = SparseCode(rows, cols, values, pre.shape[0], sae.n_latents)
    e_hat = sparse_decode(code, sae.W_dec, None)
    return min(n_dead / k_aux, 1.0) * (residual.detach() - e_hat).pow(2).sum(-1).mean()


@register
class TopKSAE(SAE):
    """f = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)); unit-norm atoms; tied init."""

    architecture = "topk"
    Config = TopKConfig
    cfg: TopKConfig

    @property
    def k_aux(self) -> int:
        return self.cfg.k_aux or max(1, self.d_in // 2)

    def select(
        self, pre: torch.Tensor, **extras: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of the kept entries, from pre-activations without gradient."""
        return from_topk(pre.topk(self.cfg.k, dim=-1).indices, self.n_latents)

    def encode(self, x: torch.Tensor, k: int | None = None, **extras: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        vals, idx = pre.topk(k or self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def sparse_training_code(
        self, x: torch.Tensor, ctx: TrainContext
    ) -> tuple[SparseCode, torch.Tensor, torch.Tensor]:
        """Select without gradient, recompute the kept values with gradient.
        Returns (code, x_centered, pre) with pre [batch, n_latents] detached."""
        x_centered = x - self.b_dec
        with torch.no_grad():
            pre = x_centered @ self.W_enc.T + self.b_enc
        rows, cols = self.select(pre, **ctx.extras)
        values = gather_values(x_centered, self.W_enc, self.b_enc, rows, cols, pre).relu()
        return SparseCode(rows, cols, values, x.shape[0], self.n_latents), x_centered, pre

    def training_forward(self, x: torch.Tensor, ctx: TrainContext) -> TrainOutput:
        code, x_centered, pre = self.sparse_training_code(x, ctx)
        x_hat = sparse_decode(code, self.W_dec, self.b_dec)
        losses = {"mse": reconstruction_loss(x, x_hat)}
        if self.cfg.aux_coeff > 0:
            aux = auxk_loss(self, x_centered, pre, x - x_hat, ctx.dead_mask, self.k_aux)
            losses["auxk"] = self.cfg.aux_coeff * aux
        return TrainOutput(x_hat, code.dense(), losses)
