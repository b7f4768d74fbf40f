"""Sparse codes in coordinate form, and the gather/scatter kernels that train on them.

TopK-style selection carries no gradient, so training splits in two (the same idea as the
MP-SAE replay, methods.md §3.5): choose (row, latent) pairs without autograd from the dense
pre-activations, then recompute only the chosen values with autograd. The backward then
touches B·k encoder rows and atoms instead of a dense [batch, n_latents] gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SparseCode:
    """Non-zeros of a [batch, n_latents] code matrix, sorted by row.

    rows, cols: LongTensor [nnz]; values: Tensor [nnz] (may carry gradient).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    batch: int
    n_latents: int

    def dense(self) -> torch.Tensor:
        """[batch, n_latents]; detached (used for metrics and dead-latent tracking)."""
        out = self.values.new_zeros(self.batch, self.n_latents)
        out[self.rows, self.cols] = self.values.detach()
        return out

    def select(self, keep: torch.Tensor) -> SparseCode:
        return SparseCode(self.rows[keep], self.cols[keep], self.values[keep], self.batch, self.n_latents)


def from_topk(indices: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row top-k indices [batch, k] -> (rows, cols), each [batch * k]."""
    batch, k = indices.shape
    rows = torch.arange(batch, device=indices.device).repeat_interleave(k)
    return rows, indices.reshape(-1)


def gather_values(
    x_centered: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """Differentiable pre-activations at the chosen entries only: <e_c, x_r> + b_c, [nnz]."""
    values = (x_centered[rows] * W_enc[cols]).sum(-1)
    if b_enc is not None:
        values = values + b_enc[cols]
    return values


def sparse_decode(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None) -> torch.Tensor:
    """[batch, d_in] = Σ_i f_i d_i (+ b_dec), via embedding_bag (no [nnz, d_in] temporary)."""
    counts = torch.bincount(code.rows, minlength=code.batch)
    offsets = torch.zeros_like(counts)
    offsets[1:] = counts.cumsum(0)[:-1]
    out = F.embedding_bag(
        code.cols, W_dec, offsets, mode="sum", per_sample_weights=code.values
    )
    return out if b_dec is None else out + b_dec


def sort_by_row(rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries chosen across the whole batch (BatchTopK) come unordered; decoding wants rows
    contiguous."""
    order = torch.argsort(rows * (cols.max() + 1 if cols.numel() else 1) + cols)
    return rows[order], cols[order]
