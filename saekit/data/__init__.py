"""Activation sources. `open_stream(spec)` turns a data spec into an ActivationStream:

synthetic:<recipe>[:key=value,...]    e.g. synthetic:superposition, synthetic:tree:rho=0.3
model:<name>[@<hookpoint>]            activations captured from a model (default model: "default")
cache:<dir>[@<hookpoint>]             an activation cache written by `saekit cache`

and ``#train`` / ``#heldout`` after any of them names the split (`saekit.data.spec` has the
whole grammar). A hookpoint may be a pair SOURCE->TARGET (transcoders), e.g.
model:default@model.layers.6.mlp:in->out: x is the source and extras["target"] the target
of the same tokens (saekit.data.hooks.HookPair).
"""

from __future__ import annotations

import warnings
from typing import Any

from saekit.data.spec import DataSpec, parse_data_spec
from saekit.data.splits import HELDOUT, TRAIN, check_split
from saekit.data.stream import ActivationStream, Batch, TensorStream


def open_stream(
    spec: str | DataSpec,
    batch_size: int,
    seed: int = 0,
    split: str = TRAIN,
    with_grad: bool = False,
    **kwargs: Any,
) -> ActivationStream:
    """The stream named by ``spec``, on ``split`` unless the spec names its own.
    split="heldout" gives held-out data: fresh synthetic samples, the held-out documents of
    the corpus, or a cache's held-out split (its train split, with a warning, when it has
    none and the spec names no split).
    with_grad: a model spec's batches carry extras["grad"] (`saekit.data.gradients`); a
    cache carries it when written with it, and synthetic recipes such as "readout" attach
    it themselves.
    kwargs go to the stream's class (ModelStream, CacheStream)."""
    data = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    split = data.split or check_split(split)
    if data.kind == "synthetic":
        from saekit.data.synthetic import SyntheticStream, make_recipe

        recipe = make_recipe(data.source, seed=seed)
        # Held-out samples: same dictionary (same recipe seed), different sample stream.
        stream_seed = seed if split == TRAIN else seed + 1_000_000
        return SyntheticStream(recipe, batch_size, stream_seed)
    if data.kind == "model":
        from saekit.data.gradients import GradientModelStream
        from saekit.data.model_stream import ModelStream, open_model_stream

        stream_class = GradientModelStream if with_grad else ModelStream
        return open_model_stream(
            data.source, data.hookpoint, batch_size, seed, split, stream_class, **kwargs
        )
    from saekit.data.cache import CacheStream, split_names

    if data.split is None and split == HELDOUT:
        if HELDOUT not in split_names(data.source, data.hookpoint):
            warnings.warn(
                f"{data.source} has no held-out split; reading its train split "
                f"(name it with cache:...#train to say so)",
                stacklevel=2,
            )
            split = TRAIN
    return CacheStream(
        data.source, data.hookpoint, batch_size=batch_size, seed=seed, split=split, **kwargs
    )


__all__ = [
    "ActivationStream",
    "Batch",
    "DataSpec",
    "TensorStream",
    "open_stream",
    "parse_data_spec",
]
