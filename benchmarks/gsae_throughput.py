"""g-SAE training throughput relative to TopK, both trained from the default model's stream.

    python benchmarks/gsae_throughput.py               # 6 steps of 512 tokens each
    python benchmarks/gsae_throughput.py --steps 2     # a quick run

TopK trains from a ModelStream (forward truncated after the hookpoint); g-SAE from a
GradientModelStream over the same contexts (full forward, next-token CE, backward to the
hookpoint). Same SAE size, k, batch and steps; one process, one thread, run back to back.
Prints tokens/s for each, split into the stream's share and the SAE's share, and the ratio
g-SAE / TopK. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from saekit.data.corpora import tokenize_corpus
from saekit.data.gradients import GradientModelStream
from saekit.data.model_stream import ModelStream
from saekit.data.models import load_model
from saekit.sae import create
from saekit.training.trainer import TrainConfig, Trainer


def timed_run(name: str, stream, sae, steps: int) -> dict[str, float]:
    """Wall time of Trainer.fit, and of drawing the same number of batches alone."""
    cfg = TrainConfig(steps=steps, init_batches=1, progress_bar=False, warmup_steps=1)
    batches = steps + cfg.init_batches
    start = time.perf_counter()
    Trainer({name: sae}, stream, cfg).fit()
    total = time.perf_counter() - start
    stream.load_state_dict({"epoch": 0, "chunk": 0, "offset": 0})
    start = time.perf_counter()
    for _, _b in zip(range(batches), stream):
        pass
    data = time.perf_counter() - start
    tokens = batches * stream.batch_size
    return {"seconds": total, "tokens": tokens, "tokens_per_s": tokens / total,
            "stream_seconds": data, "sae_seconds": total - data}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--hookpoint", default="model.layers.15")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n-latents", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.model)
    contexts = tokenize_corpus(tok, "default", 64, 128, "train", 0)
    kw = dict(batch_size=args.batch_size, seed=0, contexts_per_chunk=8, forward_batch=8)
    plain = ModelStream(model, contexts, args.hookpoint, **kw)
    with_grad = GradientModelStream(model, contexts, args.hookpoint, **kw)
    size = dict(d_in=plain.d_in, n_latents=args.n_latents, k=args.k)
    topk = timed_run("topk", plain, create("topk", **size), args.steps)
    gsae = timed_run("gsae", with_grad, create("gsae", beta=10.0, **size), args.steps)
    ratio = gsae["tokens_per_s"] / topk["tokens_per_s"]
    print(json.dumps({"topk": topk, "gsae": gsae, "args": vars(args)}, indent=1))
    print(
        f"\nTopK  {topk['tokens_per_s']:8.1f} tokens/s "
        f"(stream {topk['stream_seconds']:.1f} s, SAE {topk['sae_seconds']:.1f} s)"
    )
    print(
        f"g-SAE {gsae['tokens_per_s']:8.1f} tokens/s "
        f"(stream {gsae['stream_seconds']:.1f} s, SAE {gsae['sae_seconds']:.1f} s)"
    )
    print(f"throughput ratio g-SAE / TopK = {ratio:.3f} ({1 / ratio:.1f}x slower)")  # fmt: skip


if __name__ == "__main__":
    main()
