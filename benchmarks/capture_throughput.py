"""Capture throughput: hooks + early stop at a middle layer vs a plain full forward.

Both run in the same process on the same tokens, alternating, so machine load affects both
alike; the median of ``--repeats`` runs is reported. Default: SmolLM2-135M (30 layers),
layer 15, 8 x 128 tokens of the default text, 1 thread: about a minute.

    python benchmarks/capture_throughput.py [--model default] [--hookpoint model.layers.15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from saekit.data.corpora import tokenize_corpus  # noqa: E402
from saekit.data.hooks import capture  # noqa: E402
from saekit.data.model_stream import default_hookpoint  # noqa: E402
from saekit.data.models import load_model  # noqa: E402


def timed(fn, batches) -> float:
    start = time.perf_counter()
    for ids, am in batches:
        fn(ids, am)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--hookpoint", help="default: the middle decoder layer")
    parser.add_argument("--contexts", type=int, default=8)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4, help="contexts per forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model, tok = load_model(args.model)
    print(f"load {args.model}: {time.perf_counter() - start:.1f} s")
    hookpoint = args.hookpoint or default_hookpoint(model)
    contexts = tokenize_corpus(tok, "default", args.contexts, args.ctx_len)
    batches = [
        (
            contexts.input_ids[i : i + args.batch_size],
            contexts.attention_mask[i : i + args.batch_size],
        )
        for i in range(0, len(contexts), args.batch_size)
    ]
    n_tokens = contexts.input_ids.numel()

    @torch.no_grad()
    def full(ids, am):
        model(input_ids=ids, attention_mask=am, use_cache=False)

    def hooked(ids, am):
        capture(model, ids, am, [hookpoint])

    full(*batches[0])  # warm-up (first-call allocations)
    hooked(*batches[0])
    times = {"full forward": [], f"capture {hookpoint}": []}
    for _ in range(args.repeats):
        times["full forward"].append(timed(full, batches))
        times[f"capture {hookpoint}"].append(timed(hooked, batches))
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{n_tokens} tokens ({args.contexts} x {args.ctx_len}), batch {args.batch_size}, "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    for name, sec in medians.items():
        print(f"  {name:28s} {n_tokens / sec:8.0f} tokens/s  ({sec:.2f} s)")
    full_s, capture_s = medians.values()
    print(f"  speed-up of capture over a full forward: {full_s / capture_s:.2f}x")


if __name__ == "__main__":
    main()
