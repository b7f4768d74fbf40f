"""The loss-term protocol: `compute(sae, fwd, stats) -> {name: scalar}`; the trainer sums
every term. `fwd` (base.Forward) holds the pass: input, target, centred input,
pre-activations, code and reconstruction. Terms may add scalars to `stats` for the log.

Every term is in the units of `reconstruction_loss` (squared error summed over dimensions,
averaged over tokens, on inputs scaled so that E‖x‖ = √d_in), so coefficients mean the same
across architectures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from saekit.sae.base import Part

if TYPE_CHECKING:
    from saekit.sae.base import SAE, Forward


def reconstruction_loss(target: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """‖target − x̂‖² summed over dimensions, averaged over tokens."""
    return (x_hat - target).pow(2).sum(-1).mean()


def warmed_up(coeff: float, progress: float, warmup: float) -> float:
    """coeff ramped linearly from 0 over the first `warmup` fraction of training."""
    return coeff if warmup <= 0 else coeff * min(1.0, progress / warmup)


class LossTerm(Part):
    def compute(self, sae: SAE, fwd: Forward, stats: dict[str, float]) -> dict[str, torch.Tensor]:
        raise NotImplementedError
