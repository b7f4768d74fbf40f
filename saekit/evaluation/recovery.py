"""Ground-truth recovery metrics on synthetic data (docs/evaluation.md#synthetic).

G [n_features, d_in]: true unit directions (rows g_j); D [n_latents, d_in]: learned atoms,
rows normalised here. C = |G Dᵀ| [n_features, n_latents] (absolute cosines), signed where a
metric says so. Codes: learned [n_samples, n_latents], true [n_samples, n_features]; a code
is active when non-zero.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from saekit.data.synthetic import SyntheticRecipe
from saekit.evaluation.base import EvalRun, Skip


class Encoder(Protocol):
    """What `recovery_report` needs from an SAE (saekit.sae.base.SAE satisfies it)."""

    W_dec: torch.Tensor

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


# ---- helpers ----------------------------------------------------------------------------


def _unit_rows(name: str, w: torch.Tensor) -> torch.Tensor:
    if w.ndim != 2:
        raise ValueError(f"{name} must be [rows, d_in], got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or inf")
    w = w.detach().float().cpu()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def signed_cosines(true_dict: torch.Tensor, learned_dict: torch.Tensor) -> torch.Tensor:
    """[n_features, d_in], [n_latents, d_in] -> signed cosines G Dᵀ [n_features, n_latents]."""
    g, d = _unit_rows("true_dict", true_dict), _unit_rows("learned_dict", learned_dict)
    if g.shape[1] != d.shape[1]:
        raise ValueError(f"true_dict has d_in={g.shape[1]} but learned_dict has d_in={d.shape[1]}")
    return g @ d.T


def _check_codes(codes: torch.Tensor, true_codes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if codes.ndim != 2 or true_codes.ndim != 2 or codes.shape[0] != true_codes.shape[0]:
        raise ValueError(
            f"codes must be [n_samples, n_latents] and true_codes [n_samples, n_features] with "
            f"the same n_samples, got {tuple(codes.shape)} and {tuple(true_codes.shape)}"
        )
    for name, t in (("codes", codes), ("true_codes", true_codes)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
    return codes.detach().double().cpu(), true_codes.detach().double().cpu()


def hungarian(score: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-score one-to-one assignment on a [rows, cols] matrix (rectangular allowed):
    row indices and column indices of the min(rows, cols) matched pairs."""
    s = score.double().numpy()
    # Minimise max(S) − S: non-negative costs, same optimum as maximising S.
    return linear_sum_assignment(s.max() - s)


# ---- dictionary-only metrics ------------------------------------------------------------


def mmcs(true_dict: torch.Tensor, learned_dict: torch.Tensor) -> dict[str, float]:
    """Mean max cosine similarity, both directions.

    mmcs_gt_to_learned = (1/n) Σ_j max_i cos(g_j, d_i), signed as in Sharkey et al. (a
    sign-flipped atom does not count); mmcs_learned_to_gt = (1/p) Σ_i max_j cos(d_i, g_j).
    The `_abs` variants use |cos|.
    """
    cos = signed_cosines(true_dict, learned_dict).double()
    return {
        "mmcs_gt_to_learned": cos.max(1).values.mean().item(),
        "mmcs_gt_to_learned_abs": cos.abs().max(1).values.mean().item(),
        "mmcs_learned_to_gt": cos.max(0).values.mean().item(),
        "mmcs_learned_to_gt_abs": cos.abs().max(0).values.mean().item(),
    }


def hungarian_mcc(true_dict: torch.Tensor, learned_dict: torch.Tensor) -> float:
    """Mean |cos| over the one-to-one assignment maximising the summed |cos| (min(n, p)
    pairs). Works SAE-vs-GT and SAE-vs-SAE."""
    c = signed_cosines(true_dict, learned_dict).abs()
    rows, cols = hungarian(c)
    return c[rows, cols].double().mean().item()


def feature_recovery_rate(
    true_dict: torch.Tensor, learned_dict: torch.Tensor, threshold: float = 0.8
) -> float:
    """Fraction of true features with some atom at |cos| > threshold (GBA's FRR(τ))."""
    c = signed_cosines(true_dict, learned_dict).abs()
    return (c.max(1).values > threshold).double().mean().item()


def uniqueness(true_dict: torch.Tensor, learned_dict: torch.Tensor) -> float:
    """#distinct(argmax_j C[j, i] over latents i) / n_latents: low when many latents
    collapse onto one feature."""
    c = signed_cosines(true_dict, learned_dict).abs()
    return c.argmax(0).unique().numel() / c.shape[1]


# ---- code-based metrics -----------------------------------------------------------------


def latent_classification(
    learned_dict: torch.Tensor,
    true_dict: torch.Tensor,
    codes: torch.Tensor,
    true_codes: torch.Tensor,
) -> dict[str, float]:
    """SynthSAEBench per-latent precision / recall / F1 / accuracy, means over latents.

    Latent i is matched to g(i) = argmax_j C[j, i]; over the samples, "latent i fires"
    (codes ≠ 0) is scored against "true feature g(i) is active". Undefined ratios count 0.
    """
    codes, true_codes = _check_codes(codes, true_codes)
    match = signed_cosines(true_dict, learned_dict).abs().argmax(0)  # [n_latents]
    if codes.shape[1] != match.shape[0] or true_codes.shape[1] != true_dict.shape[0]:
        raise ValueError("codes / true_codes widths do not match the dictionaries' row counts")
    pred = codes != 0  # [n_samples, n_latents]
    truth = (true_codes != 0)[:, match]  # [n_samples, n_latents]
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    accuracy = (pred == truth).double().mean(0)
    return {
        "precision": precision.mean().item(),
        "recall": recall.mean().item(),
        "f1": f1.mean().item(),
        "accuracy": accuracy.mean().item(),
    }


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def activation_matching(codes: torch.Tensor, true_codes: torch.Tensor) -> torch.Tensor:
    """Match latents to true features by co-activation (MP-SAE / Matryoshka toys).

    Each latent's and each true feature's activations are divided by their max |value|
    over the sample; S = A_saeᵀ A_gt [n_latents, n_features]; Hungarian maximising S.
    Returns [n_features] int64: the latent matched to each feature, −1 if unmatched
    (fewer latents than features).
    """
    codes, true_codes = _check_codes(codes, true_codes)
    a_sae = codes / codes.abs().max(0).values.clamp_min(1e-300)
    a_gt = true_codes / true_codes.abs().max(0).values.clamp_min(1e-300)
    rows, cols = hungarian(a_sae.T @ a_gt)
    latent_for_feature = torch.full((true_codes.shape[1],), -1, dtype=torch.long)
    latent_for_feature[torch.from_numpy(cols)] = torch.from_numpy(rows)
    return latent_for_feature


def absorption_score(
    learned_dict: torch.Tensor,
    true_dict: torch.Tensor,
    parents: torch.Tensor,
    codes: torch.Tensor,
    true_codes: torch.Tensor,
    matching: torch.Tensor | None = None,
) -> float:
    """Mean over true children c (parents[c] ≥ 0) of the signed cos(d_ℓ(c), g_π(c)), with ℓ
    from `activation_matching`. True children are orthogonal to their parents, so 0 is
    perfect and ≈ 0.7 is a fully absorbed child. NaN when no child is matched.
    `matching` [n_features]: a precomputed `activation_matching(codes, true_codes)`."""
    if parents.shape != (true_dict.shape[0],):
        raise ValueError(
            f"parents must be [n_features={true_dict.shape[0]}], got {tuple(parents.shape)}"
        )
    if matching is None:
        matching = activation_matching(codes, true_codes)
    cos = signed_cosines(true_dict, learned_dict)  # [n_features, n_latents]
    children = ((parents >= 0) & (matching >= 0)).nonzero().squeeze(1)
    if children.numel() == 0:
        return float("nan")
    return cos[parents[children], matching[children]].double().mean().item()


def matched_cosine(cos: torch.Tensor, latent_for_feature: torch.Tensor) -> float:
    """Mean signed cos(g_j, d_ℓ(j)) over the matched features. cos [n_features, n_latents];
    latent_for_feature [n_features] from `activation_matching` (−1 = unmatched)."""
    features = (latent_for_feature >= 0).nonzero().squeeze(1)
    return cos[features, latent_for_feature[features]].double().mean().item()


# ---- one call ---------------------------------------------------------------------------


@torch.no_grad()
def encode_batched(sae: Encoder, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """sae.encode over x [n, d_in] in batches, on the SAE's device; codes [n, n_latents] on
    the CPU."""
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    parts = [
        sae.encode(x[i : i + batch_size].to(device, dtype)).float().cpu()
        for i in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(parts)


def recovery_report(
    sae: Encoder,
    recipe: SyntheticRecipe,
    n_samples: int = 16384,
    seed: int = 0,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """Sample n_samples from the recipe (generator seeded with `seed`), encode them with
    `sae.encode`, and return every recovery metric on the rows of W_dec, normalised.
    `absorption_score` only when the recipe has a hierarchy."""
    gen = torch.Generator().manual_seed(seed)
    x, true_codes = recipe.sample(n_samples, gen)
    codes = encode_batched(sae, x, batch_size)
    learned = sae.W_dec.detach().float().cpu()
    truth = recipe.dictionary
    if learned.shape[1] != truth.shape[1]:
        raise ValueError(f"SAE d_in={learned.shape[1]} but recipe d_in={truth.shape[1]}")
    matched = activation_matching(codes, true_codes)
    cos = signed_cosines(truth, learned)
    report: dict[str, Any] = {
        "recipe": recipe.describe(),
        "n_samples": n_samples,
        "seed": seed,
        "true_l0": (true_codes != 0).sum(1).double().mean().item(),
        "l0": (codes != 0).sum(1).double().mean().item(),
        "frac_dead": ((codes != 0).sum(0) == 0).double().mean().item(),
        **mmcs(truth, learned),
        "hungarian_mcc": hungarian_mcc(truth, learned),
        "frr_0.8": feature_recovery_rate(truth, learned, 0.8),
        "frr_0.9": feature_recovery_rate(truth, learned, 0.9),
        "uniqueness": uniqueness(truth, learned),
        **latent_classification(learned, truth, codes, true_codes),
        "activation_match_cos": matched_cosine(cos, matched),
    }
    if recipe.parents is not None:
        report["absorption_score"] = absorption_score(
            learned, truth, recipe.parents, codes, true_codes, matching=matched
        )
    return report


def synthetic_group(run: EvalRun) -> dict[str, Any]:
    """The synthetic group: `recovery_report` on fresh samples of the stream's recipe."""
    recipe = getattr(run.stream, "recipe", None)
    if recipe is None:
        raise Skip("not trained on a synthetic recipe")
    n = min(run.settings.n_tokens, 16384)
    report = recovery_report(run.label_free.sae, recipe, n_samples=n, seed=12345)
    return {"synthetic": {**report, **run.mode_note()}}


__all__ = [
    "absorption_score",
    "activation_matching",
    "encode_batched",
    "feature_recovery_rate",
    "hungarian",
    "hungarian_mcc",
    "latent_classification",
    "matched_cosine",
    "mmcs",
    "recovery_report",
    "signed_cosines",
    "synthetic_group",
    "uniqueness",
]
