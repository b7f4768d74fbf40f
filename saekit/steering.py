"""Steering: add α · (an SAE atom) to a hookpoint's activation while the model runs or
generates (docs/evaluation.md#steering).

    with steer(model, "model.layers.6", sae.W_dec[123], alpha=8.0):
        out = model.generate(...)

or in one call: `generate_steered(model, tokenizer, "The weather", sae, latent=123, alpha=8.0,
hookpoint="model.layers.6")`. The vector is added at every position the hook sees (the prompt
and, with a KV cache, each new token), or from position `start` on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from saekit.data.hooks import Which, hook_sites


def steering_vector(sae: Any, latent: int, unit: bool = True) -> torch.Tensor:
    """Atom d_latent [d_in] of the SAE's decoder (unit norm unless unit=False), so α is in
    activation units along a unit direction."""
    if not 0 <= latent < sae.n_latents:
        raise ValueError(f"latent must be in [0, {sae.n_latents}), got {latent}")
    atom = sae.W_dec[latent].detach().float()
    return atom / atom.norm().clamp_min(1e-12) if unit else atom


@contextmanager
def steer(
    model: nn.Module,
    hookpoint: str,
    vector: torch.Tensor,
    alpha: float = 1.0,
    which: Which = "output",
    start: int = 0,
) -> Iterator[None]:
    """Within the block, the hookpoint's activation x [batch, seq, d] becomes
    x + α·vector at positions ≥ `start` of the forward's input (every position when 0).

    With a KV cache each generated token is its own forward of length 1: it is steered when
    start == 0 (positions of later forwards are not counted from the prompt)."""
    vec = vector.detach().reshape(-1)

    def add(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != vec.shape[0]:
            raise ValueError(
                f"steering vector has width {vec.shape[0]}, {hookpoint!r} has {x.shape[-1]}"
            )
        delta = (alpha * vec).to(device=x.device, dtype=x.dtype)
        if start <= 0:
            return x + delta
        out = x.clone()
        out[..., start:, :] += delta
        return out

    with hook_sites(model, {hookpoint: add}, which):
        yield


@torch.no_grad()
def generate_steered(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    sae: Any,
    latent: int,
    alpha: float,
    hookpoint: str,
    max_new_tokens: int = 20,
    which: Which = "output",
    **generate_kwargs: Any,
) -> str:
    """Greedy continuation of `prompt` (unless generate_kwargs say otherwise) with
    α · unit(d_latent) added at `hookpoint`; returns the new text only."""
    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt").to(device)
    kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, **generate_kwargs}
    if tokenizer.pad_token_id is not None:
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    with steer(model, hookpoint, steering_vector(sae, latent), alpha, which):
        out = model.generate(**enc, **kwargs)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


__all__ = ["generate_steered", "steer", "steering_vector"]
