"""Where the evaluation's data come from: the LM behind an SAE and its held-out activations.

Specs are parsed by `saekit.data.spec` and streams opened by `saekit.data.open_stream`;
this module only says which of them the evaluation reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from saekit.data.spec import parse_data_spec
from saekit.data.splits import HELDOUT
from saekit.data.stream import ActivationStream
from saekit.sae.provenance import Provenance


@dataclass(frozen=True)
class ModelSource:
    """The LM behind an SAE: model name or path (for `load_model`), hookpoint, input/output.

    For a transcoder, hookpoint/which are its source and ``target`` the site it predicts
    (``"model.layers.6.mlp:out"``); None for an ordinary SAE."""

    model: str
    hookpoint: str
    which: str = "output"
    target: str | None = None

    @property
    def pair(self) -> str | None:
        """The canonical ``SOURCE->TARGET`` spelling, or None without a target."""
        if self.target is None:
            return None
        from saekit.data.hooks import HookPair, site_name

        return str(HookPair(site_name(self.hookpoint, self.which), self.target))  # type: ignore[arg-type]

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once per process and shared with `model:` streams."""
        from saekit.data.models import load_model_cached

        return load_model_cached(self.model)


def model_source(sae: Any, data_spec: str | None = None) -> ModelSource | None:
    """The ModelSource recorded in the SAE's metadata (or named by a `model:` spec), None for
    synthetic or unknown data. A hookpoint pair (transcoders) gives its source as
    hookpoint/which and its target as ``target``."""
    recorded = Provenance.of(sae)
    if recorded.source in ("model", "cache") and recorded.hookpoint and recorded.model:
        return _source(recorded.model, recorded.hookpoint, recorded.which)
    named = model_spec(data_spec or recorded.data_spec)
    return _source(*named) if named else None


def model_spec(spec: str | None) -> tuple[str, str] | None:
    """(model, hookpoint) of a ``model:NAME@HOOKPOINT`` spec ("default" for an empty name);
    None for any other spec or one without a single hookpoint."""
    if not spec:
        return None
    data = parse_data_spec(spec)
    if data.kind != "model" or len(data.hookpoints) != 1:
        return None
    return data.source or "default", data.hookpoints[0]


def _source(model: str, hookpoint: str, which: str = "output") -> ModelSource:
    from saekit.data.hooks import HookPair, is_pair, parse_site

    if not is_pair(hookpoint):
        return ModelSource(model, hookpoint, which)
    pair = HookPair.parse(hookpoint)
    module, source_which = parse_site(pair.source)
    return ModelSource(model, module, source_which, pair.target)


def open_heldout_stream(
    spec: str, batch_size: int, seed: int = 0, split: str | None = None
) -> tuple[ActivationStream, str]:
    """(the stream the core group reads, the split it reads). By default the held-out split;
    a cache written without one (``saekit cache --eval-tokens 0``) gives its train split,
    with the data package's warning."""
    from saekit.data import open_stream

    data = parse_data_spec(spec)
    stream = open_stream(data, batch_size=batch_size, seed=seed, split=split or HELDOUT)
    # A cache stream knows the split it reads (its train split after the fallback).
    return stream, getattr(stream, "split", None) or data.split or split or HELDOUT


@contextmanager
def single_pass(stream: ActivationStream) -> Iterator[ActivationStream]:
    """Within the block, a finite stream (a cache split, a corpus' contexts, a tensor) ends
    after one pass over its data instead of starting the next epoch, so no token is read
    twice. Endless streams (synthetic samples) are unchanged."""
    loop = getattr(stream, "loop", None)
    if loop is not None:
        stream.loop = False  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        if loop is not None:
            stream.loop = loop  # type: ignore[attr-defined]


__all__ = ["ModelSource", "model_source", "model_spec", "open_heldout_stream", "single_pass"]
