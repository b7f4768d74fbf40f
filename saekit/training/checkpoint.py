"""Training checkpoints without pickles: nested state (model, optimizer, scheduler, RNG,
stream position, dead-latent counters) split into tensors (safetensors) and a JSON skeleton.

Directories are written atomically; `latest` names the newest one. Each checkpoint carries
the sha256 of its tensor file and of its skeleton, like cache shards, so a flipped byte or an
edited field is found before anything is resumed from it; resume then falls back to the
newest checkpoint that verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from saekit.formats.atomic import atomic_directory, atomic_write_text

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
LATEST = "latest"
FORMAT = "saekit-checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{9,})$")
MAX_STATE_JSON_BYTES = 64 * 2**20


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
        key = obj["__tensor__"]
        if not isinstance(key, str) or key not in tensors:
            raise CheckpointError(f"reference to a missing tensor {key!r}")
        return tensors[key]
    if isinstance(obj, dict) and "__dict__" in obj:
        pairs = obj["__dict__"]
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in pairs
        ):
            raise CheckpointError("malformed dictionary entry")
        return {k: unflatten(v, tensors) for k, v in pairs}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def _canonical(skeleton: Any) -> bytes:
    return json.dumps(skeleton, separators=(",", ":")).encode()


def _non_finite(state: Any, path: str = "") -> str | None:
    """The first tensor in `state` holding a NaN/Inf, or None. (Plain floats are left alone:
    logged metrics may legitimately be NaN.)"""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not torch.isfinite(state).all():
            return path or "a tensor"
        return None
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None


def remove_leftovers(checkpoint_root: Path) -> None:
    """Temporary directories and files of writers that were killed (one trainer writes a run's
    checkpoints, so any that exist before it writes are leftovers)."""
    if not checkpoint_root.is_dir():
        return
    for p in checkpoint_root.iterdir():
        if p.name.startswith((".tmp-", ".old-")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def write_checkpoint(
    checkpoint_root: Path, step: int, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write `state` as checkpoint `step`; keep the newest `keep` checkpoints. A state with a
    NaN/Inf anywhere is refused, so a diverged run never replaces a good checkpoint."""
    bad = _non_finite(state)
    if bad is not None:
        raise CheckpointError(
            f"refusing to write checkpoint {step}: {bad} holds NaN/Inf (the previous "
            "checkpoint is kept)"
        )
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    body = _canonical(skeleton)
    target = checkpoint_root / f"step-{step:09d}"
    remove_leftovers(checkpoint_root)
    try:
        _write(target, tensors, skeleton, body, step)
    except SafetensorError as e:  # e.g. a full disk, reported by safetensors' own writer
        raise CheckpointError(
            f"could not write checkpoint {step} ({e}); the previous checkpoint is kept"
        ) from None
    atomic_write_text(checkpoint_root / LATEST, target.name + "\n")
    others = sorted(p for p in checkpoint_root.glob("step-*") if p.is_dir() and p != target)
    for p in others[: max(0, len(others) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return target


def _write(target: Path, tensors: dict, skeleton: Any, body: bytes, step: int) -> None:
    with atomic_directory(target) as tmp:
        save_file(tensors, str(tmp / STATE_TENSORS))
        digest = hashlib.sha256((tmp / STATE_TENSORS).read_bytes()).hexdigest()
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "step": step,
            "tensors_sha256": digest,
            "skeleton_sha256": hashlib.sha256(body).hexdigest(),
            "skeleton": skeleton,
        }
        (tmp / STATE_JSON).write_text(json.dumps(doc, separators=(",", ":")))


def _complete(path: Path) -> bool:
    return (path / STATE_JSON).is_file() and (path / STATE_TENSORS).is_file()


def candidates(checkpoint_root: Path) -> list[Path]:
    """Checkpoint directories, best first: the one `latest` names, then the others newest
    first (a kill can leave `latest` naming a directory that is gone or incomplete)."""
    if not checkpoint_root.is_dir():
        return []
    steps = sorted(
        (p for p in checkpoint_root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()),
        key=lambda p: int(_STEP_DIR.match(p.name).group(1)),
        reverse=True,
    )
    pointer = checkpoint_root / LATEST
    named = None
    if pointer.is_file():
        try:
            named = checkpoint_root / pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            named = None
    first = [named] if named is not None and named in steps else []
    return [p for p in first + [p for p in steps if p != named] if _complete(p)]


def latest_checkpoint(checkpoint_root: Path) -> Path | None:
    found = candidates(checkpoint_root)
    return found[0] if found else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved in checkpoint directory `path`, after checking both checksums."""
    try:
        if (path / STATE_JSON).stat().st_size > MAX_STATE_JSON_BYTES:
            raise CheckpointError(f"{path}: {STATE_JSON} is implausibly large")
        doc = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        data = (path / STATE_TENSORS).read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable checkpoint (nested too deeply)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a saekit checkpoint (or one without checksums)")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint version {doc.get('format_version')!r}"
        )
    if hashlib.sha256(data).hexdigest() != doc.get("tensors_sha256"):
        raise CheckpointError(f"{path}: {STATE_TENSORS} does not match its checksum (corrupt)")
    try:
        body = _canonical(doc.get("skeleton"))
    except (ValueError, RecursionError):
        body = b""
    if hashlib.sha256(body).hexdigest() != doc.get("skeleton_sha256"):
        raise CheckpointError(f"{path}: {STATE_JSON} does not match its checksum (edited?)")
    try:
        tensors = load_safetensors(data)
        state = unflatten(doc["skeleton"], tensors)
    except (SafetensorError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if isinstance(state, dict) and "step" in state and doc.get("step") != state["step"]:
        raise CheckpointError(f"{path}: step fields disagree")
    return state


def check_trainer_state(state: Any, path: Path) -> None:
    """The fields a trainer resumes from, by type and range (a checkpoint that verifies can
    still come from a different saekit or have been re-signed by hand)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{path}: {what}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need(isinstance(state, dict), "state is not an object")
    cfg = state.get("train_config")
    need(isinstance(cfg, dict), "train_config must be an object")
    steps = cfg.get("steps")
    need(is_int(steps) and steps >= 1, f"train_config.steps must be a positive integer: {steps!r}")
    step = state.get("step")
    need(is_int(step) and 0 <= step <= steps, f"step must be an integer in [0, {steps}]: {step!r}")
    scale = state.get("scale")
    need(
        isinstance(scale, int | float) and not isinstance(scale, bool) and 0 < scale < math.inf,
        f"scale must be a positive finite number: {scale!r}",
    )
    need(isinstance(state.get("initialised"), bool), "initialised must be true or false")
    need(isinstance(state.get("stream"), dict), "stream must be an object")
    rng = state.get("torch_rng")
    need(
        isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8, "torch_rng is not an RNG state"
    )
    members = state.get("members")
    need(isinstance(members, list) and len(members) > 0, "members must be a non-empty list")
    for i, m in enumerate(members):
        need(isinstance(m, dict), f"members[{i}] must be an object")
        need(isinstance(m.get("name"), str), f"members[{i}].name must be a string")
        sc = m.get("sae_config")
        need(
            isinstance(sc, dict) and isinstance(sc.get("architecture"), str),
            f"members[{i}].sae_config must name an architecture",
        )
        model = m.get("model")
        need(
            isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values()),
            f"members[{i}].model must map names to tensors",
        )
        need(isinstance(m.get("last"), dict), f"members[{i}].last must be an object")
        for key in ("optimizer", "scheduler"):  # None: a coder without an optimiser (ITDA)
            value = m.get(key)
            need(value is None or isinstance(value, dict), f"members[{i}].{key} must be an object")
        t = m.get("tokens_since_fired")
        need(
            isinstance(t, torch.Tensor) and t.dim() == 1 and not t.is_floating_point(),
            f"members[{i}].tokens_since_fired must be a 1-d integer tensor",
        )
    bad = _non_finite(state)
    need(bad is None, f"{bad} holds NaN/Inf")


def load_latest(checkpoint_root: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """(path, state, reasons the newer checkpoints were skipped) for the newest checkpoint
    that verifies; CheckpointError when none does."""
    skipped: list[str] = []
    for path in candidates(checkpoint_root):
        try:
            state = read_checkpoint(path)
            check_trainer_state(state, path)
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        return path, state, skipped
    why = f" ({'; '.join(skipped)})" if skipped else ""
    raise CheckpointError(f"{checkpoint_root.parent}: no usable checkpoint to resume from{why}")
