"""Per-token standardisation of the input: each activation vector centred and scaled to unit
variance over its d_in dimensions before the coder sees it, and the reconstruction mapped back
with the same per-token mean and standard deviation (the top-AFA reference's input
normalisation, Lee et al. 2025, arXiv 2503.24277, inherited from Bussmann et al.'s BatchTopK
code). Unlike the dataset-wide scale it cannot be folded into the weights, so the SAE applies
it itself on every encode (`SAEConfig.standardise_tokens`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A constant token (zero variance) is only centred. The floor is relative to nothing, so that
# standardising x and s·x gives the same result: the SAE is exactly scale-invariant, and the
# trainer's dataset-wide scale has no effect on it (the reference adds 1e-5 to the std instead).
MIN_STD = 1e-12


@dataclass
class TokenMoments:
    """Per-token mean and standard deviation, each [batch, 1]."""

    mean: torch.Tensor
    std: torch.Tensor


def standardise(x: torch.Tensor) -> tuple[torch.Tensor, TokenMoments]:
    """x [batch, d] -> ((x − mean) / std per row, the moments). std is the unbiased one, as
    in the reference (torch.std)."""
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    std = centred.std(dim=-1, keepdim=True).clamp_min(MIN_STD)
    return centred / std, TokenMoments(mean, std)


def restore(y: torch.Tensor, moments: TokenMoments) -> torch.Tensor:
    """The inverse map for a reconstruction y [batch, d] in standardised units."""
    return y * moments.std + moments.mean
