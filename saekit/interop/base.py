"""What every converter shares: the error type, tensor checks and the provenance record.

An imported SAE is an ordinary saekit SAE (built with `saekit.sae.create`), so AFA, the
adaptive curves and the browser work on it unchanged. Where it came from is recorded in
`sae.metadata["imported_from"]` (library, path, architecture, the original config) and
lands in cfg.json when the SAE is saved.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from saekit.sae.base import SAE
from saekit.sae.provenance import Provenance
from saekit.sae.registry import architectures, create, get_architecture


class InteropError(ValueError):
    """A file from another library that saekit cannot represent exactly (or cannot read)."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise InteropError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return cfg


def need(tensors: dict[str, torch.Tensor], source: str, *names: str) -> list[torch.Tensor]:
    """The named tensors as float32, or one error listing every missing name."""
    missing = [n for n in names if n not in tensors]
    if missing:
        raise InteropError(f"{source}: missing tensor(s) {missing}; found {sorted(tensors)}")
    return [tensors[n].detach().to(torch.float32) for n in names]


def check_shape(t: torch.Tensor, shape: tuple[int, ...], name: str, source: str) -> None:
    if tuple(t.shape) != shape:
        raise InteropError(f"{source}: {name} has shape {tuple(t.shape)}, expected {shape}")


def arch_fields(architecture: str, source: str) -> set[str]:
    """Config field names of a saekit architecture; an InteropError when it does not exist."""
    if architecture not in architectures():
        raise InteropError(
            f"{source}: needs saekit architecture {architecture!r}, which this saekit does not "
            f"have (available: {', '.join(architectures())})"
        )
    return {f.name for f in dataclasses.fields(get_architecture(architecture).Config)}


def transcoder_options(
    architecture: str, d_out: int, skip: bool, source: str, **more: Any
) -> dict[str, Any]:
    """Config fields that make saekit `architecture` a transcoder (input not centred, output
    width d_out, optional skip path), or an error when this saekit has no such option."""
    fields = arch_fields(architecture, source)
    if "transcode" not in fields:
        raise InteropError(
            f"{source}: is a transcoder, but saekit {architecture!r} has no transcoder option "
            "in this version"
        )
    return {"transcode": True, "d_out": d_out, "skip": skip, **more}


def is_transcoder(sae: SAE) -> bool:
    return bool(getattr(sae.cfg, "transcode", False))


def build(architecture: str, tensors: dict[str, torch.Tensor], source: str, **cfg: Any) -> SAE:
    """A saekit SAE of `architecture` holding exactly `tensors` (saekit names/orientation)."""
    arch_fields(architecture, source)
    sae = create(architecture, **cfg)
    expected = sae.state_dict()
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise InteropError(f"{source}: no place for tensor(s) {extra} in saekit {architecture}")
    state = dict(expected)
    for name, value in tensors.items():
        ref = expected[name]
        value = value.detach().to(ref.dtype)
        if ref.ndim == 0 and value.numel() == 1:
            value = value.reshape(())
        check_shape(value, tuple(ref.shape), name, source)
        if not torch.isfinite(value).all():
            raise InteropError(f"{source}: {name} contains NaN or Inf")
        state[name] = value
    sae.load_state_dict(state)
    return sae.eval()


def provenance(
    library: str, path: str | Path, architecture: str, config: dict[str, Any], **more: Any
) -> dict[str, Any]:
    """The `imported_from` record kept in the saved metadata."""
    return {
        "library": library,
        "path": str(path),
        "architecture": architecture,
        "config": config,
        **more,
    }


def data_record(hookpoint: str | None, which: str, **names: Any) -> dict[str, Any]:
    """metadata["data"] for an imported SAE: saekit's hookpoint (module path) and how other
    libraries name it. Only non-empty fields are kept."""
    out = {"source": "imported", "hookpoint": hookpoint, "which": which, **names}
    return {k: v for k, v in out.items() if v is not None}


def hookpoint_of(sae: SAE) -> tuple[str | None, str]:
    """(module path, 'output'|'input') recorded for a saekit SAE, or (None, 'output')."""
    from saekit.interop.hookpoints import parse_site

    recorded = Provenance.of(sae)
    if not recorded.hookpoint:
        return None, recorded.which
    return parse_site(recorded.hookpoint, recorded.which)


def model_of(sae: SAE) -> str | None:
    return Provenance.of(sae).model


def uniform_value(t: torch.Tensor, rel: float = 1e-6) -> float | None:
    """The single value of a tensor whose entries are all (nearly) equal, else None."""
    lo, hi = float(t.min()), float(t.max())
    return hi if math.isclose(lo, hi, rel_tol=rel, abs_tol=1e-12) else None


def unsupported(sae: SAE, target: str, supported: list[str]) -> InteropError:
    return InteropError(
        f"{target} has no equivalent of saekit architecture {sae.architecture!r}; "
        f"convertible: {', '.join(supported)}"
    )
