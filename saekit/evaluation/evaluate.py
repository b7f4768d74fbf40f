"""The evaluation suite: one JSON document per SAE, made of metric groups (docs/eval-schema.md).

Groups (each a function in its own module, run in this order):
  core       reconstruction, sparsity, density, shrinkage, weight cosines (core.py)
  synthetic  ground-truth recovery, when the data are a synthetic recipe (recovery.py)
  spliced    CE/KL with the SAE spliced into the LM, every inference variant (spliced.py)
  adaptive   error vs inference L0 for SAEs whose sparsity can be set at inference
  probing    k-sparse probing on the sae-probes binary tasks
  absorption first-letter feature absorption (absorption.py)
  afa        code norm vs input norm, ε_LBO (afa.py)
  steering   next-token effect of adding decoder atoms (steering_effect.py)
  interp     LLM-free interpretability proxies

A group that does not apply (no model behind a synthetic SAE, an architecture without an
inference sparsity knob) is listed under "skipped" with the reason instead of failing.
`evaluate(sae, stream, n_tokens)` is the cheap core + synthetic evaluation run after training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from saekit.data.stream import ActivationStream
from saekit.evaluation.absorption import absorption_group
from saekit.evaluation.adaptive import adaptive_group
from saekit.evaluation.afa import afa_group
from saekit.evaluation.base import (
    DEFAULT_GROUPS,
    GROUPS,
    EvalRun,
    EvalSettings,
    Skip,
)
from saekit.evaluation.core import core_group
from saekit.evaluation.interp import interp_group
from saekit.evaluation.probing import probing_group
from saekit.evaluation.recovery import synthetic_group
from saekit.evaluation.sources import ModelSource, model_source
from saekit.evaluation.spliced import spliced_group
from saekit.evaluation.steering_effect import steering_group
from saekit.sae.base import SAE

SCHEMA = "saekit-eval"
SCHEMA_VERSION = 2  # 2: spliced variants and convention, afa's three ε_LBO forms, steering

GROUP_FUNCTIONS: dict[str, Callable[[EvalRun], dict[str, Any]]] = {
    "core": core_group,
    "synthetic": synthetic_group,
    "spliced": spliced_group,
    "adaptive": adaptive_group,
    "probing": probing_group,
    "absorption": absorption_group,
    "afa": afa_group,
    "steering": steering_group,
    "interp": interp_group,
}


def evaluate_sae(
    sae: SAE,
    stream: ActivationStream | None,
    settings: EvalSettings | None = None,
    source: ModelSource | None = None,
    shared: dict[str, Any] | None = None,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run `settings.groups` on one SAE and return the eval document (docs/eval-schema.md).

    stream: held-out activations at the SAE's hookpoint (for core; synthetic needs a
      SyntheticStream). source: the LM behind the SAE (default: from its metadata).
    shared: a dict reused across SAEs of one invocation (contexts, mean activations,
      probing baselines, steering α), so several SAEs on one hookpoint pay for them once.
    """
    settings = settings or EvalSettings()
    run = EvalRun(
        sae.eval(),
        stream,
        settings,
        source or model_source(sae),
        shared if shared is not None else {},
    )
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "sae": _describe_sae(sae, name),
        "data": {
            "stream": stream.describe() if stream is not None else None,
            "model_source": vars(run.source) if run.source is not None else None,
        },
        "settings": settings.to_dict(),
        "environment": _environment(),
    }
    skipped: dict[str, str] = {}
    timing: dict[str, float] = {}
    for group in sorted(settings.groups, key=GROUPS.index):
        start = time.perf_counter()
        if progress is not None:
            progress(group)
        try:
            with torch.no_grad():
                out = GROUP_FUNCTIONS[group](run)
        except Skip as why:
            skipped[group] = str(why)
            continue
        finally:
            timing[group] = round(time.perf_counter() - start, 3)
        doc.update(out)
    doc["saebench"] = saebench_view(doc)
    doc["skipped"] = skipped
    doc["timing_s"] = timing
    return _finite_or_none(doc)


def evaluate(sae: SAE, stream: ActivationStream, n_tokens: int = 16384) -> dict[str, Any]:
    """The cheap post-training evaluation: core (+ density) and, on synthetic data, ground
    truth recovery. Same schema as `evaluate_sae`."""
    return evaluate_sae(sae, stream, EvalSettings(groups=("core", "synthetic"), n_tokens=n_tokens))


# ---- SAEBench-shaped view -------------------------------------------------------------------


def saebench_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The metrics computed as SAEBench computes them, under SAEBench's nested names (core
    eval output and sparse probing). SAEBench's `explained_variance` and `mse` are its 0.6.0
    formulas (docs/evaluation.md#saebench-formulas), which saekit reports
    as `ev_saebench_v060` /
    `mse_saebench_v060`. The CE/KL preservation fields appear only when the spliced group
    used SAEBench's convention (every position replaced and scored)."""
    out: dict[str, Any] = {}
    core = doc.get("core")
    if core:
        out["core"] = {
            "reconstruction_quality": {
                "explained_variance": core.get("ev_saebench_v060"),
                "mse": core.get("mse_saebench_v060"),
                "cossim": core.get("cosine"),
            },
            "shrinkage": {
                "l2_norm_in": core.get("l2_norm_in"),
                "l2_norm_out": core.get("l2_norm_out"),
                "l2_ratio": core.get("l2_ratio"),
                "relative_reconstruction_bias": core.get("relative_reconstruction_bias"),
            },
            "sparsity": {"l0": core.get("l0"), "l1": core.get("l1")},
            "misc_metrics": {
                "frac_alive": core.get("frac_alive"),
                "freq_over_1_percent": core.get("frac_dense_1pct"),
                "freq_over_10_percent": core.get("frac_dense_10pct"),
                "normalized_freq_over_1_percent": core.get("normalized_freq_over_1_percent"),
                "normalized_freq_over_10_percent": core.get("normalized_freq_over_10_percent"),
                "average_max_encoder_cosine_sim": core.get("enc_max_cos"),
                "average_max_decoder_cosine_sim": core.get("dec_max_cos"),
            },
        }
    sp = doc.get("spliced")
    if sp and sp.get("convention") == "saebench":
        out.setdefault("core", {})
        out["core"]["model_behavior_preservation"] = {
            "kl_div_score": sp.get("kl_div_score"),
            "kl_div_with_ablation": sp.get("kl_zero_ablation"),
            "kl_div_with_sae": sp.get("kl_spliced"),
        }
        out["core"]["model_performance_preservation"] = {
            "ce_loss_score": sp.get("ce_loss_score"),
            "ce_loss_with_ablation": sp.get("ce_zero_ablation"),
            "ce_loss_with_sae": sp.get("ce_spliced"),
            "ce_loss_without_sae": sp.get("ce_clean"),
        }
    probing = doc.get("probing", {}).get("mean")
    if probing:
        out["sparse_probing"] = {
            "llm": {k: v for k, v in probing.items() if k.startswith("llm_") and "accuracy" in k},
            "sae": {k: v for k, v in probing.items() if k.startswith("sae_") and "accuracy" in k},
        }
    return out


# ---- description and JSON hygiene -----------------------------------------------------------


def _describe_sae(sae: SAE, name: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "n_latents": sae.n_latents,
        "config": sae.cfg.to_dict(),
    }


def _environment() -> dict[str, Any]:
    from saekit import __version__

    return {
        "saekit_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _finite_or_none(value: Any) -> Any:
    """NaN and ±inf become null: strict JSON has no NaN, and readers must not guess."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, np.generic):
        return _finite_or_none(value.item())
    return value


__all__ = [
    "DEFAULT_GROUPS",
    "GROUPS",
    "SCHEMA",
    "EvalSettings",
    "ModelSource",
    "Skip",
    "evaluate",
    "evaluate_sae",
    "model_source",
    "saebench_view",
]
