"""Evaluate a saved SAE on held-out activations: reconstruction and sparsity metrics, plus
ground-truth recovery when the data are a synthetic recipe."""

from __future__ import annotations

from typing import Any

import torch

from saekit.data.stream import ActivationStream
from saekit.evaluation.metrics import ReconstructionMetrics
from saekit.sae.base import SAE


@torch.no_grad()
def core_metrics(sae: SAE, stream: ActivationStream, n_tokens: int) -> dict[str, Any]:
    """Stream batches until n_tokens are seen; every average is a ratio of token sums."""
    acc = ReconstructionMetrics(sae.n_latents)
    seen = 0
    for batch in stream:
        x = batch.x.float()
        codes = sae.encode(x, **batch.extras) if sae.needs_extras else sae.encode(x)
        acc.update(x, sae.decode(codes), codes)
        seen += len(batch)
        if seen >= n_tokens:
            break
    return acc.compute()


def evaluate(sae: SAE, stream: ActivationStream, n_tokens: int = 16384) -> dict[str, Any]:
    result: dict[str, Any] = {"core": core_metrics(sae, stream, n_tokens)}
    recipe = getattr(stream, "recipe", None)
    if recipe is not None:
        from saekit.evaluation.recovery import recovery_report

        result["synthetic"] = recovery_report(sae, recipe, n_samples=min(n_tokens, 16384), seed=12345)
    return result
