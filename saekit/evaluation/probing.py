"""k-sparse probing on the sae-probes binary tasks (docs/evaluation.md#probing;
Kantamneni, Engels, Rajamanoharan, Tegmark, Nanda 2025, arXiv:2502.16681).

Per task: last-token activations at the SAE's hookpoint -> SAE codes; latents ranked on the
train split by the normalised mean difference; an L1 logistic regression on the top-k latents
for each k, its inverse regularisation C chosen by validation AUC; test AUC and accuracy. The
same k-sparse probe on the raw activation dimensions, and a dense L2 probe on all of them, are
the baselines.

Deviations from the sae-probes runner, all deliberate and recorded in the settings:
- the selected features are standardised on the train split before the fit, so one C grid
  means the same for every feature (sae-probes fits unscaled features; with outlier
  dimensions its solver often stops before converging);
- the solver is L-BFGS-B on the split form w = w⁺ − w⁻ (an exact L1 solution), not saga;
- the test split is capped (`n_test_max`, default 1,024 instead of 5,000) to keep the CPU
  default within minutes. Pass n_test_max=5000 for the paper's setting.

Labels: bool and integer targets use 1/True as the positive class; string targets use the
second value in sorted order (recorded as `positive_class`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from saekit.data.hooks import Which, capture
from saekit.data.models import cache_root, package_dir
from saekit.evaluation.base import EvalRun, Skip

DEFAULT_DATASETS = (
    "118_us_state_CA",
    "154_athlete_sport_football",
    "92_glue_sst2",
    "22_headline_isobama",
)
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)
C_GRID = tuple(float(c) for c in np.logspace(5, -5, 10))  # sae-probes' grid, large C first


# ---- data -------------------------------------------------------------------------------


@dataclass
class ProbeTask:
    """One binary task: prompts [n] and labels [n] in {0, 1}."""

    name: str
    prompts: list[str]
    labels: np.ndarray
    positive_class: str


def data_dir() -> Path:
    """The sae-probes data directory, found without importing the package (its import pulls
    sae-lens and transformer-lens)."""
    root = package_dir("sae_probes")
    if root is None:
        raise ModuleNotFoundError(
            "probing needs the sae-probes data: pip install --no-deps sae-probes"
        )
    return root / "data" / "cleaned_data"


def binary_datasets() -> list[str]:
    """Names of every shipped binary task (113 in sae-probes 0.4.2), by dataset number."""
    import pandas as pd

    master = pd.read_csv(data_dir().parent / "probing_datasets_MASTER.csv.zst", compression="zstd")
    rows = master[master["Data type"] == "Binary Classification"]["Dataset save name"].dropna()
    names = [Path(str(r)).name.removesuffix(".csv") for r in rows]
    names = [n for n in names if (data_dir() / f"{n}.csv.zst").is_file()]
    return sorted(names, key=lambda n: int(n.split("_", 1)[0]))


def load_task(name: str) -> ProbeTask:
    """Read one task's `prompt` and `target` columns; rows without a prompt are dropped."""
    import pandas as pd

    path = data_dir() / f"{name}.csv.zst"
    if not path.is_file():
        raise FileNotFoundError(f"no sae-probes dataset {name!r} (see binary_datasets())")
    df = pd.read_csv(path, compression="zstd", usecols=["prompt", "target"]).dropna()
    values = sorted({str(v) for v in df["target"]})
    if len(values) != 2:
        raise ValueError(f"{name} is not a binary task: targets {values[:5]}")
    if df["target"].dtype == bool or set(values) <= {"0", "1"} or set(values) == {"False", "True"}:
        positive = "True" if "True" in values else "1"
    else:
        positive = values[1]
    labels = (df["target"].astype(str) == positive).to_numpy().astype(np.int64)
    return ProbeTask(name, df["prompt"].astype(str).tolist(), labels, positive)


def balanced_split(
    labels: np.ndarray, n_train_max: int = 1024, n_test_max: int = 5000, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """sae-probes' normal setting: n_train = min(N − 100, n_train_max), half of each class;
    test = balanced remainder, at most n_test_max. On imbalanced data the train split shrinks
    so that the smaller class keeps up to 50 test examples. Returns sorted index arrays."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    n_train = max(2, min(n - 100, n_train_max)) // 2 * 2
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in (0, 1)]
    smaller = min(len(c) for c in by_class)
    # Leave up to 50 of the smaller class for testing (what N − 100 leaves on balanced data).
    half = min(n_train // 2, smaller - min(50, smaller // 2))
    if half < 1:
        raise ValueError("each class needs at least 2 examples")
    train = np.concatenate([c[:half] for c in by_class])
    rest = [c[half:] for c in by_class]
    per_class = min(n_test_max // 2, *(len(r) for r in rest))
    test = np.concatenate([r[:per_class] for r in rest])
    return np.sort(train), np.sort(test)


# ---- activations --------------------------------------------------------------------------


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each prompt, left-truncated to max_length (the end of the prompt is what
    its last token sees)."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(list(prompts), truncation=True, max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def multi_token(tokenizer: Any, prompts: Sequence[str], max_length: int) -> np.ndarray:
    """[n] bool: which prompts are at least two tokens long. A one-token prompt's "last
    token" is position 0, the attention sink (a massive activation that carries no content),
    so it cannot be probed like the others."""
    return np.array([len(ids) > 1 for ids in tokenize_prompts(tokenizer, prompts, max_length)])


@torch.no_grad()
def last_token_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    hookpoint: str,
    which: Which = "output",
    batch_size: int = 32,
    max_length: int = 256,
) -> torch.Tensor:
    """Activation at the last token of each prompt: [n, d] float32, in prompt order.

    Prompts are left-truncated to max_length tokens (`tokenize_prompts`) and right-padded;
    batches are formed by length so little compute is padding.
    """
    enc = tokenize_prompts(tokenizer, prompts, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(1, max(len(enc[i]) for i in rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        am = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, : len(enc[i])] = torch.tensor(enc[i], dtype=torch.long)
            am[r, : max(1, len(enc[i]))] = 1
        act = capture(model, ids.to(device), am.to(device), [hookpoint], which)[hookpoint]
        last = am.sum(1) - 1
        vec = act[torch.arange(len(rows)), last.to(act.device)].float().cpu()
        if out is None:
            out = torch.empty(len(enc), vec.shape[1])
        out[torch.tensor(rows)] = vec
    if out is None:
        raise ValueError("no prompts")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


def activation_cache_path(
    model_label: str,
    hookpoint: str,
    which: str,
    max_length: int,
    dataset: str,
    root: Path | None = None,
) -> Path:
    """Where the last-token activations of one (model, hookpoint, dataset) are cached."""
    root = Path(root) if root is not None else cache_root() / "probing"
    return (
        root
        / _slug(model_label)
        / f"{_slug(hookpoint)}-{which}-len{max_length}"
        / f"{_slug(dataset)}.safetensors"
    )


def cached_task_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    task: ProbeTask,
    hookpoint: str,
    model_label: str,
    which: Which = "output",
    max_length: int = 256,
    batch_size: int = 32,
    cache_dir: Path | None = None,
) -> torch.Tensor:
    """`last_token_activations` of every prompt of `task`, read from or written to the cache.
    The file records a hash of the prompts, so a changed dataset is recomputed."""
    from safetensors.torch import load_file, save_file

    path = activation_cache_path(model_label, hookpoint, which, max_length, task.name, cache_dir)
    digest = hashlib.blake2b("\x00".join(task.prompts).encode(), digest_size=16).hexdigest()
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("prompts_hash") == digest:
            return load_file(str(path))["x"]
    x = last_token_activations(
        model, tokenizer, task.prompts, hookpoint, which, batch_size, max_length
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    save_file(
        {"x": x.contiguous()}, str(tmp), metadata={"prompts_hash": digest, "dataset": task.name}
    )
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    return x


# ---- metrics and the probe ----------------------------------------------------------------


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + ½ P(tie) (Mann–Whitney U,
    average ranks for ties). NaN when one class is absent."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def rank_latents(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Latent order by |mean_pos − mean_neg| after dividing each latent by its mean |value|
    over non-zero entries (sae-probes' ranking). f [n, p], y [n] -> indices [p], best first;
    latents that never fire score 0. Stable for ties (lower index first)."""
    f = np.asarray(f, dtype=np.float64)
    nonzero = f != 0
    count = nonzero.sum(0)
    scale = np.where(count > 0, np.abs(f).sum(0) / np.maximum(count, 1), 1.0)
    g = f / scale
    diff = np.abs(g[y == 1].mean(0) - g[y == 0].mean(0))
    return np.argsort(-diff, kind="stable")


def fit_logistic(
    X: np.ndarray,
    y: np.ndarray,
    C: float,
    penalty: str = "l1",
    max_iter: int = 1000,
    init: tuple[np.ndarray, float] | None = None,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """argmin_w,b  C·Σ_i v_i log(1 + exp(−s_i (x_i·w + b))) + R(w), s_i = 2y_i − 1,
    R = ‖w‖₁ (penalty "l1") or ½‖w‖² ("l2"); the intercept is not penalised (sklearn's
    convention, so C means the same). X [n, k], y [n] in {0, 1} -> (w [k], b).

    L1 is solved exactly as a smooth bound-constrained problem in (w⁺, w⁻ ≥ 0). `init`
    (w, b) warm-starts the solver, e.g. from the solution at the previous C of a path.
    sample_weight: v [n] (default 1), e.g. sklearn's class_weight="balanced"."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    n, k = X.shape

    # The products run in torch, which obeys torch.set_num_threads: numpy's OpenBLAS starts
    # its own thread pool, and on a shared CPU that made each fit ~100x slower.
    Xt, st = torch.from_numpy(X), torch.from_numpy(s)
    vt = torch.ones(n, dtype=torch.float64)
    if sample_weight is not None:
        vt = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))

    def data_term(w: np.ndarray, b: float) -> tuple[float, np.ndarray, float]:
        margin = st * (Xt @ torch.from_numpy(w) + b)
        loss = (vt * torch.nn.functional.softplus(-margin)).sum().item()
        dm = -vt * st * torch.sigmoid(-margin)  # d loss / d (x·w + b)
        return C * loss, C * (Xt.T @ dm).numpy(), C * dm.sum().item()

    if penalty == "l1":

        def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
            wp, wn, b = z[:k], z[k : 2 * k], z[-1]
            loss, gw, gb = data_term(wp - wn, b)
            grad = np.concatenate([gw + 1.0, -gw + 1.0, [gb]])
            return loss + z[: 2 * k].sum(), grad

        bounds = [(0.0, None)] * (2 * k) + [(None, None)]
        x0 = np.zeros(2 * k + 1)
        if init is not None:
            x0 = np.concatenate([np.maximum(init[0], 0), np.maximum(-init[0], 0), [init[1]]])
        res = minimize(
            objective,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter},
        )
        return res.x[:k] - res.x[k : 2 * k], float(res.x[-1])
    if penalty == "l2":

        def objective_l2(z: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = z[:k], z[-1]
            loss, gw, gb = data_term(w, b)
            return loss + 0.5 * w @ w, np.concatenate([gw + w, [gb]])

        x0 = np.zeros(k + 1) if init is None else np.concatenate([init[0], [init[1]]])
        res = minimize(
            objective_l2,
            x0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter},
        )
        return res.x[:k], float(res.x[-1])
    raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")


def _validation_folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """sae-probes' C-selection splits: n < 128 -> stratified folds (≤ 6); otherwise one
    stratified hold-out of 20% (at most 100 examples)."""
    rng = np.random.default_rng(seed)
    classes = [rng.permutation(np.flatnonzero(y == c)) for c in (0, 1)]
    n = len(y)
    if n < 128:
        n_folds = max(2, min(6, *(len(c) for c in classes)))
        folds = [np.concatenate([c[i::n_folds] for c in classes]) for i in range(n_folds)]
    else:
        n_val = min(int(0.2 * n), 100)
        folds = [np.concatenate([c[: max(1, round(n_val * len(c) / n))] for c in classes])]
    everything = np.arange(n)
    return [(np.setdiff1d(everything, f), f) for f in folds]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit numpy/scipy's BLAS to one thread: L-BFGS-B calls BLAS on small matrices
    thousands of times, and OpenBLAS's thread pool on a shared CPU made each fit ~20-100x
    slower. A no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def fit_probe(
    X_train: np.ndarray,
    y_train: np.ndarray,
    penalty: str = "l1",
    C_grid: Sequence[float] = C_GRID,
    seed: int = 42,
    max_iter: int = 1000,
) -> tuple[np.ndarray, float, float, tuple[np.ndarray, np.ndarray]]:
    """Standardise, choose C by validation AUC (ties -> stronger regularisation), refit on
    all of X_train. Returns (w, b, C, (mean, std)) with w acting on standardised features."""
    mu = X_train.mean(0)
    sd = np.where(X_train.std(0) > 0, X_train.std(0), 1.0)
    Z = (X_train - mu) / sd
    folds = _validation_folds(y_train, seed)
    # Along the path from strong to weak regularisation, each fit starts from the previous
    # solution (a weakly regularised fit from zero can take hundreds of iterations).
    path = sorted(C_grid)
    best_C, best_auc, best_fits = path[0], -np.inf, None
    fits: list[tuple[np.ndarray, float] | None] = [None] * len(folds)
    for C in path:
        aucs = []
        for f, (tr, va) in enumerate(folds):
            fits[f] = fit_logistic(Z[tr], y_train[tr], C, penalty, max_iter, fits[f])
            w, b = fits[f]
            aucs.append(roc_auc(Z[va] @ w + b, y_train[va]))
        auc = float(np.nanmean(aucs))
        if auc > best_auc:  # strict: ties keep the stronger regularisation
            best_C, best_auc, best_fits = C, auc, list(fits)
    w, b = fit_logistic(Z, y_train, best_C, penalty, max_iter, best_fits[0] if best_fits else None)
    return w, b, float(best_C), (mu, sd)


def evaluate_probe(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    penalty: str = "l1",
    C_grid: Sequence[float] = C_GRID,
    seed: int = 42,
) -> dict[str, float]:
    """Fit on train (C by validation), report test AUC and accuracy (threshold 0 on the
    logit), train accuracy and the chosen C."""
    with single_threaded_blas():
        w, b, C, (mu, sd) = fit_probe(X_train, y_train, penalty, C_grid, seed)
    logits_test = ((X_test - mu) / sd) @ w + b
    logits_train = ((X_train - mu) / sd) @ w + b
    return {
        "test_auc": roc_auc(logits_test, y_test),
        "test_accuracy": float(((logits_test > 0) == (y_test == 1)).mean()),
        "train_accuracy": float(((logits_train > 0) == (y_train == 1)).mean()),
        "C": C,
        "n_nonzero_weights": int((np.abs(w) > 1e-8).sum()),
    }


def k_sparse_probe(
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_test: np.ndarray,
    y_test: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    C_grid: Sequence[float] = C_GRID,
    seed: int = 42,
) -> dict[str, dict[str, Any]]:
    """For each k: L1 probe on the top-k features by `rank_latents` (computed on train).
    f_* [n, p] -> {str(k): {test_auc, test_accuracy, train_accuracy, C, latents}}; k larger
    than p is skipped."""
    order = rank_latents(f_train, y_train)
    out: dict[str, dict[str, Any]] = {}
    for k in ks:
        if k > f_train.shape[1]:
            continue
        top = order[:k]
        res = evaluate_probe(f_train[:, top], y_train, f_test[:, top], y_test, "l1", C_grid, seed)
        out[str(k)] = {**res, "latents": [int(i) for i in top[: min(k, 8)]]}
    return out


# ---- running it for an SAE ----------------------------------------------------------------


@dataclass
class ProbeSettings:
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    ks: tuple[int, ...] = DEFAULT_KS
    n_train_max: int = 1024
    n_test_max: int = 1024
    seed: int = 42
    max_length: int = 256
    batch_size: int = 32
    dense_baseline: bool = True
    C_grid: tuple[float, ...] = C_GRID
    cache_dir: Path | None = None  # activation cache (default $SAEKIT_CACHE/probing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "datasets": list(self.datasets),
            "ks": list(self.ks),
            "n_train_max": self.n_train_max,
            "n_test_max": self.n_test_max,
            "seed": self.seed,
            "max_length": self.max_length,
            "C_grid": list(self.C_grid),
            "features": "last token; selected features standardised on train",
            "solver": "L-BFGS-B, exact L1 (split weights)",
        }


@torch.no_grad()
def encode_all(sae: Any, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """SAE codes of x [n, d_in] -> float64 numpy [n, n_latents], in batches."""
    parts = [
        sae.encode(x[i : i + batch_size].float()).double().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts).numpy()


def probe_dataset(
    sae: Any,
    x: torch.Tensor,
    labels: np.ndarray,
    settings: ProbeSettings,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All probes of one task from its activations x [n, d_in] and labels [n]. `baseline`
    (the raw-activation results of an earlier SAE on the same task) is reused if given."""
    train, test = balanced_split(labels, settings.n_train_max, settings.n_test_max, settings.seed)
    y_tr, y_te = labels[train], labels[test]
    f = encode_all(sae, x)
    result: dict[str, Any] = {
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "sae": k_sparse_probe(
            f[train], y_tr, f[test], y_te, settings.ks, settings.C_grid, settings.seed
        ),
    }
    if baseline is None:
        raw = x.double().numpy()
        baseline = {
            "raw": k_sparse_probe(
                raw[train], y_tr, raw[test], y_te, settings.ks, settings.C_grid, settings.seed
            )
        }
        if settings.dense_baseline:
            baseline["raw_dense_l2"] = evaluate_probe(
                raw[train], y_tr, raw[test], y_te, "l2", settings.C_grid, settings.seed
            )
    result.update(baseline)
    return result


def summarise(per_dataset: dict[str, dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Means over datasets, with SAEBench's sparse-probing field names where they match
    (`sae_top_{k}_test_accuracy`, `llm_top_{k}_test_accuracy`, `llm_test_accuracy`)."""
    out: dict[str, Any] = {}
    for source, prefix in (("sae", "sae"), ("raw", "llm")):
        for k in ks:
            accs = [
                d[source][str(k)]["test_accuracy"]
                for d in per_dataset.values()
                if str(k) in d[source]
            ]
            aucs = [
                d[source][str(k)]["test_auc"] for d in per_dataset.values() if str(k) in d[source]
            ]
            if accs:
                out[f"{prefix}_top_{k}_test_accuracy"] = float(np.mean(accs))
                out[f"{prefix}_top_{k}_test_auc"] = float(np.mean(aucs))
    dense = [d["raw_dense_l2"] for d in per_dataset.values() if "raw_dense_l2" in d]
    if dense:
        out["llm_test_accuracy"] = float(np.mean([d["test_accuracy"] for d in dense]))
        out["llm_test_auc"] = float(np.mean([d["test_auc"] for d in dense]))
    return out


def probing_group(run: EvalRun) -> dict[str, Any]:
    """The probing group: `probe_dataset` on every task of the settings, without the
    prompts one token long (`multi_token`), which are counted (n_skipped_one_token)."""
    model, tokenizer, source = run.require_model()
    ps = run.settings.probe
    per_dataset: dict[str, Any] = {}
    for name in ps.datasets:
        task = load_task(name)
        x = cached_task_activations(
            model, tokenizer, task, source.hookpoint, source.model,
            source.which, ps.max_length, ps.batch_size, ps.cache_dir,  # type: ignore[arg-type]
        )  # fmt: skip
        if x.shape[1] != run.sae.d_in:
            raise Skip(
                f"activations at {source.hookpoint} have width {x.shape[1]}, SAE d_in {run.sae.d_in}"
            )
        keep = multi_token(tokenizer, task.prompts, ps.max_length)
        key = ("probe_baseline", source, name, repr(ps))
        res = probe_dataset(
            run.label_free.sae, x[torch.from_numpy(keep)], task.labels[keep], ps,
            run.shared.get(key),
        )  # fmt: skip
        run.shared[key] = {k: res[k] for k in ("raw", "raw_dense_l2") if k in res}
        per_dataset[name] = {
            "positive_class": task.positive_class,
            "n_prompts": len(keep),
            "n_skipped_one_token": int((~keep).sum()),
            **res,
        }
    return {
        "probing": {
            "settings": ps.to_dict(),
            "datasets": per_dataset,
            "mean": summarise(per_dataset, ps.ks),
            **run.mode_note(),
        }
    }


__all__ = [
    "C_GRID",
    "DEFAULT_DATASETS",
    "DEFAULT_KS",
    "ProbeSettings",
    "ProbeTask",
    "balanced_split",
    "binary_datasets",
    "cached_task_activations",
    "evaluate_probe",
    "fit_logistic",
    "k_sparse_probe",
    "last_token_activations",
    "load_task",
    "multi_token",
    "probe_dataset",
    "probing_group",
    "rank_latents",
    "roc_auc",
    "summarise",
    "tokenize_prompts",
]
