"""The evaluation suite: one JSON document per SAE, made of metric groups (docs/eval-schema.md).

Groups:
  core       reconstruction, sparsity, density, shrinkage, weight cosines (held-out stream)
  synthetic  ground-truth recovery, when the data are a synthetic recipe
  spliced    CE/KL scores with the SAE spliced into the LM (model data only)
  adaptive   error vs inference L0 for SAEs whose sparsity can be set at inference
  probing    k-sparse probing on the sae-probes binary tasks (model data only)
  afa        the top-AFA diagnostic (saekit.evaluation.afa, when installed)
  interp     LLM-free interpretability proxies (model data only)

A group that does not apply (no model behind a synthetic SAE, an architecture without an
inference sparsity knob) is listed under "skipped" with the reason instead of failing.
`evaluate(sae, stream, n_tokens)` is the cheap core + synthetic evaluation run after training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from saekit.data.spec import parse_data_spec
from saekit.data.stream import ActivationStream
from saekit.evaluation.metrics import (
    ReconstructionMetrics,
    density_histogram,
    max_cos_to_others,
    weight_geometry,
)
from saekit.evaluation.probing import ProbeSettings
from saekit.sae.base import SAE

SCHEMA = "saekit-eval"
SCHEMA_VERSION = 1
GROUPS = ("core", "synthetic", "spliced", "adaptive", "probing", "afa", "interp")
DEFAULT_GROUPS = ("core", "synthetic", "spliced", "adaptive")


class Skip(Exception):
    """A metric group that does not apply to this SAE; the message says why."""


@dataclass
class EvalSettings:
    """What to evaluate and on how much data. Token and context counts are per SAE."""

    groups: tuple[str, ...] = DEFAULT_GROUPS
    n_tokens: int = 16384  # core: held-out activation tokens
    sample_tokens: int = 4096  # kept from the core pass for adaptive / afa
    spliced_contexts: int = 16
    ctx_len: int = 128
    corpus: Any = "default"  # a corpus spec (see open_corpus) or a TextCorpus
    interp_contexts: int = 64
    interp_latents: int = 64
    seed: int = 0
    probe: ProbeSettings = field(default_factory=ProbeSettings)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown metric group(s) {unknown}; valid: {', '.join(GROUPS)}")


# ---- where the activations came from -------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """The LM behind an SAE: model name or path (for `load_model`), hookpoint, input/output.

    For a transcoder, hookpoint/which are its source and ``target`` the site it predicts
    (``"model.layers.6.mlp:out"``); None for an ordinary SAE."""

    model: str
    hookpoint: str
    which: str = "output"
    target: str | None = None

    @property
    def pair(self) -> str | None:
        """The canonical ``SOURCE->TARGET`` spelling, or None without a target."""
        if self.target is None:
            return None
        from saekit.data.hooks import HookPair, site_name

        return str(HookPair(site_name(self.hookpoint, self.which), self.target))  # type: ignore[arg-type]

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once per process and shared with `model:` streams."""
        from saekit.data.models import load_model_cached

        return load_model_cached(self.model)


def model_source(sae: SAE, data_spec: str | None = None) -> ModelSource | None:
    """The ModelSource recorded in the SAE's metadata (or named by a `model:`/`cache:` spec),
    None for synthetic or unknown data. A hookpoint pair (transcoders) gives its source as
    hookpoint/which and its target as ``target``."""
    desc = getattr(sae, "metadata", {}).get("data", {}) or {}
    if desc.get("source") in ("model", "cache") and desc.get("hookpoint"):
        model = desc.get("model") or {}
        name = model.get("name") if isinstance(model, dict) else str(model)
        if name:
            return _source(str(name), desc["hookpoint"], desc.get("which", "output"))
    spec = data_spec or getattr(sae, "metadata", {}).get("training", {}).get("data_spec")
    data = parse_data_spec(spec) if spec else None
    if data is not None and data.kind == "model" and len(data.hookpoints) == 1:
        return _source(data.source, data.hookpoints[0])
    return None


def _source(model: str, hookpoint: str, which: str = "output") -> ModelSource:
    from saekit.data.hooks import HookPair, is_pair, parse_site

    if not is_pair(hookpoint):
        return ModelSource(model, hookpoint, which)
    pair = HookPair.parse(hookpoint)
    module, source_which = parse_site(pair.source)
    return ModelSource(model, module, source_which, pair.target)


# ---- one evaluation run ---------------------------------------------------------------------


@dataclass
class _Run:
    sae: SAE
    stream: ActivationStream | None
    settings: EvalSettings
    source: ModelSource | None
    shared: dict[str, Any]
    x_sample: torch.Tensor | None = None  # [sample_tokens, d_in] held-out activations
    sample_extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. g-SAE "grad"

    def require_model(self) -> tuple[Any, Any, ModelSource]:
        if self.source is None:
            raise Skip("no language model behind this SAE's data (synthetic or unknown source)")
        try:
            model, tokenizer = self.source.load()
        except OSError as e:  # not installed, not cached and no hub access: say so, go on
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise Skip(f"model {self.source.model!r} cannot be loaded here ({first})") from None
        return model, tokenizer, self.source


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
      probing baselines), so several SAEs on one hookpoint pay for them once.
    """
    settings = settings or EvalSettings()
    run = _Run(
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
        "settings": _settings_dict(settings),
        "environment": _environment(),
    }
    skipped: dict[str, str] = {}
    timing: dict[str, float] = {}
    # core first: it collects the held-out sample that adaptive and afa use.
    for group in sorted(settings.groups, key=GROUPS.index):
        start = time.perf_counter()
        if progress is not None:
            progress(group)
        try:
            with torch.no_grad():
                out = _GROUP_FUNCTIONS[group](run)
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


# ---- groups ---------------------------------------------------------------------------------


def _core(run: _Run) -> dict[str, Any]:
    if run.stream is None:
        raise Skip("no activation stream")
    sae, n_tokens = run.sae, run.settings.n_tokens
    acc = ReconstructionMetrics(sae.n_latents)
    norm_in = norm_out = 0.0
    sample: list[torch.Tensor] = []
    extras: dict[str, list[torch.Tensor]] = {}
    kept = 0
    transcoder = getattr(sae, "is_transcoder", False)
    for batch in run.stream:
        x = batch.x.float()
        if transcoder and "target" not in batch.extras:
            raise Skip("a transcoder needs a stream with its target (a SOURCE->TARGET spec)")
        codes = sae.encode(x, extras=batch.extras)
        x_hat = sae.decode(codes)
        # a transcoder is scored on what it predicts: the target (e.g. the MLP output)
        y = batch.extras["target"].float() if transcoder else x
        acc.update(y, x_hat, codes)
        norm_in += y.double().norm(dim=-1).sum().item()
        norm_out += x_hat.double().norm(dim=-1).sum().item()
        if kept < run.settings.sample_tokens:
            take = run.settings.sample_tokens - kept
            sample.append(x[:take])
            if sae.needs_extras:
                for name, value in batch.extras.items():
                    extras.setdefault(name, []).append(value[:take])
            kept += len(sample[-1])
        if acc.n_tokens >= n_tokens:
            break
    core = acc.compute()
    density = acc.density()
    mass = density.sum().item()
    core.update(
        l2_norm_in=norm_in / acc.n_tokens,
        l2_norm_out=norm_out / acc.n_tokens,
        normalized_freq_over_1_percent=density[density > 0.01].sum().item() / mass
        if mass
        else math.nan,
        normalized_freq_over_10_percent=density[density > 0.1].sum().item() / mass
        if mass
        else math.nan,
        **_geometry(sae, transcoder),
    )
    run.x_sample = torch.cat(sample) if sample else None
    run.sample_extras = {name: torch.cat(parts) for name, parts in extras.items()}
    hist = density_histogram(density, bins=50, log10_range=(-8.0, 0.0))
    return {
        "core": core,
        "density": {
            "log10_edges": [float(e) for e in hist.edges],
            "counts": [int(c) for c in hist.counts],
            "n_dead": hist.n_dead,
            "n_latents": sae.n_latents,
            "n_tokens": acc.n_tokens,
        },
    }


def _geometry(sae: SAE, transcoder: bool) -> dict[str, float]:
    """Weight cosines. A transcoder's encoder rows and decoder atoms live in different spaces
    (its input and its target), so enc_dec_cos is not defined for it."""
    if not transcoder:
        return weight_geometry(sae.W_dec, getattr(sae, "W_enc", None))
    out = weight_geometry(sae.W_dec)
    if getattr(sae, "W_enc", None) is not None:
        out["enc_max_cos"] = max_cos_to_others(sae.W_enc).double().mean().item()
    return out


def _synthetic(run: _Run) -> dict[str, Any]:
    recipe = getattr(run.stream, "recipe", None)
    if recipe is None:
        raise Skip("not trained on a synthetic recipe")
    from saekit.evaluation.recovery import recovery_report

    n = min(run.settings.n_tokens, 16384)
    return {"synthetic": recovery_report(run.sae, recipe, n_samples=n, seed=12345)}


def _contexts(run: _Run, split: str, n: int) -> Any:
    """Tokenised contexts of the corpus, shared by every SAE of the run on the same model."""
    from saekit.data.corpora import tokenize_corpus

    model, tokenizer, source = run.require_model()
    key = (
        "contexts",
        source.model,
        run.settings.corpus,
        split,
        n,
        run.settings.ctx_len,
        run.settings.seed,
    )
    if key not in run.shared:
        run.shared[key] = tokenize_corpus(
            tokenizer, run.settings.corpus, n, run.settings.ctx_len, split, run.settings.seed
        )
    return run.shared[key]


def _spliced(run: _Run) -> dict[str, Any]:
    from saekit.evaluation.spliced import estimate_mean_activation, spliced_metrics

    model, _, source = run.require_model()
    transcoder = getattr(run.sae, "is_transcoder", False)
    if transcoder and source.target is None:
        raise Skip("a transcoder needs its SOURCE->TARGET hookpoint pair in its metadata")
    # A transcoder replaces its target with its prediction from the source (the pair); an
    # SAE replaces its own hookpoint. Ablation baselines act on what is replaced.
    hookpoint = source.pair if transcoder else source.hookpoint
    n = run.settings.spliced_contexts
    evaluation = _contexts(run, "heldout", n)
    key = ("mean_activation", source, transcoder, run.settings.corpus, n)
    if key not in run.shared:
        other = _contexts(run, "train", n)
        run.shared[key] = estimate_mean_activation(
            model,
            other.input_ids,
            other.attention_mask,
            hookpoint,
            which=source.which,
            special_ids=other.special_ids,  # type: ignore[arg-type]
        )
    scores = spliced_metrics(
        model,
        evaluation.input_ids,
        evaluation.attention_mask,
        hookpoint,
        _splice_function(run.sae),
        mean_activation=run.shared[key],
        which=source.which,  # type: ignore[arg-type]
        special_ids=evaluation.special_ids,
    )
    out = {**scores, "n_contexts": len(evaluation), "ctx_len": evaluation.ctx_len}
    if run.sae.needs_extras:
        out["inference_mode"] = "topk"
    return {"spliced": out}


def _splice_function(sae: SAE) -> Callable[[torch.Tensor], torch.Tensor]:
    """What replaces the hookpoint activation. A splice has no per-token gradient at hand, so
    a gradient-guided SAE is evaluated through its TopK view here (`saekit gsae` evaluates the
    gradient rule with gradients it captures)."""
    if not sae.needs_extras:
        return sae
    if "k" in sae.knobs:
        from saekit.sae.selectors import TopK

        return sae.with_selector(TopK())
    raise Skip(
        f"{sae.architecture} needs per-token extras ({', '.join(sae.needs_extras)}) to encode"
    )


def _adaptive(run: _Run) -> dict[str, Any]:
    try:
        from saekit.evaluation.adaptive import adaptive_report
    except ImportError:
        raise Skip("saekit.evaluation.adaptive is not available") from None
    if run.x_sample is None:
        raise Skip("needs the core group's held-out sample")
    if run.sae.needs_extras:
        raise Skip(f"{run.sae.architecture} needs per-token extras to encode")
    _no_transcoder(run, "adaptive")
    return {"adaptive": adaptive_report(run.sae, run.x_sample)}  # raises Skip without a knob


def _probing(run: _Run) -> dict[str, Any]:
    from saekit.evaluation.probing import (
        cached_task_activations,
        load_task,
        probe_dataset,
        summarise,
    )

    model, tokenizer, source = run.require_model()
    ps = run.settings.probe
    per_dataset: dict[str, Any] = {}
    for name in ps.datasets:
        task = load_task(name)
        x = cached_task_activations(
            model,
            tokenizer,
            task,
            source.hookpoint,
            source.model,
            source.which,  # type: ignore[arg-type]
            ps.max_length,
            ps.batch_size,
            ps.cache_dir,
        )
        if x.shape[1] != run.sae.d_in:
            raise Skip(
                f"activations at {source.hookpoint} have width {x.shape[1]}, SAE d_in {run.sae.d_in}"
            )
        key = ("probe_baseline", source, name, repr(ps))
        res = probe_dataset(run.sae, x, task.labels, ps, run.shared.get(key))
        run.shared[key] = {k: res[k] for k in ("raw", "raw_dense_l2") if k in res}
        per_dataset[name] = {"positive_class": task.positive_class, **res}
    return {
        "probing": {
            "settings": ps.to_dict(),
            "datasets": per_dataset,
            "mean": summarise(per_dataset, ps.ks),
        }
    }


def _interp(run: _Run) -> dict[str, Any]:
    from saekit.evaluation.interp import interp_report, record_activations, sample_latents

    model, tokenizer, source = run.require_model()
    contexts = _contexts(run, "heldout", run.settings.interp_contexts)
    records = record_activations(run.sae, model, contexts, source.hookpoint, source.which)  # type: ignore[arg-type]
    latents = sample_latents(records, run.settings.interp_latents, run.settings.seed)
    report = interp_report(records, latents, model, run.sae.W_dec, tokenizer)
    return {"interp": {"n_contexts": len(contexts), "ctx_len": contexts.ctx_len, **report}}


def _afa(run: _Run) -> dict[str, Any]:
    try:
        from saekit.evaluation.afa import afa_diagnostic
    except ImportError:
        raise Skip("saekit.evaluation.afa is not available") from None
    if run.x_sample is None:
        raise Skip("needs the core group's held-out sample")
    _no_transcoder(run, "afa")
    from saekit.data.stream import TensorStream

    sample = TensorStream(run.x_sample, 1024, shuffle=False, loop=False, extras=run.sample_extras)
    _, summary = afa_diagnostic(run.sae, sample, n_tokens=len(run.x_sample))
    return {"afa": summary}


def _no_transcoder(run: _Run, group: str) -> None:
    # These groups score sae(x) against x itself; a transcoder predicts another activation.
    if getattr(run.sae, "is_transcoder", False):
        raise Skip(f"{group} compares the reconstruction with x; a transcoder predicts a target")


_GROUP_FUNCTIONS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "core": _core,
    "synthetic": _synthetic,
    "spliced": _spliced,
    "adaptive": _adaptive,
    "probing": _probing,
    "afa": _afa,
    "interp": _interp,
}


# ---- SAEBench-shaped view -------------------------------------------------------------------


def saebench_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The metrics that match SAEBench's, under SAEBench's nested names (core eval output
    and sparse probing). SAEBench's `explained_variance` and `mse` are its 0.6.0 formulas
    (evaluation.md §3.1), which saekit reports as `ev_saebench_v060` / `mse_saebench_v060`."""
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
    if sp:
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


# ---- provenance and JSON hygiene ------------------------------------------------------------


def _describe_sae(sae: SAE, name: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "n_latents": sae.n_latents,
        "config": sae.cfg.to_dict(),
    }


def _settings_dict(s: EvalSettings) -> dict[str, Any]:
    return {
        "groups": list(s.groups),
        "n_tokens": s.n_tokens,
        "sample_tokens": s.sample_tokens,
        "spliced_contexts": s.spliced_contexts,
        "ctx_len": s.ctx_len,
        "corpus": s.corpus if isinstance(s.corpus, str) else s.corpus.describe(),
        "interp_contexts": s.interp_contexts,
        "interp_latents": s.interp_latents,
        "seed": s.seed,
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
    "Skip",
    "GROUPS",
    "EvalSettings",
    "ModelSource",
    "evaluate",
    "evaluate_sae",
    "model_source",
    "saebench_view",
]
