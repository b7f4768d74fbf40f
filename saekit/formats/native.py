"""saekit's SAE directory: `cfg.json` (architecture, shapes, hyperparameters, provenance) +
`weights.safetensors`. Never pickles. Saved SAEs act on raw activations: the trainer folds
input normalisation (and free decoder norms) into the weights before saving."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.formats.atomic import atomic_directory
from saekit.sae.base import SAE
from saekit.sae.registry import get_architecture, make_config

FORMAT_NAME = "saekit"
FORMAT_VERSION = 1
CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "weights.safetensors"


class SAEFileError(ValueError):
    """A saved SAE directory is missing, corrupt or does not match its config."""


def save(sae: SAE, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write `sae` to directory `path` atomically. `metadata` (normalisation, data
    description, training summary...) is stored under cfg.json["metadata"]."""
    from saekit import __version__

    cfg = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "saekit_version": __version__,
        **sae.config_dict(),
        "metadata": metadata or {},
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in sae.state_dict().items()}
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    return Path(path)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not path.is_dir():
        raise SAEFileError(
            f"{path}: not a directory (expected an SAE directory with {CONFIG_FILE})"
        )
    if not cfg_path.is_file():
        raise SAEFileError(f"{path}: missing {CONFIG_FILE}; is this an SAE directory?")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEFileError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise SAEFileError(f"{cfg_path}: no 'architecture' field")
    return cfg


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE directory; every mismatch between config and weights is named."""
    path = Path(path)
    cfg = read_config(path)
    if cfg.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise SAEFileError(
            f"{path}: format version {cfg['format_version']} is newer than this saekit supports "
            f"({FORMAT_VERSION}); upgrade saekit"
        )
    name = cfg["architecture"]
    try:
        cls = get_architecture(name)
    except ValueError as e:
        raise SAEFileError(f"{path}: {e}") from None
    reserved = {"format", "format_version", "saekit_version", "architecture", "metadata"}
    fields = {k: v for k, v in cfg.items() if k not in reserved}
    try:
        sae = cls(make_config(name, **fields))
    except (TypeError, ValueError) as e:
        raise SAEFileError(f"{path / CONFIG_FILE}: {e}") from None
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SAEFileError(f"{path}: missing {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise SAEFileError(f"{weights_path}: corrupt or truncated safetensors file ({e})") from None
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SAEFileError(
            f"{weights_path}: tensors do not match architecture {name!r}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {unexpected}" if unexpected else "")
        )
    for key, ref in expected.items():
        if tensors[key].shape != ref.shape:
            raise SAEFileError(
                f"{weights_path}: {key} has shape {tuple(tensors[key].shape)} but cfg.json "
                f"(d_in={sae.d_in}, n_latents={sae.n_latents}) implies {tuple(ref.shape)}"
            )
        if not torch.isfinite(tensors[key]).all():
            raise SAEFileError(f"{weights_path}: {key} contains NaN or Inf")
    sae.load_state_dict(tensors)
    sae.metadata = cfg.get("metadata", {})
    return sae.to(device).eval()
