"""Our trainer's TopK step vs a plain hand-written PyTorch TopK loop, same data, same run.

Both do: encode, TopK, decode, MSE, backward, Adam, renormalise atoms. Ours also does AuxK,
dead-latent counters, gradient clipping, radial-gradient removal and the LR schedule.
Rounds alternate ours/plain so that drifting machine load hits both; the ratio of medians
is printed (ours / plain; < 1 means ours is faster).

    python benchmarks/train_step.py [--d-in 256 --n-latents 4096 --k 32 --batch 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import saekit
from saekit.data.stream import Batch
from saekit.training.trainer import TrainConfig, Trainer


class PlainTopK(torch.nn.Module):
    def __init__(self, d_in: int, n_latents: int, k: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(n_latents, d_in, generator=gen)
        w /= w.norm(dim=-1, keepdim=True)
        self.W_enc = torch.nn.Parameter(w.clone())
        self.W_dec = torch.nn.Parameter(w.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(n_latents))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.k = k

    def forward(self, x):
        pre = (x - self.b_dec) @ self.W_enc.T + self.b_enc
        vals, idx = pre.topk(self.k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return codes @ self.W_dec + self.b_dec


def plain_step(model, opt, x):
    loss = (model(x) - x).pow(2).sum(-1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.W_dec /= model.W_dec.norm(dim=-1, keepdim=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--n-latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    n_batches = 8
    data = torch.randn(n_batches, args.batch, args.d_in, generator=gen)

    sae = saekit.create("topk", d_in=args.d_in, n_latents=args.n_latents, k=args.k)
    trainer = Trainer(
        {"topk": sae},
        _NoStream(args.d_in, args.batch),
        TrainConfig(steps=10**9, lr=1e-3, progress_bar=False),
    )
    plain = PlainTopK(args.d_in, args.n_latents, args.k)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def run_ours(n):
        for i in range(n):
            trainer.train_step(Batch(data[i % n_batches]))

    def run_plain(n):
        for i in range(n):
            plain_step(plain, opt, data[i % n_batches])

    run_ours(2)
    run_plain(2)
    ours, base = [], []
    for _ in range(args.rounds):
        for fn, out in ((run_ours, ours), (run_plain, base)):
            t = time.perf_counter()
            fn(args.steps)
            out.append((time.perf_counter() - t) / args.steps)
    mo, mb = statistics.median(ours), statistics.median(base)
    tok = args.batch
    print(
        f"TopK train step, d_in={args.d_in} n_latents={args.n_latents} k={args.k} batch={args.batch} "
        f"threads={args.threads}"
    )
    print(f"  saekit trainer : {1e3 * mo:8.1f} ms/step  {tok / mo:9.0f} tokens/s")
    print(f"  plain PyTorch  : {1e3 * mb:8.1f} ms/step  {tok / mb:9.0f} tokens/s")
    print(f"  ratio ours/plain (median of {args.rounds} alternating rounds): {mo / mb:.3f}")


class _NoStream:
    """The benchmark feeds batches to train_step directly; the trainer only needs d_in."""

    def __init__(self, d_in, batch_size):
        self.d_in, self.batch_size = d_in, batch_size

    def __iter__(self):
        return iter(())

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def describe(self):
        return {"source": "benchmark"}


if __name__ == "__main__":
    main()
