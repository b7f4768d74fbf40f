"""Training checkpoints without pickles: nested state (model, optimizer, scheduler, RNG,
stream position, dead-latent counters) split into tensors (safetensors) and a JSON skeleton.
Directories are written atomically; `latest` names the newest complete one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.formats.atomic import atomic_directory, atomic_write_text

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str = "t") -> Any:
    """Replace every tensor in a nested dict/list structure by a reference into `tensors`.
    Dicts become lists of [key, value] pairs so integer keys (optimizer state) survive JSON."""
    if isinstance(obj, torch.Tensor):
        key = f"{path}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def write_checkpoint(
    checkpoint_root: Path, step: int, state: dict[str, Any], keep: int = 2
) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    target = checkpoint_root / f"step-{step:09d}"
    with atomic_directory(target) as tmp:
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(skeleton))
    atomic_write_text(checkpoint_root / LATEST, target.name + "\n")
    old = sorted(p for p in checkpoint_root.glob("step-*") if p.is_dir())[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return target


def latest_checkpoint(checkpoint_root: Path) -> Path | None:
    pointer = checkpoint_root / LATEST
    if not pointer.is_file():
        return None
    target = checkpoint_root / pointer.read_text().strip()
    return target if target.is_dir() else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        tensors = load_file(str(path / STATE_TENSORS))
        skeleton = json.loads((path / STATE_JSON).read_text())
    except (OSError, SafetensorError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    return unflatten(skeleton, tensors)
