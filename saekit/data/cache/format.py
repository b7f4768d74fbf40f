"""The activation cache's files: the manifest, the shards, and their checks.

Layout::

    out_dir/
      manifest.json                       written last: no manifest = interrupted write
      <hookpoint>/train-00000.safetensors  x [n, d], token_ids [n], doc_ids [n],
      <hookpoint>/train-00001.safetensors  context_ids [n], positions [n] (+ grad [n, d])
      <hookpoint>/heldout-00000.safetensors  tokens from held-out documents

Every shard holds the same per-token arrays, all with first dimension n (the shard's token
count); ``manifest["hookpoints"][h]["arrays"]`` names them with dtype and trailing shape, so
new per-token arrays (the g-SAE gradient ``grad``, a transcoder's ``target``) need no format
change. Each shard is listed with its token count, byte size and sha256.

A hookpoint pair ``SOURCE->TARGET`` (transcoders; `saekit.data.hooks.HookPair`) is one
entry, named by its canonical spelling (``model.layers.6.mlp:in->out``), stored in the
directory ``model.layers.6.mlp.in--out``: ``x`` [n, d_in] holds the source and ``target``
[n, d_out] the target of the same tokens, and the entry records ``source``, ``target`` and
``d_out``.

Format version 2 renamed the held-out split from "eval" to "heldout" (`saekit.data.splits`);
`load_manifest` reads a version-1 manifest with the new name, and its shards where they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from saekit.data.hooks import canonical_hookpoint
from saekit.data.splits import HELDOUT, check_split

CACHE_FORMAT = "saekit-activation-cache"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
# Per-token metadata stored beside the activations (locates every token in its context).
META_DTYPES = {
    "token_ids": torch.int32,
    "doc_ids": torch.int64,
    "context_ids": torch.int64,
    "positions": torch.int32,
}
_ST_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.int32: "I32",
    torch.int64: "I64",
}


class CacheError(ValueError):
    """A cache directory that is missing, incomplete, corrupt or unlike its manifest."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and sanity-check ``cache_dir/manifest.json``."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise CacheError(
            f"{cache_dir}: no {MANIFEST} (not a saekit cache, or its writing was interrupted)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path}: not a saekit activation cache manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CacheError(
            f"{path}: format version {manifest['format_version']} is newer than "
            f"this saekit reads ({FORMAT_VERSION}); upgrade saekit"
        )
    if manifest.get("format_version", 0) < 2:
        _rename_eval_split(manifest)
    return manifest


def _rename_eval_split(manifest: dict[str, Any]) -> None:
    """Version 1 called the held-out split "eval" in n_tokens, corpus and every entry's
    splits. Malformed parts are left for the readers' own checks."""
    entries = manifest.get("hookpoints")
    entries = entries.values() if isinstance(entries, dict) else []
    tables = [manifest.get("n_tokens"), manifest.get("corpus")]
    tables += [e.get("splits") for e in entries if isinstance(e, dict)]
    for table in tables:
        if isinstance(table, dict) and "eval" in table:
            table[HELDOUT] = table.pop("eval")


def hookpoint_entry(manifest: dict[str, Any], hookpoint: str | None, where: Any) -> tuple:
    names = list(manifest["hookpoints"])
    if hookpoint is not None:
        hookpoint = canonical_hookpoint(hookpoint)  # "M:in->M:out" finds "M:in->out"
    if hookpoint is None:
        if len(names) != 1:
            raise CacheError(f"{where} holds several hookpoints {names}; choose one")
        hookpoint = names[0]
    if hookpoint not in manifest["hookpoints"]:
        raise CacheError(f"{where} has no hookpoint {hookpoint!r}; it holds {names}")
    return hookpoint, manifest["hookpoints"][hookpoint]


def split_entry(entry: dict[str, Any], split: str, where: Any) -> dict[str, Any]:
    if check_split(split) not in entry["splits"]:
        raise CacheError(f"{where} has no {split!r} split (it holds {list(entry['splits'])})")
    return entry["splits"][split]


def split_names(cache_dir: str | os.PathLike, hookpoint: str | None = None) -> list[str]:
    """The splits a cache holds for ``hookpoint`` (None: its only hookpoint)."""
    root = Path(cache_dir)
    return list(hookpoint_entry(load_manifest(root), hookpoint, root)[1]["splits"])


def check_shard_header(path: Path, shard: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Size and header checks (cheap: no tensor data is read)."""
    if not path.is_file():
        raise CacheError(f"missing shard {path}")
    size = path.stat().st_size
    if size != shard["bytes"]:
        raise CacheError(
            f"shard {path} is {size} bytes, the manifest says {shard['bytes']} "
            "(truncated or replaced file); re-create the cache"
        )
    with path.open("rb") as f:
        (n_header,) = struct.unpack("<Q", f.read(8))
        if n_header > size - 8:
            raise CacheError(f"shard {path} has a corrupt header")
        try:
            header = json.loads(f.read(n_header))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CacheError(f"shard {path} has a corrupt header") from None
    for name, spec in arrays.items():
        want_shape = [shard["n_tokens"], *spec["shape"]]
        want_dtype = _ST_DTYPES[getattr(torch, spec["dtype"])]
        got = header.get(name)
        if got is None or got["shape"] != want_shape or got["dtype"] != want_dtype:
            found = None if got is None else (got["dtype"], got["shape"])
            raise CacheError(
                f"shard {path}: array {name!r} is {found}, the manifest expects "
                f"{(want_dtype, want_shape)} (a shard from another cache?)"
            )


def read_shard(path: Path, shard: dict[str, Any], verify: bool = True) -> dict[str, torch.Tensor]:
    """All arrays of one shard; ``verify`` compares the sha256 with the manifest."""
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise CacheError(
            f"shard {path}: sha256 differs from the manifest (corrupt or "
            "modified file); re-create the cache"
        )
    try:
        return load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types on damaged files
        raise CacheError(f"shard {path} cannot be read: {e}") from None


def verify_cache(cache_dir: str | os.PathLike, checksums: bool = True) -> dict[str, Any]:
    """Check every shard of every hookpoint and split; return the manifest or raise
    CacheError on the first problem."""
    root = Path(cache_dir)
    manifest = load_manifest(root)
    for entry in manifest["hookpoints"].values():
        for split in entry["splits"].values():
            for shard in split["shards"]:
                check_shard_header(root / shard["file"], shard, entry["arrays"])
                if checksums:
                    read_shard(root / shard["file"], shard, verify=True)
    return manifest


def read_cache(
    cache_dir: str | os.PathLike,
    hookpoint: str | None = None,
    split: str = "train",
    arrays: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Every token of one hookpoint and split, in written order, concatenated in memory
    (small caches, tests, dashboards). Checksums are verified."""
    root = Path(cache_dir)
    manifest = load_manifest(root)
    _, entry = hookpoint_entry(manifest, hookpoint, root)
    parts: dict[str, list[torch.Tensor]] = {}
    for shard in split_entry(entry, split, root)["shards"]:
        check_shard_header(root / shard["file"], shard, entry["arrays"])
        for k, v in read_shard(root / shard["file"], shard).items():
            if arrays is None or k in arrays:
                parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}
