"""Our trainer's TopK step vs a plain hand-written PyTorch TopK loop, same data, same run;
and where our step's time goes.

Both do: encode, TopK, decode, MSE, backward, Adam, renormalise atoms. Ours also does AuxK,
dead-latent counters, gradient clipping, radial-gradient removal and the LR schedule.
Rounds alternate ours/plain so that drifting machine load hits both; the ratio of medians
is printed (ours / plain; < 1 means ours is faster).

--breakdown profiles our step instead: the time of each named phase of the step
(saekit.profiling.phase; the backward split by autograd node), against the encoder-matmul
ceiling, a plain [batch, d_in] x [d_in, n_latents] matmul timed in the same run.

    python benchmarks/train_step.py [--d-in 256 --n-latents 4096 --k 32 --batch 1024]
    python benchmarks/train_step.py --breakdown
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
    p.add_argument("--breakdown", action="store_true", help="profile our step by phase")
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
    if args.breakdown:
        print_breakdown(trainer, data, args)
        return
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


# Autograd nodes of the backward, by the part of the SAE they belong to.
BACKWARD_NODES = {
    "encoder backward": ("_SelectedPreActivationsBackward",),
    "decoder backward": ("_SparseDecodeBackward", "EmbeddingBagBackward"),
}


def print_breakdown(trainer, data, args) -> None:
    """Phase times of our step under torch.profiler, medians over rounds, with the plain
    matmul and the unprofiled step time from the same rounds."""
    from saekit.profiling import PREFIX

    n_batches = data.shape[0]
    x, W = data[0], torch.randn(args.n_latents, args.d_in)

    def steps(n):
        for i in range(n):
            trainer.train_step(Batch(data[i % n_batches]))

    def matmul(n):
        for _ in range(n):
            x @ W.T

    steps(2)
    rows: dict[str, list[float]] = {}
    walls, ceilings = [], []
    for _ in range(args.rounds):
        for fn, out in ((steps, walls), (matmul, ceilings)):
            t = time.perf_counter()
            fn(args.steps)
            out.append(1e3 * (time.perf_counter() - t) / args.steps)
        with torch.profiler.profile() as prof:
            steps(args.steps)
        totals = {e.key: e.cpu_time_total / 1e3 / args.steps for e in prof.key_averages()}
        for key, ms in totals.items():
            if key.startswith(PREFIX):
                rows.setdefault(key[len(PREFIX) :], []).append(ms)
        for part, nodes in BACKWARD_NODES.items():
            ms = sum(v for k, v in totals.items() if k.startswith("autograd::engine::evaluate")
                     and any(node in k for node in nodes))  # fmt: skip
            rows.setdefault(part, []).append(ms)
    ms = {name: statistics.median(v) for name, v in rows.items()}
    # Nested phases: the matmul runs inside the selection, the two parts inside the backward.
    ms["selection"] -= ms.get("encoder matmul", 0.0)
    ms["backward"] -= ms["encoder backward"] + ms["decoder backward"]
    ms["rest of the backward"] = ms.pop("backward")
    wall, ceiling = statistics.median(walls), statistics.median(ceilings)
    print(
        f"TopK step breakdown, d_in={args.d_in} n_latents={args.n_latents} k={args.k} "
        f"batch={args.batch} threads={args.threads} (medians of {args.rounds} rounds)"
    )
    print("| phase | ms/step | share of the step |\n|---|---:|---:|")
    for name, v in sorted(ms.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {v:.1f} | {v / wall:.0%} |")
    print(f"| other (Python, loss sum, logging checks) | {wall - sum(ms.values()):.1f} | "
          f"{1 - sum(ms.values()) / wall:.0%} |")  # fmt: skip
    print(
        f"| **whole step (unprofiled)** | **{wall:.1f}** | {args.batch / wall * 1e3:,.0f} tok/s |"
    )
    print(
        f"plain matmul {ceiling:.1f} ms ({args.batch / ceiling * 1e3:,.0f} tok/s): "
        f"the step runs at {ceiling / wall:.0%} of the encoder-matmul ceiling"
    )


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
