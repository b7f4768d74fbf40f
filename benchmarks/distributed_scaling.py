"""Data-parallel scaling on this machine's CPU processes: TopK training tokens/s at 1 and N
ranks (gloo), the same global batch, and the share of each step spent in the gradient
all-reduce, measured in the same run.

    python benchmarks/distributed_scaling.py [--ranks 2] [--d-in 576 --n-latents 4608]

Each rank uses one thread. The parent launches `torch.distributed.run` itself; a rank runs
this file with --worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch


def worker(args) -> None:
    import saekit
    from saekit.data.stream import TensorStream
    from saekit.training.distributed import RankSlice, from_environment
    from saekit.training.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    group = from_environment("data", timeout_s=120)
    world = group.world_size if group else 1
    local = args.global_batch // world
    x = torch.randn(args.global_batch * 4, args.d_in, generator=torch.Generator().manual_seed(0))
    stream = TensorStream(x, batch_size=local)
    if group is not None:
        stream = RankSlice(stream, group.rank, world)
    sae = saekit.create("topk", d_in=args.d_in, n_latents=args.n_latents, k=32)
    cfg = TrainConfig(steps=args.steps + 3, progress_bar=False, warmup_steps=1)
    trainer = Trainer({"topk": sae}, stream, cfg, group=group)
    reduce_s = 0.0
    if group is not None:  # time the all-reduce inside the real step
        inner = group.average_gradients

        def timed(params):
            nonlocal reduce_s
            t = time.perf_counter()
            inner(params)
            reduce_s += time.perf_counter() - t

        group.average_gradients = timed
    trainer._initialise()
    for _ in range(3):
        trainer.train_step(trainer._next_batch())
    reduce_s = 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(trainer._next_batch())
    seconds = time.perf_counter() - start
    if group is None or group.is_main:
        row = {"ranks": world, "tokens_per_s": args.steps * args.global_batch / seconds,
               "allreduce_share": reduce_s / seconds}  # fmt: skip
        print("RESULT " + json.dumps(row), flush=True)
    if group is not None:
        group.close()


def launch(ranks: int, argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={ranks}", __file__, "--worker", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--n-latents", type=int, default=4608)
    p.add_argument("--global-batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    argv = [f"--d-in={args.d_in}", f"--n-latents={args.n_latents}",
            f"--global-batch={args.global_batch}", f"--steps={args.steps}"]  # fmt: skip
    one, many = launch(1, argv), launch(args.ranks, argv)
    print(f"1 rank:  {one['tokens_per_s']:,.0f} tokens/s")
    print(
        f"{args.ranks} ranks: {many['tokens_per_s']:,.0f} tokens/s "
        f"({many['tokens_per_s'] / one['tokens_per_s']:.2f}x), all-reduce "
        f"{100 * many['allreduce_share']:.1f}% of the step time"
    )


if __name__ == "__main__":
    main()
