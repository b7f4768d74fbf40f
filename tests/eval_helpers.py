"""Shared by the evaluation, viewer, browser and report tests: the tiny random Llama saved as
a real model directory (so `load_model(path)` and every CLI path work on it), a small text
corpus, and a TopK SAE trained on the model's activations with saekit's own Trainer.

Everything is built once per test process (a few seconds) under one temporary directory."""

from __future__ import annotations

import atexit
import functools
import random
import shutil
import tempfile
from pathlib import Path

import torch
from tiny_model import TEXTS, tiny_model, tiny_tokenizer

HOOKPOINT = "model.layers.1"
WORDS = (
    "the a fox dog cat bird river stone light night sparse dense feature model layer token "
    "numbers 12 345 6789 quickly slowly jumps runs sleeps over under near far red green blue"
).split()


def corpus_texts(n: int = 400, seed: int = 0) -> list[str]:
    """n short pseudo-sentences (deterministic) plus the tiny model's own sentences."""
    rng = random.Random(seed)
    made = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(n)]
    return list(dict.fromkeys(TEXTS)) + made


def corpus():
    """A TextListCorpus with a large held-out share, so held-out splits are not empty."""
    from saekit.data.corpora import TextListCorpus

    return TextListCorpus(corpus_texts(), heldout_fraction=0.3)


@functools.lru_cache(maxsize=1)
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="saekit-eval-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.lru_cache(maxsize=1)
def model_dir() -> Path:
    """The tiny model + tokenizer written with save_pretrained."""
    path = workdir() / "tiny-llama"
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@functools.lru_cache(maxsize=4)
def trained_sae(
    architecture: str = "topk", n_latents: int = 128, k: int = 8, steps: int = 150
) -> Path:
    """An SAE directory trained on layer-1 activations of the tiny model (metadata records
    the model path and hookpoint, as `saekit train --data model:...` would)."""
    from saekit.data.corpora import tokenize_corpus
    from saekit.data.model_stream import ModelStream
    from saekit.evaluation.evaluate import ModelSource
    from saekit.sae import create
    from saekit.training.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    model, tok = ModelSource(str(model_dir()), HOOKPOINT).load()
    contexts = tokenize_corpus(tok, corpus(), 64, 32, "train", 0)
    stream = ModelStream(model, contexts, HOOKPOINT, batch_size=256, seed=0)
    options = {"k": k} if architecture in ("topk", "batchtopk") else {}
    sae = create(architecture, d_in=stream.d_in, n_latents=n_latents, **options)
    out = workdir() / f"run-{architecture}-{n_latents}-{k}"
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=10, progress_bar=False, log_every=50)
    Trainer(
        {architecture: sae},
        stream,
        cfg,
        out,
        run_info={"data_spec": f"model:{model_dir()}@{HOOKPOINT}"},
    ).fit()
    return out / "saes" / architecture


@functools.lru_cache(maxsize=1)
def evaluated_saes() -> tuple[Path, ...]:
    """Two tiny-model TopK SAEs (k = 4, 8) evaluated with core, spliced, adaptive and a small
    probing run; each directory gets its eval.json, as `saekit eval` writes it."""
    import json

    from saekit.data.corpora import tokenize_corpus
    from saekit.data.model_stream import ModelStream
    from saekit.evaluation.evaluate import EvalSettings, evaluate_sae, model_source
    from saekit.evaluation.probing import ProbeSettings
    from saekit.formats.native import load

    settings = EvalSettings(
        groups=("core", "spliced", "adaptive", "probing"),
        n_tokens=512,
        corpus=corpus(),
        spliced_contexts=4,
        ctx_len=32,
        probe=ProbeSettings(
            datasets=("118_us_state_CA",),
            ks=(1, 2, 4),
            n_train_max=64,
            n_test_max=64,
            C_grid=(10.0, 1.0, 0.1),
            cache_dir=workdir() / "probing",
        ),
    )
    shared: dict = {}
    dirs = []
    for k in (4, 8):
        sae_dir = trained_sae("topk", 128, k)
        sae = load(sae_dir)
        model, tok = model_source(sae).load()
        stream = ModelStream(
            model, tokenize_corpus(tok, corpus(), 24, 32, "heldout"), HOOKPOINT, 256
        )
        doc = evaluate_sae(sae, stream, settings, shared=shared, name=f"topk-k{k}")
        (sae_dir / "eval.json").write_text(json.dumps(doc, indent=2, allow_nan=False))
        dirs.append(sae_dir)
    return tuple(dirs)
