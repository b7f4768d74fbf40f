"""LLM-free interpretability proxies (docs/evaluation.md#interp) and the per-latent
activation records
they and the feature browser are computed from.

`record_activations` runs the model over tokenised contexts, encodes the kept tokens with the
SAE and keeps every non-zero code as a sparse (latent, token, value) triple, sorted by latent
(CSR). Everything per latent then reads one contiguous slice: density, top-activating
contexts, quantile samples, histograms, token statistics and the token-lookup simulator.

Proxies (deterministic, cheap; not comparable with LLM-judge scores):
- token-lookup simulator: a table of the latent's mean activation per token id (or per
  (previous, current) bigram, backing off to the token) built on the train contexts predicts
  the activation of every kept token of the test contexts; Pearson r over all test tokens
  pooled, and the AUC of the prediction for "fires" (value ≠ 0). High = a lexical latent.
- single-token share: fraction of a latent's |activation| mass on its top token;
- position correlation: Pearson r of |activation| with the token position;
- logit lens: W_U · (γ ⊙ d_i), γ the final norm's scale, top and bottom tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from saekit.data.corpora import TokenizedCorpus
from saekit.data.hooks import Which, capture
from saekit.data.masking import DEFAULT_MASKING, Masking
from saekit.evaluation.base import EvalRun


@dataclass
class LatentRecords:
    """Non-zero codes of every latent over a set of contexts.

    input_ids: [n_contexts, ctx_len] int64, the contexts.
    kept: [n_contexts * ctx_len] bool, tokens the SAE was evaluated on (flat index
      t = context * ctx_len + position).
    latent, token, value: [nnz] the non-zero codes, sorted by (latent, token).
    offsets: [n_latents + 1] int64; latent i's entries are offsets[i]:offsets[i + 1].
    """

    input_ids: np.ndarray
    kept: np.ndarray
    token: np.ndarray
    value: np.ndarray
    offsets: np.ndarray

    @property
    def n_latents(self) -> int:
        return len(self.offsets) - 1

    @property
    def ctx_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    def entries(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """(flat token indices [m], values [m]) of one latent, tokens ascending."""
        a, b = self.offsets[latent], self.offsets[latent + 1]
        return self.token[a:b], self.value[a:b]

    def dense(self, latent: int) -> np.ndarray:
        """The latent's activation at every flat token index: [n_contexts * ctx_len]."""
        out = np.zeros(self.kept.shape[0], dtype=np.float64)
        t, v = self.entries(latent)
        out[t] = v
        return out

    def density(self) -> np.ndarray:
        """[n_latents] fraction of kept tokens on which each latent is non-zero."""
        return np.diff(self.offsets) / max(self.n_kept, 1)


def training_masking(sae: Any) -> Masking:
    """The masking the SAE's training data had: its norm-outlier cut too, so that contexts
    are not ranked by attention-sink tokens the SAE never saw."""
    from saekit.sae.provenance import Provenance

    return Masking(max_norm_factor=Provenance.of(sae).max_norm_factor)


@torch.no_grad()
def record_activations(
    sae: Any,
    model: nn.Module,
    contexts: TokenizedCorpus,
    hookpoint: str,
    which: Which = "output",
    batch_size: int = 8,
    masking: Masking = DEFAULT_MASKING,
) -> LatentRecords:
    """Encode every token of `contexts` that `masking` keeps and keep the non-zero codes.
    Memory is O(L0 · tokens), never tokens × n_latents."""
    device = next(model.parameters()).device
    ctx_len = contexts.ctx_len
    kept_parts, tok_parts, lat_parts, val_parts = [], [], [], []
    for start in range(0, len(contexts), batch_size):
        sub = contexts.subset(slice(start, start + batch_size))
        ids, am = sub.input_ids.to(device), sub.attention_mask.to(device)
        act = capture(model, ids, am, [hookpoint], which)[hookpoint]
        mask = masking.keep(ids, am, sub.special_ids, [act]).cpu()
        kept_parts.append(mask.flatten())
        flat = torch.nonzero(mask.flatten()).squeeze(1) + start * ctx_len
        if len(flat) == 0:
            continue
        codes = sae.encode(act[mask.to(act.device)].float()).float().cpu()
        rows, cols = torch.nonzero(codes, as_tuple=True)
        tok_parts.append(flat[rows])
        lat_parts.append(cols)
        val_parts.append(codes[rows, cols])
    n_latents = sae.n_latents
    if tok_parts:
        token = torch.cat(tok_parts).numpy()
        latent = torch.cat(lat_parts).numpy()
        value = torch.cat(val_parts).numpy().astype(np.float32)
    else:
        token, latent, value = (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
        )
    order = np.lexsort((token, latent))
    offsets = np.zeros(n_latents + 1, dtype=np.int64)
    np.cumsum(np.bincount(latent, minlength=n_latents), out=offsets[1:])
    return LatentRecords(
        contexts.input_ids.numpy(),
        torch.cat(kept_parts).numpy(),
        token[order].astype(np.int64),
        value[order],
        offsets,
    )


# ---- examples -----------------------------------------------------------------------------

Example = (
    list  # [context, position, [[position, value], ...]]: the latent's non-zeros in the window
)


def example_window(
    records: LatentRecords, latent: int, flat: int, before: int, after: int
) -> Example:
    """The example centred on flat token index `flat`: [context, position, [[p, v], ...]]
    with the latent's non-zero values at positions p of the window [pos − before, pos + after]."""
    tok, val = records.entries(latent)
    ctx, pos = divmod(int(flat), records.ctx_len)
    lo = ctx * records.ctx_len + max(0, pos - before)
    hi = ctx * records.ctx_len + min(records.ctx_len - 1, pos + after)
    a, b = np.searchsorted(tok, lo), np.searchsorted(tok, hi, side="right")
    window = [
        [int(t) - ctx * records.ctx_len, round(float(v), 4)] for t, v in zip(tok[a:b], val[a:b])
    ]
    return [ctx, pos, window]


def top_examples(
    records: LatentRecords, latent: int, n: int, before: int, after: int
) -> list[Example]:
    """The `n` largest |activations|, at most one per context (so the list is not one
    passage repeated), largest first."""
    tok, val = records.entries(latent)
    seen: set[int] = set()
    out = []
    for j in np.argsort(-np.abs(val), kind="stable"):
        ctx = int(tok[j]) // records.ctx_len
        if ctx in seen:
            continue
        seen.add(ctx)
        out.append(example_window(records, latent, int(tok[j]), before, after))
        if len(out) == n:
            break
    return out


def quantile_examples(
    records: LatentRecords,
    latent: int,
    n_bins: int,
    per_bin: int,
    before: int,
    after: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Equal-count bins over the latent's non-zero values, `per_bin` random examples each
    (typical activations, not only the extremes), highest bin first:
    [{"bin", "range": [lo, hi], "examples": [...]}]."""
    tok, val = records.entries(latent)
    order = np.argsort(val, kind="stable")
    n_bins = min(n_bins, max(1, len(order) // max(per_bin, 1)))
    out = []
    for b, members in enumerate(np.array_split(order, n_bins)):
        if members.size == 0:
            continue
        picked = rng.choice(members, size=min(per_bin, members.size), replace=False)
        chosen = sorted(picked, key=lambda j: -val[j])
        out.append(
            {
                "bin": b,
                "range": [float(val[members].min()), float(val[members].max())],
                "examples": [
                    example_window(records, latent, int(tok[j]), before, after) for j in chosen
                ],
            }
        )
    return out[::-1]


def example_text(
    records: LatentRecords, example: Example, tokenizer: Any, before: int, after: int
) -> str:
    """The example's window as text, the centre token in ⟦ ⟧."""
    ctx, pos, _ = example
    ids = records.input_ids[ctx]
    lo, hi = max(0, pos - before), min(len(ids) - 1, pos + after)
    left = tokenizer.decode(ids[lo:pos].tolist())
    right = tokenizer.decode(ids[pos + 1 : hi + 1].tolist())
    return f"{left}⟦{tokenizer.decode([int(ids[pos])])}⟧{right}"


# ---- token-lookup simulator --------------------------------------------------------------


@dataclass
class SimulatorIndex:
    """Compact token and bigram ids of the kept tokens, split into train (table) and test.

    tok: [n_flat] compact id of each flat token; big: [n_flat] compact (previous, current)
    bigram id; train / test: [n_flat] bool masks over flat tokens (kept tokens only).
    """

    tok: np.ndarray
    big: np.ndarray
    n_tok: int
    n_big: int
    train: np.ndarray
    test: np.ndarray


def simulator_index(records: LatentRecords, train_fraction: float = 0.5) -> SimulatorIndex:
    """Train = the first `train_fraction` of the contexts, test = the rest (a split by
    context, so a test token never shares its context with the table)."""
    ids = records.input_ids
    prev = np.concatenate([np.full((ids.shape[0], 1), -1), ids[:, :-1]], axis=1)
    _, tok = np.unique(ids.ravel(), return_inverse=True)
    pairs = prev.ravel().astype(np.int64) * (int(ids.max()) + 2) + ids.ravel()
    _, big = np.unique(pairs, return_inverse=True)
    n_ctx_train = max(1, int(round(ids.shape[0] * train_fraction)))
    in_train = np.zeros(ids.shape, dtype=bool)
    in_train[:n_ctx_train] = True
    in_train = in_train.ravel()
    return SimulatorIndex(
        tok,
        big,
        int(tok.max()) + 1,
        int(big.max()) + 1,
        records.kept & in_train,
        records.kept & ~in_train,
    )


def simulate(
    act: np.ndarray, index: SimulatorIndex, bigrams: bool = True, min_count: int = 2
) -> np.ndarray:
    """Predicted activations of the test tokens: [n_test]. act [n_flat] is the latent's
    activation at every flat token. Bigram entries seen fewer than `min_count` times in the
    train split back off to the token's mean; unseen tokens get the train mean."""
    tr, te = index.train, index.test
    a = act[tr]
    count_t = np.bincount(index.tok[tr], minlength=index.n_tok)
    mean_t = np.bincount(index.tok[tr], weights=a, minlength=index.n_tok) / np.maximum(count_t, 1)
    fallback = a.mean() if a.size else 0.0
    pred = np.where(count_t[index.tok[te]] > 0, mean_t[index.tok[te]], fallback)
    if bigrams:
        count_b = np.bincount(index.big[tr], minlength=index.n_big)
        mean_b = np.bincount(index.big[tr], weights=a, minlength=index.n_big) / np.maximum(
            count_b, 1
        )
        use = count_b[index.big[te]] >= min_count
        pred = np.where(use, mean_b[index.big[te]], pred)
    return pred


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else float("nan")


def simulator_scores(
    records: LatentRecords, latents: Sequence[int], bigrams: bool = True, with_auc: bool = True
) -> dict[int, dict[str, float]]:
    """Per latent: Pearson r of simulated vs true activations over the test tokens, and the
    AUC of the simulation for "fires" (NaN when the latent never or always fires there)."""
    from saekit.evaluation.probing import roc_auc

    index = simulator_index(records)
    out: dict[int, dict[str, float]] = {}
    for i in latents:
        act = records.dense(int(i))
        pred = simulate(act, index, bigrams)
        truth = act[index.test]
        score = {"pearson_r": pearson(pred, truth)}
        if with_auc:
            score["auc"] = roc_auc(pred, truth != 0)
        out[int(i)] = score
    return out


# ---- other per-latent proxies ------------------------------------------------------------


def token_stats(records: LatentRecords, latent: int, top: int = 10) -> list[tuple[int, float, int]]:
    """The latent's top tokens by activation mass: [(token id, mass share, count)]."""
    t, v = records.entries(latent)
    if t.size == 0:
        return []
    ids = records.input_ids.ravel()[t]
    uniq, inv = np.unique(ids, return_inverse=True)
    mass = np.bincount(inv, weights=np.abs(v))
    count = np.bincount(inv)
    order = np.argsort(-mass, kind="stable")[:top]
    total = mass.sum()
    return [(int(uniq[j]), float(mass[j] / total), int(count[j])) for j in order]


def position_correlation(records: LatentRecords, latent: int) -> float:
    """Pearson r between |activation| and position over all kept tokens."""
    pos = np.tile(np.arange(records.ctx_len), records.input_ids.shape[0])
    return pearson(np.abs(records.dense(latent))[records.kept], pos[records.kept])


# ---- logit lens -------------------------------------------------------------------------


def final_norm_scale(model: nn.Module, d: int) -> torch.Tensor | None:
    """γ [d] of the final norm of a causal LM (Llama/Gemma `model.norm`, GPT-2 `ln_f`), or
    None. Gemma's RMSNorm multiplies by (1 + weight)."""
    for name in (
        "model.norm",
        "transformer.ln_f",
        "model.final_layernorm",
        "gpt_neox.final_layer_norm",
    ):
        module = dict(model.named_modules()).get(name)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.shape == (d,):
            if "Gemma" in type(module).__name__:
                return 1.0 + weight.detach().float()
            return weight.detach().float()
    return None


@torch.no_grad()
def logit_lens(
    model: nn.Module, W_dec: torch.Tensor, latents: Sequence[int] | None = None, top: int = 10
) -> dict[int, dict[str, list[tuple[int, float]]]] | None:
    """Top and bottom `top` tokens of W_U (γ ⊙ d_i) for each latent (all by default); None
    when the model has no output embedding of the SAE's width (e.g. an MLP hookpoint of a
    different size)."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is None or out_emb.weight.shape[1] != W_dec.shape[1]:
        return None
    W_U = out_emb.weight.detach().float()  # [vocab, d]
    gamma = final_norm_scale(model, W_dec.shape[1])
    latents = range(W_dec.shape[0]) if latents is None else latents
    idx = torch.as_tensor(list(latents), dtype=torch.long)
    result: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for start in range(0, len(idx), 512):
        chunk = idx[start : start + 512]
        atoms = W_dec.detach().float()[chunk]
        if gamma is not None:
            atoms = atoms * gamma
        logits = atoms @ W_U.T  # [chunk, vocab]
        hi = logits.topk(top, dim=-1)
        lo = (-logits).topk(top, dim=-1)
        for r, i in enumerate(chunk.tolist()):
            result[i] = {
                "top": [(int(t), float(v)) for t, v in zip(hi.indices[r], hi.values[r])],
                "bottom": [(int(t), float(-v)) for t, v in zip(lo.indices[r], lo.values[r])],
            }
    return result


# ---- the `interp` evaluation group ---------------------------------------------------------


def sample_latents(records: LatentRecords, n: int, seed: int = 0) -> np.ndarray:
    """Up to n latents drawn uniformly from those that fire at least twice on the test split
    (dead latents have nothing to explain; they are counted separately)."""
    rng = np.random.default_rng(seed)
    counts = np.diff(records.offsets)
    alive = np.flatnonzero(counts >= 2)
    return (
        np.sort(rng.choice(alive, size=min(n, len(alive)), replace=False)) if len(alive) else alive
    )


def interp_report(
    records: LatentRecords,
    latents: Sequence[int],
    model: nn.Module | None = None,
    W_dec: torch.Tensor | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Means over `latents` of every proxy (NaN-skipping), plus the per-latent values; with a
    tokenizer, each latent's top-3 contexts and one context per activation quartile (centre
    token in ⟦ ⟧); with the model and W_dec, the logit-lens top tokens of the first 16."""
    sims = simulator_scores(records, latents, bigrams=True)
    uni = simulator_scores(records, latents, bigrams=False, with_auc=False)
    per_latent: dict[str, dict[str, Any]] = {}
    for i in latents:
        stats = token_stats(records, int(i), top=1)
        per_latent[str(int(i))] = {
            "simulator_r": sims[int(i)]["pearson_r"],
            "simulator_auc": sims[int(i)]["auc"],
            "unigram_simulator_r": uni[int(i)]["pearson_r"],
            "single_token_share": stats[0][1] if stats else float("nan"),
            "position_r": position_correlation(records, int(i)),
        }
    if tokenizer is not None:
        rng = np.random.default_rng(0)
        for i in latents:
            entry: dict[str, Any] = per_latent[str(int(i))]
            top = top_examples(records, int(i), 3, 8, 3)
            entry["top_contexts"] = [example_text(records, e, tokenizer, 8, 3) for e in top]
            entry["quantile_contexts"] = [
                {
                    "range": q["range"],
                    "text": example_text(records, q["examples"][0], tokenizer, 8, 3),
                }
                for q in quantile_examples(records, int(i), 4, 1, 8, 3, rng)
            ]
    keys = [
        "simulator_r",
        "simulator_auc",
        "unigram_simulator_r",
        "single_token_share",
        "position_r",
    ]
    summary = {f"mean_{k}": _nanmean([v[k] for v in per_latent.values()]) for k in keys}
    counts = np.diff(records.offsets)
    report: dict[str, Any] = {
        "n_tokens": records.n_kept,
        "n_latents_scored": len(per_latent),
        "frac_dead_on_corpus": float((counts == 0).mean()),
        **summary,
        "frac_positional": float(np.mean([abs(v["position_r"]) > 0.5 for v in per_latent.values()]))
        if per_latent
        else float("nan"),
        "per_latent": per_latent,
    }
    if model is not None and W_dec is not None:
        lens = logit_lens(model, W_dec, [int(i) for i in latents][:16], top=5)
        if lens is not None:
            report["logit_lens_examples"] = {
                str(k): [tokenizer.decode([t]) if tokenizer is not None else t for t, _ in v["top"]]
                for k, v in lens.items()
            }
    return report


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def interp_group(run: EvalRun) -> dict[str, Any]:
    """The interp group: the proxies of `interp_latents` sampled latents on held-out contexts."""
    model, tokenizer, source = run.require_model()
    sae = run.label_free.sae
    contexts = run.contexts("heldout", run.settings.interp_contexts)
    records = record_activations(
        sae, model, contexts, source.hookpoint, source.which, masking=training_masking(sae)
    )
    latents = sample_latents(records, run.settings.interp_latents, run.settings.seed)
    report = interp_report(records, latents, model, sae.W_dec, tokenizer)
    return {
        "interp": {
            "n_contexts": len(contexts),
            "ctx_len": contexts.ctx_len,
            **report,
            **run.mode_note(),
        }
    }


__all__ = [
    "LatentRecords",
    "example_text",
    "example_window",
    "interp_group",
    "interp_report",
    "logit_lens",
    "pearson",
    "position_correlation",
    "quantile_examples",
    "record_activations",
    "sample_latents",
    "simulate",
    "simulator_index",
    "simulator_scores",
    "token_stats",
    "top_examples",
]
