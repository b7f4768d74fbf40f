"""saekit's SAE directory: `cfg.json` (architecture, shapes, hyperparameters, provenance) +
`weights.safetensors`. Never pickles. Saved SAEs act on raw activations: the trainer folds
input normalisation (and free decoder norms) into the weights before saving."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.formats.atomic import atomic_directory
from saekit.formats.jsonfile import read_json
from saekit.options import check_config_values
from saekit.sae.base import SAE
from saekit.sae.registry import get_architecture, make_config

FORMAT_NAME = "saekit"
FORMAT_VERSION = 1
CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "weights.safetensors"


# A safetensors header is a few KiB for any SAE; the format itself caps it at 100 MB.
MAX_HEADER_BYTES = 100 * 2**20
MAX_CONFIG_BYTES = 16 * 2**20
_ST_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2,
                "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1,
                "F8_E5M2": 1}  # fmt: skip
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


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
    cfg = read_json(cfg_path, "a cfg.json", SAEFileError, MAX_CONFIG_BYTES)
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise SAEFileError(f"{cfg_path}: no 'architecture' field")
    if not isinstance(cfg["architecture"], str):
        raise SAEFileError(f"{cfg_path}: 'architecture' must be a string")
    version = cfg.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SAEFileError(f"{cfg_path}: 'format_version' must be a positive integer")
    if not isinstance(cfg.get("metadata", {}), dict):
        raise SAEFileError(f"{cfg_path}: 'metadata' must be an object")
    return cfg


def read_weights_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors header, checked against the file's size,
    reading only the header (a hostile file cannot make us allocate its claimed sizes)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise SAEFileError(f"{path}: corrupt or truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", prefix)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise SAEFileError(
                    f"{path}: corrupt or truncated safetensors file (header {n} bytes)"
                )
            header = json.loads(fh.read(n).decode("utf-8"))
    except OSError as e:
        raise SAEFileError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise SAEFileError(f"{path}: corrupt or truncated safetensors file (header)") from None
    if not isinstance(header, dict):
        raise SAEFileError(f"{path}: corrupt or truncated safetensors file (header)")
    data_bytes = size - 8 - n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in _ST_ITEMSIZE
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
        ints = (shape or []) + (offsets or [])
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints)
        if ok:
            numel = math.prod(shape)
            begin, end = offsets
            ok = begin <= end <= data_bytes and end - begin == numel * _ST_ITEMSIZE[entry["dtype"]]
        if not ok:
            raise SAEFileError(
                f"{path}: corrupt or truncated safetensors file (header entry {name!r})"
            )
        out[name] = (entry["dtype"], tuple(shape))
    return out


def _expected_shapes(cls: type[SAE], config: Any) -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (shape, floating) of the state dict the config implies, built on the meta
    device: no memory is allocated, however large the config claims the SAE is."""
    with torch.device("meta"):
        sae = cls(config)
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in sae.state_dict().items()}


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE directory; every mismatch between config and weights is named."""
    path = Path(path)
    cfg = read_config(path)
    cfg_path = path / CONFIG_FILE
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
        check_config_values(cls.Config, fields)
        for dim in ("d_in", "n_latents"):
            if isinstance(fields.get(dim), int) and fields[dim] < 1:
                raise ValueError(f"{dim} must be >= 1, got {fields[dim]}")
        config = make_config(name, **fields)
    except (TypeError, ValueError) as e:
        raise SAEFileError(f"{cfg_path}: {e}") from None
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SAEFileError(f"{path}: missing {WEIGHTS_FILE}")
    # Shapes first, from the header, before anything of the claimed size is built.
    header = read_weights_header(weights_path)
    _check_header(cls, config, header, weights_path)
    try:
        sae = cls(config)
    except (TypeError, ValueError) as e:
        raise SAEFileError(f"{cfg_path}: {e}") from None
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise SAEFileError(f"{weights_path}: corrupt or truncated safetensors file ({e})") from None
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    _check_names(weights_path, name, missing, unexpected)
    for key, ref in expected.items():
        if tensors[key].shape != ref.shape:
            raise SAEFileError(
                f"{weights_path}: {key} has shape {tuple(tensors[key].shape)} but cfg.json "
                f"(d_in={sae.d_in}, n_latents={sae.n_latents}) implies {tuple(ref.shape)}"
            )
        if tensors[key].dtype != ref.dtype and not tensors[key].is_floating_point():
            raise SAEFileError(f"{weights_path}: {key} has dtype {tensors[key].dtype}")
        if not torch.isfinite(tensors[key]).all():
            raise SAEFileError(f"{weights_path}: {key} contains NaN or Inf")
    sae.load_state_dict(tensors)
    sae.metadata = cfg.get("metadata", {})
    return sae.to(device).eval()


def _check_names(weights_path: Path, name: str, missing: list, unexpected: list) -> None:
    if missing or unexpected:
        raise SAEFileError(
            f"{weights_path}: tensors do not match architecture {name!r}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {unexpected}" if unexpected else "")
        )


def _check_header(cls: type[SAE], config: Any, header: dict, weights_path: Path) -> None:
    try:
        expected = _expected_shapes(cls, config)
    except Exception:  # noqa: BLE001 - an architecture that cannot build on meta: bound it
        d, n = getattr(config, "d_in", 0), getattr(config, "n_latents", 0)
        if d * n > sum(math.prod(s) for _, s in header.values()):
            raise SAEFileError(
                f"{weights_path}: holds fewer values than cfg.json's d_in={d} x n_latents={n}"
            ) from None
        return
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    _check_names(weights_path, cls.name, missing, unexpected)
    for key, (shape, floating) in expected.items():
        dtype, got = header[key]
        if got != shape:
            raise SAEFileError(
                f"{weights_path}: {key} has shape {got} but cfg.json "
                f"(d_in={config.d_in}, n_latents={config.n_latents}) implies {shape}"
            )
        if floating and dtype not in _FLOAT_DTYPES:
            raise SAEFileError(f"{weights_path}: {key} has dtype {dtype}, expected floating point")
