"""`saekit browse --build`: precompute everything the feature browser shows, for every latent.

Layout of the data directory (default `<sae_dir>/browser`), written atomically:

    meta.json           SAE, model, hookpoint, corpus, build settings
    index.json          one column per list field over all latents (density, max/mean
                        activation, top tokens, logit-lens tokens, simulator r)
    tokens.json         {token id: the token decoded alone} for every id the pages mention
                        (list chips, logit lens, top tokens)
    contexts.json       [n_contexts][ctx_len] token ids of the corpus sample
    pieces.json         [n_contexts][ctx_len] the text each context token adds (text.py), so
                        contexts read as the decoded text; new in format version 2
    latents/NNNNN.json  per-latent detail, `shard_size` latents per file: top contexts,
                        quantile samples, histogram, logit lens, token stats, neighbours

Examples are stored as [context, position, [[position, value], ...]] (the latent's non-zero
values inside the window); the server joins them with pieces.json (version 1 stores, which
have none, with contexts.json and tokens.json).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.evaluation.evaluate import ModelSource
from saekit.evaluation.interp import (
    LatentRecords,
    logit_lens,
    pearson,
    quantile_examples,
    record_activations,
    simulate,
    simulator_index,
    token_stats,
    top_examples,
    training_masking,
)
from saekit.formats.atomic import atomic_directory
from saekit.viewer.text import text_pieces

DATA_FORMAT = "saekit-browser"
DATA_VERSION = 2  # 2: pieces.json


@dataclass
class BuildSettings:
    corpus: str = "default"
    split: str = "heldout"  # corpus split: held-out documents by default
    n_contexts: int = 256
    ctx_len: int = 64
    n_top: int = 16  # top-activating contexts per latent
    n_quantile_bins: int = 8
    per_bin: int = 3
    before: int = 10  # window tokens before / after the example token
    after: int = 4
    n_neighbours: int = 8
    n_logit: int = 10
    hist_bins: int = 24
    shard_size: int = 256
    seed: int = 0


def build(
    sae: Any,
    source: ModelSource,
    out_dir: str | Path,
    settings: BuildSettings | None = None,
    sae_path: str | Path | None = None,
    corpus: Any = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the browser data directory for `sae` (on the LM of `source`) to `out_dir`.
    `corpus` overrides settings.corpus with a TextCorpus object (tests, custom text)."""
    from saekit.data.corpora import tokenize_corpus

    s = settings or BuildSettings()
    say = progress or (lambda _m: None)
    model, tokenizer = source.load()
    say(f"tokenising {s.n_contexts} contexts of {s.ctx_len} tokens")
    contexts = tokenize_corpus(
        tokenizer, corpus or s.corpus, s.n_contexts, s.ctx_len, s.split, s.seed
    )
    say("encoding the corpus")
    records = record_activations(
        sae, model, contexts, source.hookpoint, source.which, masking=training_masking(sae)
    )
    say("logit lens and decoder neighbours")
    lens = logit_lens(model, sae.W_dec, top=s.n_logit)
    neighbours = decoder_neighbours(sae.W_dec, s.n_neighbours)
    say("per-latent statistics")
    sims = all_simulator_r(records)
    rng = np.random.default_rng(s.seed)
    details = [latent_detail(records, i, s, rng) for i in range(sae.n_latents)]
    for i, d in enumerate(details):
        d["neighbours"] = [[int(j), round(float(c), 4)] for j, c in neighbours[i]]
        d["simulator_r"] = _round(sims[i])
        if lens is not None:
            d["logit_top"] = [[t, round(v, 4)] for t, v in lens[i]["top"]]
            d["logit_bottom"] = [[t, round(v, 4)] for t, v in lens[i]["bottom"]]
    token_ids = _mentioned_tokens(contexts.input_ids, details)
    tokens = {str(t): tokenizer.decode([t]) for t in token_ids}
    pieces = [text_pieces(tokenizer, row) for row in contexts.input_ids.tolist()]
    meta = {
        "format": DATA_FORMAT,
        "format_version": DATA_VERSION,
        "sae": {
            "name": Path(sae_path).name if sae_path else sae.architecture,
            "path": str(Path(sae_path).resolve()) if sae_path else None,
            "architecture": sae.architecture,
            "d_in": sae.d_in,
            "n_latents": sae.n_latents,
        },
        "model": source.model,
        "hookpoint": source.hookpoint,
        "which": source.which,
        "n_tokens": records.n_kept,
        "has_logit_lens": lens is not None,
        "settings": asdict(s)
        | {"corpus": str(corpus.describe() if corpus is not None else s.corpus)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    index = _index(details, tokens)
    say(f"writing {out_dir}")
    with atomic_directory(out_dir) as tmp:
        _dump(tmp / "meta.json", meta)
        _dump(tmp / "index.json", index)
        _dump(tmp / "tokens.json", tokens)
        _dump(tmp / "contexts.json", contexts.input_ids.tolist())
        _dump(tmp / "pieces.json", pieces)
        (tmp / "latents").mkdir()
        for start in range(0, sae.n_latents, s.shard_size):
            _dump(
                tmp / "latents" / f"{start // s.shard_size:05d}.json",
                details[start : start + s.shard_size],
            )
    return Path(out_dir)


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":"), allow_nan=False))


def _round(v: float, digits: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


# ---- per latent -----------------------------------------------------------------------------


def latent_detail(
    records: LatentRecords, i: int, s: BuildSettings, rng: np.random.Generator
) -> dict[str, Any]:
    """Everything the latent page shows except neighbours / logit lens / simulator."""
    tok, val = records.entries(i)
    n = int(tok.size)
    detail: dict[str, Any] = {
        "id": i,
        "count": n,
        "density": n / max(records.n_kept, 1),
        "max_act": float(val.max()) if n else 0.0,
        "min_act": float(val.min()) if n else 0.0,
        "mean_act": float(val.mean()) if n else 0.0,
    }
    if n == 0:
        detail.update(top=[], quantiles=[], hist=None, top_tokens=[])
        return detail
    detail["top"] = top_examples(records, i, s.n_top, s.before, s.after)
    detail["quantiles"] = quantile_examples(
        records, i, s.n_quantile_bins, s.per_bin, s.before, s.after, rng
    )
    lo, hi = min(0.0, float(val.min())), float(val.max())
    counts, edges = np.histogram(val, bins=s.hist_bins, range=(lo, hi if hi > lo else lo + 1))
    detail["hist"] = {"edges": [round(float(e), 5) for e in edges], "counts": counts.tolist()}
    detail["top_tokens"] = [
        [t, round(share, 4), c] for t, share, c in token_stats(records, i, top=10)
    ]
    return detail


# ---- across latents -------------------------------------------------------------------------


def all_simulator_r(records: LatentRecords) -> list[float]:
    """Token/bigram-lookup simulator Pearson r for every latent (NaN for latents that never
    fire on the test half)."""
    index = simulator_index(records)
    out = []
    for i in range(records.n_latents):
        tok, _ = records.entries(i)
        if tok.size < 2:
            out.append(float("nan"))
            continue
        act = records.dense(i)
        out.append(pearson(simulate(act, index), act[index.test]))
    return out


@torch.no_grad()
def decoder_neighbours(
    W_dec: torch.Tensor, n: int, chunk: int = 1024
) -> list[list[tuple[int, float]]]:
    """For each atom, the n other atoms with the largest cosine, in row chunks (memory
    chunk × n_latents, never n_latents²)."""
    unit = W_dec.detach().float()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    p = unit.shape[0]
    n = min(n, p - 1)
    out: list[list[tuple[int, float]]] = []
    for start in range(0, p, chunk):
        sims = unit[start : start + chunk] @ unit.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -math.inf
        top = sims.topk(n, dim=-1) if n > 0 else None
        for r in range(sims.shape[0]):
            out.append(
                [] if top is None else list(zip(top.indices[r].tolist(), top.values[r].tolist()))
            )
    return out


def _mentioned_tokens(input_ids: torch.Tensor, details: list[dict[str, Any]]) -> list[int]:
    ids = set(input_ids.unique().tolist())
    for d in details:
        for key in ("logit_top", "logit_bottom", "top_tokens"):
            ids.update(int(t[0]) for t in d.get(key, []))
    return sorted(ids)


def _index(details: list[dict[str, Any]], tokens: dict[str, str]) -> dict[str, list[Any]]:
    """Columns of the latent list (what the list page sorts and searches)."""

    def strings(d: dict[str, Any], key: str, n: int) -> list[str]:
        return [tokens[str(t[0])] for t in d.get(key, [])[:n]]

    return {
        "density": [round(d["density"], 8) for d in details],
        "max_act": [round(d["max_act"], 4) for d in details],
        "mean_act": [round(d["mean_act"], 4) for d in details],
        "top_tokens": [strings(d, "top_tokens", 3) for d in details],
        "logit_top": [strings(d, "logit_top", 3) for d in details],
        "simulator_r": [d.get("simulator_r") for d in details],
    }


__all__ = ["BuildSettings", "all_simulator_r", "build", "decoder_neighbours", "latent_detail"]
