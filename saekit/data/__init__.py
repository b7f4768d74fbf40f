"""Activation sources. `open_stream(spec)` turns a data spec string into an ActivationStream:

synthetic:<recipe>[:key=value,...]    e.g. synthetic:superposition, synthetic:tree:rho=0.3
model:<name>[@<hookpoint>]            activations captured from a model (default model: "default")
cache:<dir>[@<hookpoint>]             an activation cache written by `saekit cache`

A hookpoint may be a pair SOURCE->TARGET (transcoders), e.g. model:default@model.layers.6.mlp:in->out:
x is the source and extras["target"] the target of the same tokens (saekit.data.hooks.HookPair).
"""

from __future__ import annotations

from typing import Any

from saekit.data.splits import TRAIN, check_split
from saekit.data.stream import ActivationStream, Batch, TensorStream


def split_hookpoints(spec: str) -> tuple[str, list[str]]:
    """'cache:DIR@h1,h2' -> ('cache:DIR', ['h1', 'h2']): several hookpoints of one source
    (module-parallel training, one SAE set per hookpoint); one or none -> (spec, [])."""
    base, at, hooks = spec.rpartition("@")
    if not at or "," not in hooks:
        return spec, []
    return base, [h.strip() for h in hooks.split(",") if h.strip()]


def open_stream(
    spec: str, batch_size: int, seed: int = 0, split: str = TRAIN, **kwargs: Any
) -> ActivationStream:
    """Build the stream named by `spec`. split="heldout" gives held-out data (fresh synthetic
    samples, or the held-out corpus split)."""
    check_split(split)
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        from saekit.data.synthetic import SyntheticStream, make_recipe

        recipe = make_recipe(rest or "superposition", seed=seed)
        # Held-out samples: same dictionary (same recipe seed), different sample stream.
        stream_seed = seed if split == TRAIN else seed + 1_000_000
        return SyntheticStream(recipe, batch_size, stream_seed)
    if kind == "model":
        from saekit.data.model_stream import open_model_stream

        return open_model_stream(
            rest or "default", batch_size=batch_size, seed=seed, split=split, **kwargs
        )
    if kind == "cache":
        from saekit.data.cache import open_cache_stream

        if not rest:
            raise ValueError("cache spec needs a directory: cache:<dir>[@<hookpoint>]")
        return open_cache_stream(rest, batch_size=batch_size, seed=seed, split=split)
    raise ValueError(
        f"unknown data source {spec!r}; use synthetic:<recipe>, model:<name>[@<hookpoint>] "
        "or cache:<dir>[@<hookpoint>]"
    )


__all__ = ["ActivationStream", "Batch", "TensorStream", "open_stream"]
