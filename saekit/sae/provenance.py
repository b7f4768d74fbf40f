"""Where an SAE's activations came from, as its saved metadata records it.

`sae.metadata` (cfg.json "metadata") is written by the trainer ("data": the training
stream's describe(); "training": the run's settings) or by an importer ("data": the
hookpoint and how the other library names it; "imported_from"). `Provenance.of(sae)` is the
one typed reading of it; code that needs the model, hookpoint or data spec asks it instead of
digging through the dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Provenance:
    """What the metadata records; None wherever it records nothing.

    source: "model", "cache", "synthetic", "imported", ... (the stream's kind).
    model: the model's name, hub id or path.
    hookpoint: a module path, a site ("M:in") or a pair ("A->B", transcoders).
    which: "output" or "input", the side of the module the activations were read at.
    tl_hook_name: the TransformerLens name, for SAEs imported from or written for one.
    data_spec: the data spec the SAE was trained on ("model:default@model.layers.6").
    max_norm_factor: the norm-outlier cut of its training data's masking (`data.masking`).
    """

    source: str | None = None
    model: str | None = None
    hookpoint: str | None = None
    which: str = "output"
    tl_hook_name: str | None = None
    data_spec: str | None = None
    max_norm_factor: float | None = None

    @classmethod
    def of(cls, sae: Any) -> Provenance:
        return cls.from_metadata(sae.metadata)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> Provenance:
        meta = _mapping(metadata)
        data, training = _mapping(meta.get("data")), _mapping(meta.get("training"))
        model = data.get("model")
        if isinstance(model, Mapping):  # describe_model(): {"name": ..., ...}
            model = model.get("name") or model.get("id") or model.get("path")
        return cls(
            source=_text(data.get("source")),
            model=_text(model),
            hookpoint=_text(data.get("hookpoint")),
            which=_text(data.get("which")) or "output",
            tl_hook_name=_text(data.get("tl_hook_name")),
            data_spec=_text(training.get("data_spec")),
            max_norm_factor=_number(_mapping(data.get("masking")).get("max_norm_factor")),
        )


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


__all__ = ["Provenance"]
