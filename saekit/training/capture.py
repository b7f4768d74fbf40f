"""Capturing model activations into a cache: the settings `saekit cache` and `saekit train`
(on model data) share, and the run's own cache that `saekit train` captures once and then
trains epochs from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from saekit.options import option


@dataclass
class CaptureConfig:
    """How model activations are captured: one set of defaults for both commands."""

    corpus: str = option(
        "default",
        "text the model reads: 'default' (the sae-probes datasets), a .txt/.jsonl/.parquet "
        "file or directory, or hf:NAME[:CONFIG]",
    )
    text_field: str = option("text", "text field of .jsonl/.parquet/hf rows")
    ctx_len: int = option(128, "tokens per context", lo=2, hi=2**20)
    cache_dtype: Literal["fp32", "bf16", "fp16"] = option(
        "fp32", "storage precision of the activation cache"
    )
    eval_fraction: float = option(
        0.1,
        "held-out tokens captured from held-out documents, as a fraction of the training tokens",
        lo=0,
        hi=1,
    )
    # SmolLM2's attention-sink tokens just after position 0 reach ~150x the median norm (4 in
    # 32k tokens) and would dominate every squared error.
    max_norm_factor: float | None = option(
        10.0,
        "drop tokens whose norm exceeds this factor x the batch's median norm (none: keep all)",
        lo=0,
        above=True,
    )
    contexts_per_forward: int = option(8, "contexts per model forward pass", lo=1)
    shard_tokens: int = option(32_768, "tokens per cache shard file", lo=1)

    def eval_tokens(self, n_tokens: int) -> int:
        return round(n_tokens * self.eval_fraction)


def capture(
    out_dir: Path,
    model_name: str,
    hookpoints: list[str],
    n_tokens: int,
    cfg: CaptureConfig,
    seed: int = 0,
    eval_tokens: int | None = None,
    which: str = "output",
    with_grad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the model, check the hookpoints (default: the middle decoder layer) and the
    corpus, and write the cache; returns its manifest. Unknown hookpoints and unreadable
    corpora fail before the capture starts."""
    from saekit.data.cache import write_cache
    from saekit.data.corpora import open_corpus
    from saekit.data.hooks import HookPair, get_module, is_pair
    from saekit.data.masking import Masking
    from saekit.data.model_stream import default_hookpoint
    from saekit.data.models import load_model_cached, quiet_transformers

    try:
        corpus = open_corpus(cfg.corpus, text_field=cfg.text_field)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise ValueError(f"--corpus: {e}") from None
    quiet_transformers()
    if progress:
        print(f"loading model {model_name!r} (a first GGUF load de-quantises and caches it)")
    try:
        model, tokenizer = load_model_cached(model_name)
    except (OSError, ValueError, ModuleNotFoundError) as e:
        raise ValueError(f"cannot load model {model_name!r}: {str(e).splitlines()[0]}") from None
    hookpoints = [h or default_hookpoint(model) for h in hookpoints or [""]]
    for h in hookpoints:
        for site in HookPair.parse(h).sites if is_pair(h) else [h]:
            try:
                get_module(model, site)
            except (KeyError, ValueError) as e:
                raise ValueError(str(e.args[0])) from None
    if progress:
        grad = " with gradients" if with_grad else ""
        print(f"capturing {n_tokens} tokens at {', '.join(hookpoints)}{grad} into {out_dir} ...")
    try:
        return write_cache(
            out_dir,
            model,
            tokenizer,
            corpus,
            hookpoints,
            n_tokens,
            dtype=cfg.cache_dtype,
            shard_tokens=cfg.shard_tokens,
            heldout_tokens=cfg.eval_tokens(n_tokens) if eval_tokens is None else eval_tokens,
            ctx_len=cfg.ctx_len,
            batch_size=cfg.contexts_per_forward,
            seed=seed,
            which=which,  # type: ignore[arg-type]
            masking=Masking(max_norm_factor=cfg.max_norm_factor),
            with_grad=with_grad,
            overwrite=overwrite,
            progress=progress,
        )
    except (FloatingPointError, ImportError, KeyError) as e:  # fp16 overflow, a missing extra
        raise ValueError(str(e.args[0]) if e.args else repr(e)) from None


def run_cache(
    spec: str, n_tokens: int, cfg: CaptureConfig, out: Path, seed: int, with_grad: bool
) -> str:
    """The data spec a run trains on. Model data (`model:NAME[@HOOKPOINTS]`) with n_tokens >
    0 is captured once into out/activations and read back as a cache, whose train and eval
    splits come from disjoint documents; a cache already there from the same request is
    reused. Any other spec is returned as it is."""
    if not spec.startswith("model:") or n_tokens <= 0:
        return spec
    name, hookpoints = parse_model_spec(spec)
    cache_dir = out / "activations"
    reusable = reusable_cache(cache_dir, name, hookpoints, n_tokens, cfg, with_grad)
    if reusable is not None:
        print(f"reusing the activation cache in {cache_dir}")
        return f"cache:{cache_dir.resolve()}@{reusable}"
    manifest = capture(
        cache_dir, name, hookpoints, n_tokens, cfg, seed, with_grad=with_grad, overwrite=True
    )
    return f"cache:{cache_dir.resolve()}@{','.join(manifest['hookpoints'])}"


def parse_model_spec(spec: str) -> tuple[str, list[str]]:
    """'model:NAME@H1,H2' -> (NAME, [H1, H2]) with canonical hookpoint names ([""]: the
    model's default). A malformed pair fails here, before any model loads."""
    from saekit.data.hooks import canonical_hookpoint
    from saekit.data.spec import parse_data_spec

    data = parse_data_spec(spec)
    return data.source, [canonical_hookpoint(h) for h in data.hookpoints] or [""]


def reusable_cache(
    cache_dir: Path,
    model_name: str,
    hookpoints: list[str],
    n_tokens: int,
    cfg: CaptureConfig,
    with_grad: bool,
) -> str | None:
    """The hookpoint of a cache in `cache_dir` that already holds what this run asks for
    (the same model, corpus, context length, dtype and masking, enough tokens, gradients
    when needed), or None."""
    from saekit.data.cache import load_manifest
    from saekit.data.cache.format import DTYPES

    if len(hookpoints) != 1 or not (cache_dir / "manifest.json").is_file():
        return None
    manifest = load_manifest(cache_dir)
    hookpoint = hookpoints[0] or next(iter(manifest["hookpoints"]))
    entry = manifest["hookpoints"].get(hookpoint)
    train = manifest.get("corpus", {}).get("train") or {}
    same = (
        entry is not None
        and manifest["model"].get("name") == model_name
        and manifest.get("dtype") == str(DTYPES[cfg.cache_dtype]).removeprefix("torch.")
        and manifest.get("masking", {}).get("max_norm_factor") == cfg.max_norm_factor
        and train.get("ctx_len") == cfg.ctx_len
        and train.get("corpus") == _corpus_description(cfg)
        and entry["splits"]["train"]["n_tokens"] >= n_tokens
        and ("grad" in entry["arrays"] or not with_grad)
    )
    return hookpoint if same else None


def _corpus_description(cfg: CaptureConfig) -> Any:
    from saekit.data.corpora import open_corpus

    try:
        return open_corpus(cfg.corpus, text_field=cfg.text_field).describe()
    except (ValueError, FileNotFoundError, ImportError):
        return None
