"""Capture throughput: `saekit cache` against a bare forward stopped at the same layer.

Each round times, alternately and in the same process (machine load affects both alike):

- capture: `saekit.training.capture.capture`, the function behind `saekit cache`, with
  CaptureConfig's defaults (8 contexts x 128 tokens per forward, fp32, norm masking, a
  held-out split of 10%), writing a real cache to a temporary directory;
- bare: the same contexts (train and held-out, as many as the capture read) through the
  model's decoder truncated after the hooked layer (`model.model` with only layers 0..L and
  no final norm): no hooks, no masking, no copies, no writes.

Tokenising is included in both: both read the corpus through `iter_context_batches`, and
the bare side also reports how much of its time that was. Tokens/s counts the tokens that
go through the model (contexts x ctx_len). `--profile` adds a cProfile of one capture.

    python benchmarks/capture_throughput.py [--tokens 8192] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from itertools import islice
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from saekit.data.corpora import iter_context_batches, open_corpus  # noqa: E402
from saekit.data.hooks import get_module  # noqa: E402
from saekit.data.model_stream import default_hookpoint  # noqa: E402
from saekit.data.models import load_model_cached  # noqa: E402
from saekit.training.capture import CaptureConfig, capture  # noqa: E402


@contextmanager
def truncated(model: nn.Module, hookpoint: str):
    """The decoder that owns ``hookpoint`` (``PREFIX.layers.L``, Llama/Gemma style) with
    only layers 0..L and an identity final norm: its output is the hookpoint's output."""
    prefix, _, layer = hookpoint.rpartition(".layers.")
    decoder = get_module(model, prefix)
    layers, norm = decoder.layers, decoder.norm
    decoder.layers, decoder.norm = layers[: int(layer) + 1], nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm = layers, norm


def bare(model, tokenizer, hookpoint: str, cfg: CaptureConfig, contexts: dict) -> dict:
    """Seconds to tokenise and run ``contexts[split]`` contexts of each split through the
    truncated decoder, and how many of them were tokenising."""
    tokenize = forward = 0.0
    corpus = open_corpus(cfg.corpus, text_field=cfg.text_field)
    with truncated(model, hookpoint) as decoder, torch.no_grad():
        for split, n in contexts.items():
            per_forward = cfg.contexts_per_forward
            batches = iter_context_batches(tokenizer, corpus, per_forward, cfg.ctx_len, split)
            start = time.perf_counter()
            for batch in islice(batches, -(-n // per_forward)):
                t = time.perf_counter()
                tokenize += t - start
                # use_cache=False: as capture runs the model (no KV cache for one pass)
                ids, am = batch.input_ids, batch.attention_mask
                decoder(input_ids=ids, attention_mask=am, use_cache=False)
                start = time.perf_counter()
                forward += start - t
    return {"seconds": tokenize + forward, "tokenize": tokenize}


def run_capture(model_name: str, hookpoint: str, n_tokens: int, cfg: CaptureConfig) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        manifest = capture(Path(out), model_name, [hookpoint], n_tokens, cfg, progress=False)
        seconds = time.perf_counter() - start
    contexts = {split: c["n_contexts"] for split, c in manifest["corpus"].items()}
    return {"seconds": seconds, "contexts": contexts}


# Where a capture's time goes: (file, function) whose cumulative time is one part. A part
# nested in another is subtracted from it (the hooks' recording runs inside the forward).
PARTS = {
    "forward to the hookpoint": [("hooks.py", "_run")],
    "hooks: install, record, remove": [("hooks.py", "hook_sites"), ("hooks.py", "record")],
    "finiteness checks": [("hooks.py", "check_activations_finite"), ("writer.py", "_to_storage")],
    "masking": [("masking.py", "keep")],
    "token metadata": [("writer.py", "_metadata")],
    "shard writes (this thread)": [("writer.py", "add"), ("writer.py", "close")],
    "reading + tokenising the corpus": [("corpora.py", "iter_context_batches")],
}


def profile(model_name: str, hookpoint: str, n_tokens: int, cfg: CaptureConfig) -> None:
    """cProfile one capture and print the PARTS of its time (cProfile slows the Python-heavy
    forward a little, so shares are approximate)."""
    profiler = cProfile.Profile()
    result = profiler.runcall(run_capture, model_name, hookpoint, n_tokens, cfg)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def cumulative(file: str, name: str) -> float:
        return sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(file) and fn == name)

    seconds = {part: sum(cumulative(*k) for k in keys) for part, keys in PARTS.items()}
    seconds["forward to the hookpoint"] -= cumulative("hooks.py", "record")
    seconds["other (model lookup, corpus, manifest, ...)"] = result["seconds"] - sum(
        seconds.values()
    )
    n_forwards = sum(-(-c // cfg.contexts_per_forward) for c in result["contexts"].values())
    print(
        f"profile of one capture ({result['seconds']:.2f} s under cProfile, {n_forwards} forwards):"
    )
    for part, sec in seconds.items():
        print(
            f"  {part:44s} {sec:7.3f} s  {100 * sec / result['seconds']:5.1f}%  "
            f"{1000 * sec / n_forwards:7.1f} ms/forward"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--hookpoint", help="default: the middle decoder layer")
    parser.add_argument("--tokens", type=int, default=8192, help="train tokens per capture")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile one more capture")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = CaptureConfig()
    model, tokenizer = load_model_cached(args.model)
    hookpoint = args.hookpoint or default_hookpoint(model)
    # warm-up: first-call allocations, the corpus files' page cache
    run_capture(args.model, hookpoint, 1024, replace(cfg, eval_fraction=0))
    times: dict[str, list[float]] = {"bare": [], "capture": [], "tokenize": []}
    for _ in range(args.rounds):
        cap = run_capture(args.model, hookpoint, args.tokens, cfg)
        ref = bare(model, tokenizer, hookpoint, cfg, cap["contexts"])
        times["capture"].append(cap["seconds"])
        times["bare"].append(ref["seconds"])
        times["tokenize"].append(ref["tokenize"])
    n = sum(cap["contexts"].values()) * cfg.ctx_len
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.model} {hookpoint}: {args.tokens} train tokens + {cfg.eval_fraction:.0%} held "
        f"out -> {n} tokens forwarded ({cap['contexts']} contexts x {cfg.ctx_len}), "
        f"{cfg.contexts_per_forward} contexts per forward, {args.threads} thread(s), "
        f"median of {args.rounds} interleaved rounds"
    )
    for name in ("bare", "capture"):
        print(f"  {name:8s} {n / med[name]:7.1f} tokens/s  ({med[name]:.2f} s)")
    print(f"  tokenising, in both (timed on the bare side): {med['tokenize']:.2f} s")
    ratios = [b / c for b, c in zip(times["bare"], times["capture"])]
    print(
        f"  capture / bare throughput: {med['bare'] / med['capture']:.3f} (ratio of medians; "
        f"per round {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    if args.profile:
        profile(args.model, hookpoint, args.tokens, cfg)


if __name__ == "__main__":
    main()
