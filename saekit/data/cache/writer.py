"""Writing an activation cache: run a model over a corpus and store the masked activations
of several hookpoints as shards (see `saekit.data.cache.format` for the layout)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from saekit.data.cache.format import (
    CACHE_FORMAT,
    DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    META_DTYPES,
    CacheError,
    dtype_name,
    load_manifest,
)
from saekit.data.corpora import TextCorpus, iter_context_batches
from saekit.data.gradients import NextTokenCE, capture_gradients
from saekit.data.hooks import (
    HookPair,
    Which,
    all_finite,
    canonical_hookpoint,
    capture,
    get_module,
    is_pair,
    parse_site,
)
from saekit.data.masking import DEFAULT_MASKING, Masking
from saekit.data.models import describe_model
from saekit.data.splits import HELDOUT, TRAIN


def _sites(hookpoint: str) -> list[str]:
    """What one cache entry captures: [hookpoint], or the [source, target] sites of a pair."""
    return list(HookPair.parse(hookpoint).sites) if is_pair(hookpoint) else [hookpoint]


def _dirname(hookpoint: str) -> str:
    """The entry's directory: the hookpoint itself, or a pair spelled without ':' and '>'
    (awkward in shells and not allowed on every file system)."""
    return hookpoint.replace("->", "--").replace(":", ".")


class _ShardWriter:
    """Collects per-token arrays of one hookpoint and split; writes full shards as they fill.

    Shards are serialised, hashed and written on the ``io`` thread, overlapping the model's
    next batches instead of stalling them. At most one shard per writer is in flight, so
    memory stays bounded when the model outpaces the disk."""

    def __init__(
        self,
        out_dir: Path,
        hookpoint: str,
        split: str,
        shard_tokens: int,
        limit: int,
        io: ThreadPoolExecutor,
    ):
        self.out_dir, self.hookpoint, self.split = out_dir, hookpoint, split
        self.shard_tokens, self.limit, self.io = shard_tokens, limit, io
        self.pending: dict[str, list[torch.Tensor]] = {}
        self.n_pending = 0
        self.n_total = 0
        self.shards: list[Future[dict[str, Any]]] = []

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
        return [shard.result() for shard in self.shards]

    def _flush(self, n: int) -> None:
        joined = {k: torch.cat(v) for k, v in self.pending.items()}
        # clone: a view of the remainder would keep the whole joined buffer alive.
        self.pending = {k: [v[n:].clone()] for k, v in joined.items()}
        self.n_pending -= n
        rel = f"{_dirname(self.hookpoint)}/{self.split}-{len(self.shards):05d}.safetensors"
        if self.shards:
            self.shards[-1].result()  # the previous shard is on disk (and its errors raised)
        arrays = {k: v[:n] for k, v in joined.items()}
        self.shards.append(self.io.submit(_write_shard, self.out_dir, rel, arrays))


def _write_shard(out_dir: Path, rel: str, arrays: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry."""
    data = save_safetensors({k: v.contiguous() for k, v in arrays.items()})
    path = out_dir / rel
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    sha = hashlib.sha256(data).hexdigest()
    n = len(next(iter(arrays.values())))
    return {"file": rel, "n_tokens": n, "bytes": len(data), "sha256": sha}


def write_cache(
    out_dir: str | os.PathLike,
    model: Any,
    tokenizer: Any,
    corpus: str | TextCorpus | Sequence[str],
    hookpoints: Sequence[str],
    n_tokens: int,
    dtype: str = "fp32",
    shard_tokens: int = 32_768,
    heldout_tokens: int | None = None,
    ctx_len: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    which: Which = "output",
    masking: Masking = DEFAULT_MASKING,
    with_grad: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Capture ``n_tokens`` masked tokens per hookpoint from the corpus' train split (and
    ``heldout_tokens``, default n_tokens // 20, from its held-out split) into ``out_dir``.

    dtype: storage precision "fp16" | "bf16" | "fp32" (fp16 overflow raises).
    shard_tokens: tokens per shard file; the stream's shuffle pool is a few shards.
    masking: which tokens are stored (`saekit.data.masking`; norm outliers are judged
    against the median of each forward batch).
    with_grad: also store ``grad`` = d(summed next-token CE)/dx per token
    (`saekit.data.gradients`: a full forward and a backward instead of a truncated forward).
    hookpoints: module paths (read at ``which``) and/or pairs ``SOURCE->TARGET``, whose
    entry stores the target beside x as ``target``; every site is read in the same forward.
    Returns the manifest (also written to ``out_dir/manifest.json``).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if n_tokens <= 0 or shard_tokens <= 0:
        raise ValueError(f"n_tokens and shard_tokens must be positive: {n_tokens}, {shard_tokens}")
    hookpoints = list(dict.fromkeys(canonical_hookpoint(h) for h in hookpoints))
    if with_grad and any(is_pair(h) for h in hookpoints):
        raise ValueError("with_grad stores gradients of plain hookpoints, not of pairs")
    for h in hookpoints:
        for site in _sites(h):
            get_module(model, site)  # unknown names fail before any compute
    out = _prepare_dir(Path(out_dir), hookpoints, overwrite)
    heldout_tokens = n_tokens // 20 if heldout_tokens is None else heldout_tokens
    settings = dict(
        ctx_len=ctx_len,
        batch_size=batch_size,
        seed=seed,
        which=which,
        masking=masking,
        with_grad=with_grad,
        storage=DTYPES[dtype],
        progress=progress,
    )
    started = time.time()
    splits: dict[str, dict[str, Any]] = {}
    # one thread for the shard files (`_ShardWriter`); leaving the block waits for them
    with ThreadPoolExecutor(max_workers=1) as io:
        for split, count in ((TRAIN, n_tokens), (HELDOUT, heldout_tokens)):
            if count > 0:
                splits[split] = _write_split(
                    out,
                    model,
                    tokenizer,
                    corpus,
                    hookpoints,
                    split,
                    count,
                    shard_tokens,
                    io,
                    **settings,
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


# What a capture writes: shards under a hookpoint directory (eval-*: format version 1), and
# the manifest (+ its temp).
_SHARD_NAME = re.compile(r"^(train|heldout|eval)-\d{5}\.safetensors$")


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
    io: ThreadPoolExecutor,
    *,
    ctx_len: int,
    batch_size: int,
    seed: int,
    which: Which,
    masking: Masking,
    with_grad: bool,
    storage: torch.dtype,
    progress: bool,
) -> dict[str, Any]:
    """Stream contexts through the model until every hookpoint has ``count`` tokens."""
    writers = {h: _ShardWriter(out, h, split, shard_tokens, count, io) for h in hookpoints}
    batches = iter_context_batches(tokenizer, corpus, batch_size, ctx_len, split, seed)
    bar = _progress(count, f"{split} tokens") if progress else None
    n_contexts, description, widths = 0, {}, {}
    sites = list(dict.fromkeys(s for h in hookpoints for s in _sites(h)))
    for batch in batches:
        description = batch.description
        ids, am = batch.input_ids, batch.attention_mask
        device = next(model.parameters()).device
        if with_grad:
            acts, grads = capture_gradients(
                model, ids.to(device), am.to(device), sites, which, batch.special_ids, masking
            )
        else:
            acts, grads = capture(model, ids.to(device), am.to(device), sites, which), {}
        for h, w in writers.items():
            if w.full:
                continue
            parts = [acts[s].cpu() for s in _sites(h)]
            widths[h] = [p.shape[-1] for p in parts]
            # a pair: source and target, masked alike (an outlier in either drops the token)
            mask = masking.keep(ids, am, batch.special_ids, parts)
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
    if not all_finite(y):
        raise FloatingPointError(
            f"activations at {name} overflow {dtype_name(dtype)} (max |x| = "
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

    storage = dtype_name(DTYPES[dtype])
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
        arrays |= {k: {"dtype": dtype_name(v), "shape": []} for k, v in META_DTYPES.items()}
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
        "masking": settings["masking"].describe(),
        "capture": {
            "batch_size": settings["batch_size"],
            "which": settings["which"],
            "with_grad": settings["with_grad"],
            **({"gradient": NextTokenCE().describe()} if settings["with_grad"] else {}),
            "torch": torch.__version__,
        },
        "hookpoints": entries,
    }
