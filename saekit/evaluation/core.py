"""The core group: reconstruction, sparsity, density, shrinkage and weight cosines on the
held-out stream (docs/eval-schema.md, "core" and "density").

At most one pass over the stream: a split smaller than `n_tokens` is read once and
`n_tokens` reports the tokens actually seen, each counted once. The first `sample_tokens`
of them are kept for the groups that work on activations (adaptive, afa), and the firing
densities for steering.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from saekit.evaluation.base import EvalRun, Skip, selection_means
from saekit.evaluation.metrics import (
    ReconstructionMetrics,
    density_histogram,
    max_cos_to_others,
    weight_geometry,
)
from saekit.evaluation.sources import single_pass
from saekit.sae.base import SAE


def core_group(run: EvalRun) -> dict[str, Any]:
    if run.stream is None:
        raise Skip("no activation stream")
    sae, variant = run.sae, run.label_free
    acc = ReconstructionMetrics(sae.n_latents)
    norm_in = norm_out = 0.0
    sample: list[torch.Tensor] = []
    kept = 0
    stat_sums: dict[str, float] = {}
    with single_pass(run.stream) as stream:
        for batch in stream:
            x = batch.x.float()
            if sae.is_transcoder and "target" not in batch.extras:
                raise Skip("a transcoder needs a stream with its target (a SOURCE->TARGET spec)")
            take = run.settings.n_tokens - acc.n_tokens
            x, extras = x[:take], {k: v[:take] for k, v in batch.extras.items()}
            x_hat, codes, stats = variant.reconstruct(x)
            # a transcoder is scored on what it predicts: the target (e.g. the MLP output)
            y = extras["target"].float() if sae.is_transcoder else x
            acc.update(y, x_hat, codes)
            norm_in += y.double().norm(dim=-1).sum().item()
            norm_out += x_hat.double().norm(dim=-1).sum().item()
            for name, mean in selection_means(stats).items():
                stat_sums[name] = stat_sums.get(name, 0.0) + mean * len(x)
            if kept < run.settings.sample_tokens:
                sample.append(x[: run.settings.sample_tokens - kept])
                kept += len(sample[-1])
            if acc.n_tokens >= run.settings.n_tokens:
                break
    if acc.n_tokens == 0:
        raise Skip("the held-out stream yielded no tokens")
    core = acc.compute()
    core["n_tokens"] = acc.n_tokens
    density = acc.density()
    mass = density.sum().item()
    core.update(
        l2_norm_in=norm_in / acc.n_tokens,
        l2_norm_out=norm_out / acc.n_tokens,
        normalized_freq_over_1_percent=density[density > 0.01].sum().item() / mass
        if mass
        else math.nan,
        normalized_freq_over_10_percent=density[density > 0.1].sum().item() / mass
        if mass
        else math.nan,
        **_geometry(sae),
        **run.mode_note(),
    )
    if stat_sums:
        core["selection"] = {name: total / acc.n_tokens for name, total in stat_sums.items()}
    run.sample = torch.cat(sample)
    run.density = density
    hist = density_histogram(density, bins=50, log10_range=(-8.0, 0.0))
    return {
        "core": core,
        "density": {
            "log10_edges": [float(e) for e in hist.edges],
            "counts": [int(c) for c in hist.counts],
            "n_dead": hist.n_dead,
            "n_latents": sae.n_latents,
            "n_tokens": acc.n_tokens,
        },
    }


def _geometry(sae: SAE) -> dict[str, float]:
    """Weight cosines. A transcoder's encoder rows and decoder atoms live in different spaces
    (its input and its target), so enc_dec_cos is not defined for it."""
    if not sae.is_transcoder:
        return weight_geometry(sae.W_dec, getattr(sae, "W_enc", None))
    out = weight_geometry(sae.W_dec)
    if getattr(sae, "W_enc", None) is not None:
        out["enc_max_cos"] = max_cos_to_others(sae.W_enc).double().mean().item()
    return out


__all__ = ["core_group"]
