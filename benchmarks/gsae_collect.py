"""Collect (activation, downstream-loss gradient) pairs from the default model once, for the
real-model g-SAE / top-AFA experiments (benchmarks/gsae_real.py).

    python benchmarks/gsae_collect.py --out /tmp/saekit_gsae/data.pt --contexts 256

Runs GradientModelStream over the train split of the default corpus (one full forward and a
backward to the hookpoint per context) and saves x [n, d], grad [n, d] and the stream's
description. CPU cost on SmolLM2-135M, layer 15: about 30 ms per token on one thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from saekit.data import open_stream


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--hookpoint", default="model.layers.15")
    p.add_argument("--contexts", type=int, default=256)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    spec = f"model:{args.model}@{args.hookpoint}"
    stream = open_stream(
        spec, batch_size=4096, with_grad=True, seed=args.seed, n_contexts=args.contexts, ctx_len=args.ctx_len,
        contexts_per_chunk=16, forward_batch=8, loop=False,
    )  # fmt: skip
    start = time.perf_counter()
    xs, gs = [], []
    for batch in stream:
        xs.append(batch.x)
        gs.append(batch.extras["grad"])
        n = sum(len(x) for x in xs)
        print(f"{n} tokens, {time.perf_counter() - start:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"x": torch.cat(xs), "grad": torch.cat(gs), "describe": stream.describe(),
         "seconds": time.perf_counter() - start},
        args.out,
    )  # fmt: skip
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
