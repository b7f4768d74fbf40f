"""On-disk activation cache: sharded safetensors per hookpoint + a JSON manifest.

Layout::

    out_dir/
      manifest.json                       written last: no manifest = interrupted write
      <hookpoint>/train-00000.safetensors  x [n, d], token_ids [n], doc_ids [n],
      <hookpoint>/train-00001.safetensors  context_ids [n], positions [n] (+ grad [n, d])
      <hookpoint>/eval-00000.safetensors   tokens from held-out documents

Every shard holds the same per-token arrays, all with first dimension n (the shard's token
count); ``manifest["hookpoints"][h]["arrays"]`` names them with dtype and trailing shape, so
new per-token arrays (the g-SAE gradient ``grad``, a transcoder's ``target``) need no format
change. Each shard is listed with its token count, byte size and sha256.

A hookpoint pair ``SOURCE->TARGET`` (transcoders; `saekit.data.hooks.HookPair`) is one
entry, named by its canonical spelling (``model.layers.6.mlp:in->out``), stored in the
directory ``model.layers.6.mlp.in--out``: ``x`` [n, d_in] holds the source and ``target``
[n, d_out] the target of the same tokens, and the entry records ``source``, ``target`` and
``d_out``.

`CacheStream` reads a cache back as an ActivationStream with a token-level shuffle in
bounded memory; see its docstring for the guarantees.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import struct
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from saekit.data.corpora import TextCorpus, iter_context_batches
from saekit.data.hooks import (
    HookPair,
    Which,
    canonical_hookpoint,
    capture,
    capture_with_grad,
    get_module,
    is_pair,
    parse_site,
    token_mask,
)
from saekit.data.models import describe_model
from saekit.data.stream import Batch

CACHE_FORMAT = "saekit-activation-cache"
FORMAT_VERSION = 1
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
_SPLITS = {"train": "train", "eval": "heldout"}  # cache split -> corpus split


class CacheError(ValueError):
    """A cache directory that is missing, incomplete, corrupt or unlike its manifest."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _sites(hookpoint: str) -> list[str]:
    """What one cache entry captures: [hookpoint], or the [source, target] sites of a pair."""
    return list(HookPair.parse(hookpoint).sites) if is_pair(hookpoint) else [hookpoint]


def _dirname(hookpoint: str) -> str:
    """The entry's directory: the hookpoint itself, or a pair spelled without ':' and '>'
    (awkward in shells and not allowed on every file system)."""
    return hookpoint.replace("->", "--").replace(":", ".")


# ---- writing ------------------------------------------------------------------------------


class _ShardWriter:
    """Collects per-token arrays of one hookpoint and split; writes full shards as they fill."""

    def __init__(self, out_dir: Path, hookpoint: str, split: str, shard_tokens: int, limit: int):
        self.out_dir, self.hookpoint, self.split = out_dir, hookpoint, split
        self.shard_tokens, self.limit = shard_tokens, limit
        self.pending: dict[str, list[torch.Tensor]] = {}
        self.n_pending = 0
        self.n_total = 0
        self.shards: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return self.n_total >= self.limit

    def add(self, arrays: dict[str, torch.Tensor]) -> None:
        n = min(next(iter(arrays.values())).shape[0], self.limit - self.n_total)
        if n <= 0:
            return
        for k, v in arrays.items():
            self.pending.setdefault(k, []).append(v[:n])
        self.n_pending += n
        self.n_total += n
        while self.n_pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> list[dict[str, Any]]:
        if self.n_pending:
            self._flush(self.n_pending)
        return self.shards

    def _flush(self, n: int) -> None:
        joined = {k: torch.cat(v) for k, v in self.pending.items()}
        # clone: a view of the remainder would keep the whole joined buffer alive.
        self.pending = {k: [v[n:].clone()] for k, v in joined.items()}
        self.n_pending -= n
        rel = f"{_dirname(self.hookpoint)}/{self.split}-{len(self.shards):05d}.safetensors"
        data = save_safetensors({k: v[:n].contiguous() for k, v in joined.items()})
        path = self.out_dir / rel
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        sha = hashlib.sha256(data).hexdigest()
        self.shards.append({"file": rel, "n_tokens": n, "bytes": len(data), "sha256": sha})


def write_cache(
    out_dir: str | os.PathLike,
    model: Any,
    tokenizer: Any,
    corpus: str | TextCorpus | Sequence[str],
    hookpoints: Sequence[str],
    n_tokens: int,
    dtype: str = "fp32",
    shard_tokens: int = 32_768,
    eval_tokens: int | None = None,
    ctx_len: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    which: Which = "output",
    exclude_first: bool = True,
    max_norm_factor: float | None = None,
    with_grad: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Capture ``n_tokens`` masked tokens per hookpoint from the corpus' train split (and
    ``eval_tokens``, default n_tokens // 20, from its held-out split) into ``out_dir``.

    dtype: storage precision "fp16" | "bf16" | "fp32" (fp16 overflow raises).
    shard_tokens: tokens per shard file; the stream's shuffle pool is a few shards.
    Masking as `token_mask`: padding, special tokens, the first position, and optionally
    tokens above ``max_norm_factor`` x the batch median norm are not stored.
    with_grad: also store ``grad`` = d(summed next-token CE)/dx per token (full forward and
    backward instead of a truncated forward).
    hookpoints: module paths (read at ``which``) and/or pairs ``SOURCE->TARGET``, whose
    entry stores the target beside x as ``target``; every site is read in the same forward.
    Returns the manifest (also written to ``out_dir/manifest.json``).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if n_tokens <= 0 or shard_tokens <= 0:
        raise ValueError(f"n_tokens and shard_tokens must be positive: {n_tokens}, {shard_tokens}")
    if with_grad and which != "output":
        raise ValueError("with_grad stores gradients of hookpoint outputs only (which='output')")
    hookpoints = list(dict.fromkeys(canonical_hookpoint(h) for h in hookpoints))
    if with_grad and any(is_pair(h) for h in hookpoints):
        raise ValueError("with_grad stores gradients of plain hookpoints, not of pairs")
    for h in hookpoints:
        for site in _sites(h):
            get_module(model, site)  # unknown names fail before any compute
    out = _prepare_dir(Path(out_dir), hookpoints, overwrite)
    eval_tokens = n_tokens // 20 if eval_tokens is None else eval_tokens
    settings = dict(
        ctx_len=ctx_len,
        batch_size=batch_size,
        seed=seed,
        which=which,
        exclude_first=exclude_first,
        max_norm_factor=max_norm_factor,
        with_grad=with_grad,
        storage=DTYPES[dtype],
        progress=progress,
    )
    started = time.time()
    splits: dict[str, dict[str, Any]] = {}
    for split, count in (("train", n_tokens), ("eval", eval_tokens)):
        if count > 0:
            splits[split] = _write_split(
                out, model, tokenizer, corpus, hookpoints, split, count, shard_tokens, **settings
            )
    manifest = _manifest(model, tokenizer, hookpoints, splits, dtype, settings, started)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return manifest


def _prepare_dir(out: Path, hookpoints: list[str], overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty (pass overwrite=True / --overwrite)")
        _remove_cache_files(out)
    for h in hookpoints:
        (out / _dirname(h)).mkdir(parents=True, exist_ok=True)
    return out


# What a capture writes: shards under a hookpoint directory, and the manifest (+ its temp).
_SHARD_NAME = re.compile(r"^(train|eval)-\d{5}\.safetensors$")


def _remove_cache_files(out: Path) -> None:
    """Delete an old or half-written cache in `out`, and nothing else: every file must be
    the manifest, a shard it names, or (for a capture that was interrupted before its
    manifest) a shard-named file in a hookpoint directory. Anything else means `out` is not
    (only) a cache, and nothing is deleted."""
    named: set[str] = set()
    if (out / MANIFEST).is_file():
        try:
            manifest = load_manifest(out)
            named = {
                str(Path(shard["file"]))
                for entry in manifest["hookpoints"].values()
                for split in entry["splits"].values()
                for shard in split["shards"]
            }
        except (CacheError, KeyError, TypeError, AttributeError):
            named = set()  # unreadable: only capture-shaped files may go
    files, dirs = [], []
    for root, dirnames, filenames in os.walk(out):
        rel_root = Path(root).relative_to(out)
        for d in dirnames:
            dirs.append(Path(root) / d)
            if (Path(root) / d).is_symlink():
                raise FileExistsError(f"{out} holds a symlink {rel_root / d}; not deleting")
        for f in filenames:
            rel = rel_root / f
            ours = (
                str(rel) in (MANIFEST, MANIFEST + ".tmp")
                or str(rel) in named
                or (len(rel.parts) == 2 and _SHARD_NAME.match(f) is not None)
            )
            if not ours or (Path(root) / f).is_symlink():
                raise FileExistsError(
                    f"{out} holds {rel}: not a saekit cache file, so nothing was deleted "
                    "(choose another --out)"
                )
            files.append(Path(root) / f)
    for f in files:
        f.unlink()
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        d.rmdir()


def _write_split(
    out: Path,
    model: Any,
    tokenizer: Any,
    corpus: Any,
    hookpoints: list[str],
    split: str,
    count: int,
    shard_tokens: int,
    *,
    ctx_len: int,
    batch_size: int,
    seed: int,
    which: Which,
    exclude_first: bool,
    max_norm_factor: float | None,
    with_grad: bool,
    storage: torch.dtype,
    progress: bool,
) -> dict[str, Any]:
    """Stream contexts through the model until every hookpoint has ``count`` tokens."""
    writers = {h: _ShardWriter(out, h, split, shard_tokens, count) for h in hookpoints}
    batches = iter_context_batches(tokenizer, corpus, batch_size, ctx_len, _SPLITS[split], seed)
    bar = _progress(count, f"{split} tokens") if progress else None
    n_contexts, description, widths = 0, {}, {}
    sites = list(dict.fromkeys(s for h in hookpoints for s in _sites(h)))
    for batch in batches:
        description = batch.description
        ids, am = batch.input_ids, batch.attention_mask
        device = next(model.parameters()).device
        if with_grad:
            acts, grads = capture_with_grad(model, ids.to(device), am.to(device), hookpoints)
        else:
            acts, grads = capture(model, ids.to(device), am.to(device), sites, which), {}
        for h, w in writers.items():
            if w.full:
                continue
            # a pair: source and target, masked alike (an outlier in either drops the token)
            parts = [acts[s].cpu() for s in _sites(h)]
            widths[h] = [p.shape[-1] for p in parts]
            mask = token_mask(ids, am, batch.special_ids, exclude_first, parts[0], max_norm_factor)
            for part in parts[1:]:
                if max_norm_factor is not None:
                    mask &= token_mask(
                        ids, am, batch.special_ids, exclude_first, part, max_norm_factor
                    )
            arrays = {"x": _to_storage(parts[0][mask], storage, h)}
            if len(parts) > 1:
                arrays["target"] = _to_storage(parts[1][mask], storage, f"{h} (target)")
            if with_grad:
                arrays["grad"] = _to_storage(grads[h].cpu()[mask], storage, f"{h} (grad)")
            arrays |= _metadata(batch.input_ids, batch.doc_ids, mask, n_contexts)
            before = w.n_total
            w.add(arrays)
            if bar is not None and h == hookpoints[0]:
                bar.update(w.n_total - before)
        n_contexts += len(batch)
        if all(w.full for w in writers.values()):
            break
    if bar is not None:
        bar.close()
    short = {h: w.n_total for h, w in writers.items() if not w.full}
    if short:
        warnings.warn(
            f"corpus ran out for the {split} split: {short} of {count} tokens", stacklevel=3
        )
    return {
        "corpus": description,
        "n_contexts": n_contexts,
        "hookpoints": {
            h: {"d": widths.get(h, [None])[0], "n_tokens": w.n_total, "shards": w.close()}
            | ({"d_out": widths.get(h, [None, None])[1]} if is_pair(h) else {})
            for h, w in writers.items()
        },
    }


def _to_storage(x: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    y = x.to(dtype)
    if not torch.isfinite(y).all():
        raise FloatingPointError(
            f"activations at {name} overflow {_dtype_name(dtype)} (max |x| = "
            f"{x.abs().max().item():.4g}); store them as bf16 or fp32"
        )
    return y


def _metadata(
    input_ids: torch.Tensor, doc_ids: torch.Tensor, mask: torch.Tensor, first_context: int
) -> dict[str, torch.Tensor]:
    n, t = input_ids.shape
    context = torch.arange(first_context, first_context + n).unsqueeze(1).expand(n, t)
    positions = torch.arange(t).unsqueeze(0).expand(n, t)
    values = {
        "token_ids": input_ids,
        "doc_ids": doc_ids,
        "context_ids": context,
        "positions": positions,
    }
    return {k: v[mask].to(META_DTYPES[k]) for k, v in values.items()}


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok")


def _manifest(
    model: Any,
    tokenizer: Any,
    hookpoints: list[str],
    splits: dict[str, dict[str, Any]],
    dtype: str,
    settings: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    import saekit

    storage = _dtype_name(DTYPES[dtype])
    entries = {}
    for h in hookpoints:
        d = next(s["hookpoints"][h]["d"] for s in splits.values())
        arrays = {"x": {"dtype": storage, "shape": [d]}}
        pair: dict[str, Any] = {}
        if is_pair(h):
            source, target = HookPair.parse(h).sites
            d_out = next(s["hookpoints"][h]["d_out"] for s in splits.values())
            arrays["target"] = {"dtype": storage, "shape": [d_out]}
            pair = {"source": source, "target": target, "d_out": d_out}
        if settings["with_grad"]:
            arrays["grad"] = {"dtype": storage, "shape": [d]}
        arrays |= {k: {"dtype": _dtype_name(v), "shape": []} for k, v in META_DTYPES.items()}
        entries[h] = {
            "d_in": d,
            "which": parse_site(pair["source"] if pair else h, settings["which"])[1],
            **pair,
            "arrays": arrays,
            "splits": {
                name: {k: s["hookpoints"][h][k] for k in ("n_tokens", "shards")}
                for name, s in splits.items()
            },
        }
    all_sums = [
        sh["sha256"] for e in entries.values() for s in e["splits"].values() for sh in s["shards"]
    ]
    return {
        "format": CACHE_FORMAT,
        "format_version": FORMAT_VERSION,
        "cache_id": hashlib.sha256("".join(all_sums).encode()).hexdigest()[:16],
        "saekit_version": saekit.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.time() - started, 1),
        "model": describe_model(model),
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "dtype": storage,
        "n_tokens": {
            name: s["hookpoints"][hookpoints[0]]["n_tokens"] for name, s in splits.items()
        },
        "corpus": {
            name: {**s["corpus"], "n_contexts": s["n_contexts"]} for name, s in splits.items()
        },
        "masking": {
            "exclude_first": settings["exclude_first"],
            "max_norm_factor": settings["max_norm_factor"],
            "special_tokens": "bos/eos/pad and all_special_ids of the tokenizer",
        },
        "capture": {
            "batch_size": settings["batch_size"],
            "which": settings["which"],
            "with_grad": settings["with_grad"],
            "torch": torch.__version__,
        },
        "hookpoints": entries,
    }


# ---- reading and verification ------------------------------------------------------------


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
    return manifest


def _hookpoint_entry(manifest: dict[str, Any], hookpoint: str | None, where: Any) -> tuple:
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


def _split_entry(entry: dict[str, Any], split: str, where: Any) -> dict[str, Any]:
    if split not in entry["splits"]:
        raise CacheError(f"{where} has no {split!r} split (it holds {list(entry['splits'])})")
    return entry["splits"][split]


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
    _, entry = _hookpoint_entry(manifest, hookpoint, root)
    parts: dict[str, list[torch.Tensor]] = {}
    for shard in _split_entry(entry, split, root)["shards"]:
        check_shard_header(root / shard["file"], shard, entry["arrays"])
        for k, v in read_shard(root / shard["file"], shard).items():
            if arrays is None or k in arrays:
                parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


# ---- the stream -----------------------------------------------------------------------------


def _seeded(*parts: Any) -> torch.Generator:
    key = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "big") >> 1)


class CacheStream:
    """An activation cache as an ActivationStream, shuffled at the token level.

    Shuffle: each epoch permutes the shard order (seeded by seed and epoch), groups the
    shards into pools of ``pool_shards`` consecutive shards, and permutes the tokens within
    each pool. The epoch is the concatenation of the permuted pools, cut into batches; a
    batch may straddle two pools. Memory: about two pools of shards.

    Guarantees: with drop_last=False every token of the split appears exactly once per
    epoch (the epoch's last batch may be smaller); with drop_last=True the < batch_size
    leftover of each epoch is skipped. ``state_dict()`` is (epoch, token offset), so
    ``load_state_dict`` resumes on exactly the next token, even with another batch size.
    Mixing: a batch draws from ~pool_shards x shard_tokens tokens; set pool_shards to the
    number of shards for a full shuffle.

    Integrity: sizes and headers of all shards are checked on open; checksums on each
    shard's first read (verify="first_read"), all at open (verify="open") or never ("none").
    extras: per-token float arrays to attach as Batch extras (default: every array other
    than x and the metadata, i.e. "grad" or a pair's "target" when stored); include_metadata
    adds token_ids, doc_ids, context_ids and positions as extras too. ``d_out`` is the
    target's width for a pair, else None.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        hookpoint: str | None = None,
        batch_size: int = 4096,
        seed: int = 0,
        split: str = "train",
        pool_shards: int = 4,
        loop: bool = True,
        drop_last: bool = False,
        verify: str = "first_read",
        extras: Sequence[str] | None = None,
        include_metadata: bool = False,
    ):
        if verify not in ("first_read", "open", "none"):
            raise ValueError(f"verify must be 'first_read', 'open' or 'none', got {verify!r}")
        if batch_size <= 0 or pool_shards <= 0:
            raise ValueError("batch_size and pool_shards must be positive")
        self.root = Path(cache_dir)
        self.manifest = load_manifest(self.root)
        self.hookpoint, entry = _hookpoint_entry(self.manifest, hookpoint, self.root)
        self.split = split
        self.shards = _split_entry(entry, split, self.root)["shards"]
        if not self.shards:
            raise CacheError(f"{self.root}: the {split!r} split of {self.hookpoint} is empty")
        self.arrays = entry["arrays"]
        for shard in self.shards:
            check_shard_header(self.root / shard["file"], shard, self.arrays)
        self.d_in = int(entry["d_in"])
        self.d_out: int | None = int(entry["d_out"]) if "d_out" in entry else None
        self.batch_size = batch_size
        self.seed = seed
        self.pool_shards = pool_shards
        self.loop, self.drop_last = loop, drop_last
        self.verify = verify
        default_extras = [k for k in self.arrays if k != "x" and k not in META_DTYPES]
        self.extras = list(default_extras if extras is None else extras)
        self.extras += list(META_DTYPES) if include_metadata else []
        unknown = [k for k in self.extras if k not in self.arrays]
        if unknown:
            raise CacheError(
                f"{self.root}: no per-token arrays {unknown} (has {list(self.arrays)})"
            )
        self.n_tokens = sum(s["n_tokens"] for s in self.shards)
        self.epoch, self.offset = 0, 0
        self._verified: set[int] = set()
        self._pools: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        if verify == "open":
            for i in range(len(self.shards)):
                self._read(i)

    def shard(self, rank: int, world_size: int) -> None:
        """Keep only shards rank, rank + W, ... of the split (data-parallel ranks read
        disjoint tokens; each shuffles its own shards). Needs at least W shards."""
        if len(self.shards) < world_size:
            raise CacheError(
                f"{self.root}: {len(self.shards)} shard(s) in the {self.split!r} split for "
                f"{world_size} ranks; write the cache with a smaller --shard-tokens"
            )
        self.shards = self.shards[rank::world_size]
        self.n_tokens = sum(s["n_tokens"] for s in self.shards)
        self.epoch, self.offset, self._pools = 0, 0, {}
        self.rank_shard = [rank, world_size]

    # ---- epoch layout -------------------------------------------------------------------
    def _layout(self, epoch: int) -> tuple[list[int], list[int]]:
        """(shard order, start token of each pool + the end) for ``epoch``."""
        order = torch.randperm(len(self.shards), generator=_seeded(self.seed, epoch)).tolist()
        starts = [0]
        for p in range(0, len(order), self.pool_shards):
            starts.append(
                starts[-1]
                + sum(self.shards[i]["n_tokens"] for i in order[p : p + self.pool_shards])
            )
        return order, starts

    def _read(self, i: int) -> dict[str, torch.Tensor]:
        check = self.verify != "none" and i not in self._verified
        tensors = read_shard(self.root / self.shards[i]["file"], self.shards[i], verify=check)
        self._verified.add(i)
        return tensors

    def _pool(self, epoch: int, p: int, order: list[int]) -> dict[str, torch.Tensor]:
        if (epoch, p) not in self._pools:
            shard_ids = order[p * self.pool_shards : (p + 1) * self.pool_shards]
            keep = ["x", *self.extras]
            loaded = [self._read(i) for i in shard_ids]
            joined = {k: torch.cat([t[k] for t in loaded]) for k in keep}
            n = joined["x"].shape[0]
            perm = torch.randperm(n, generator=_seeded(self.seed, epoch, "pool", p))
            # Keep at most the previous pool (a batch can straddle two) and this one.
            self._pools = {key: v for key, v in self._pools.items() if key == (epoch, p - 1)}
            self._pools[(epoch, p)] = {k: v[perm] for k, v in joined.items()}
        return self._pools[(epoch, p)]

    def _epoch_end(self) -> int:
        if self.drop_last:
            return self.n_tokens - self.n_tokens % self.batch_size
        return self.n_tokens

    # ---- ActivationStream ---------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        if self._epoch_end() == 0:
            raise CacheError(
                f"batch_size {self.batch_size} exceeds the {self.n_tokens} "
                "tokens of the split with drop_last=True"
            )
        layout_epoch, (order, starts) = self.epoch, self._layout(self.epoch)
        while True:
            if self.offset >= self._epoch_end():
                if not self.loop:
                    return
                self.epoch, self.offset = self.epoch + 1, 0
            if layout_epoch != self.epoch:
                layout_epoch, (order, starts) = self.epoch, self._layout(self.epoch)
            stop = min(self.offset + self.batch_size, self.n_tokens)
            tensors = self._slice(self.offset, stop, order, starts)
            self.offset = stop
            x = tensors.pop("x").float()
            extras = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
            yield Batch(x, extras)

    def _slice(self, start: int, stop: int, order: list[int], starts: list[int]) -> dict:
        parts = []
        while start < stop:
            p = bisect.bisect_right(starts, start) - 1
            pool = self._pool(self.epoch, p, order)
            lo, hi = start - starts[p], min(stop, starts[p + 1]) - starts[p]
            parts.append({k: v[lo:hi] for k, v in pool.items()})
            start = starts[p] + hi
        return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "pool_shards": self.pool_shards,
            "cache_id": self.manifest["cache_id"],
            "hookpoint": self.hookpoint,
            "split": self.split,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly; the state's seed and pool size win over the constructor's."""
        for key in ("cache_id", "hookpoint", "split"):
            if key in state and state[key] != self.state_dict()[key]:
                raise CacheError(
                    f"stream state is for {key}={state[key]!r}, this stream has "
                    f"{self.state_dict()[key]!r}"
                )
        self.seed = int(state.get("seed", self.seed))
        self.pool_shards = int(state.get("pool_shards", self.pool_shards))
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._pools = {}

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        pair = {}
        if self.d_out is not None:
            pair["pair"] = HookPair.parse(self.hookpoint).describe(self.d_in, self.d_out)
        return {
            "source": "cache",
            "path": str(self.root),
            "cache_id": m["cache_id"],
            "hookpoint": self.hookpoint,
            "which": m["hookpoints"][self.hookpoint]["which"],
            "split": self.split,
            "model": m["model"],
            "corpus": m["corpus"].get(self.split),
            "tokens": self.n_tokens,
            "dtype": m["dtype"],
            "masking": m["masking"],
            "seed": self.seed,
            "pool_shards": self.pool_shards,
            **pair,
        }


def open_cache_stream(
    spec: str, batch_size: int, seed: int = 0, split: str = "train", **kwargs: Any
) -> CacheStream:
    """``"<dir>[@<hookpoint>]"`` -> CacheStream (split "train" or "eval")."""
    path, at, hookpoint = spec.rpartition("@")
    if not at or Path(spec).is_dir():
        path, hookpoint = spec, ""
    return CacheStream(
        path, hookpoint or None, batch_size=batch_size, seed=seed, split=split, **kwargs
    )
