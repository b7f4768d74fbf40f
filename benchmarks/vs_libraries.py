"""TopK training speed against sparsify and SAELens, each with its own training loop and
defaults (benchmarks/libraries.py says which), on the same rows with the same shapes, k,
batch and steps (#15 item 2). For each shape it prints tokens/s and held-out FVU per library,
saekit's speed ratio to each, and each trainer's fraction of the machine's encoder-matmul
ceiling, measured in the same run just before that trainer.

Ceiling convention: one plain fp32 matmul of the encoder's shape, [batch, d_in] x
[d_in, n_latents], at 2·d_in·n_latents flops per token (the forward encoder product alone:
no backward, no decoder, no selection). ceiling tokens/s = batch / (median time of that
matmul); a trainer's fraction = its tokens/s / ceiling tokens/s.

    python benchmarks/vs_libraries.py --steps 200 --out benchmarks/results/vs_libraries.jsonl
    python benchmarks/vs_libraries.py table --out benchmarks/results/vs_libraries.jsonl

Defaults: Gaussian rows (--data gaussian), shapes d_in 256 / 4,096 latents and d_in 576 /
4,608 latents, k 32, batch 1,024, one torch thread. --data DIR trains on a saekit cache's
rows instead (shapes whose d_in differs from the cache's are skipped). Resumable: one JSON
line per (shape, library) in --out; a rerun skips those already there. At 200 steps it
takes about 10 minutes on one core (0.2-0.8 s per step, SAELens the slowest).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from architectures import append, done_keys
from libraries import LIBRARIES, Budget, evaluate, installed, load_activations, train


def matmul_ceiling(d_in: int, n_latents: int, batch: int, reps: int = 20) -> float:
    """Tokens/s of the bare encoder matmul (2·d_in·n_latents flops per token), median time."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(batch, d_in, generator=gen), torch.randn(n_latents, d_in, generator=gen)
    out = torch.empty(batch, n_latents)
    times = []
    for i in range(reps + 3):
        start = time.perf_counter()
        torch.mm(x, w.T, out=out)
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def run(args) -> None:
    done = done_keys(args.out) if args.out else set()
    rows = []
    for shape in args.shapes:
        d_in, n_latents = (int(v) for v in shape.split("x"))
        acts = load_activations(f"gaussian:{d_in}" if args.data == "gaussian" else args.data)
        if acts.d_in != d_in:
            print(f"{shape}: skipped, {args.data} has d_in {acts.d_in}", file=sys.stderr)
            continue
        budget = Budget(n_latents, args.k, args.batch, args.steps, args.seed)
        for library in args.libraries:
            key = f"{args.data}|{shape}|k{args.k}|b{args.batch}|s{args.steps}|t{args.threads}|{library}"
            if key in done:
                continue
            print(f"{key}: training", file=sys.stderr, flush=True)
            ceiling = matmul_ceiling(d_in, n_latents, args.batch)
            t = train(library, acts.train, budget)
            row = dict(
                key=key, data=args.data, shape=shape, d_in=d_in, n_latents=n_latents, k=args.k,
                batch=args.batch, steps=args.steps, threads=args.threads, library=library,
                tokens_per_s=t.tokens_per_s, seconds=t.seconds, **evaluate(t.sae, acts.held_out),
                dead_own=t.dead_own, dead_rule=t.dead_rule, ceiling_tokens_per_s=ceiling,
                ceiling_gflops=2 * d_in * n_latents * ceiling / 1e9,
                frac_of_ceiling=t.tokens_per_s / ceiling, hyper=t.hyper,
                torch=torch.__version__,
            )  # fmt: skip
            rows.append(row)
            if args.out:
                append(args.out, row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    table(args, rows)


def table(args, rows: list[dict] | None = None) -> None:
    if args.out and args.out.exists():
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    rows = rows or []
    print("| data | d_in × latents | trainer | tokens/s | held-out FVU | saekit speed ÷ this "
          "| % of encoder-matmul ceiling | ceiling tokens/s (GFLOP/s) |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    by_shape: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_shape.setdefault((r["data"], r["shape"], r["k"], r["batch"], r["steps"],
                             r["threads"]), {})[r["library"]] = r  # fmt: skip
    for (data, shape, *_), libs in by_shape.items():
        ours = libs.get("saekit")
        for library in LIBRARIES:
            r = libs.get(library)
            if r is None:
                continue
            ratio = f"{ours['tokens_per_s'] / r['tokens_per_s']:.2f}" if ours else "–"
            print(f"| {data} | {shape.replace('x', ' × ')} | {library} | "
                  f"{r['tokens_per_s']:,.0f} | {r['fvu']:.3f} | {ratio} | "
                  f"{100 * r['frac_of_ceiling']:.0f}% | {r['ceiling_tokens_per_s']:,.0f} "
                  f"({r['ceiling_gflops']:.0f}) |")  # fmt: skip
    if rows:
        r = rows[0]
        print(f"\nk {r['k']}, batch {r['batch']}, {r['steps']} steps, {r['threads']} thread(s); "
              "ceiling: [batch, d_in] x [d_in, latents] fp32 matmul, 2·d_in·latents flops "
              "per token, measured just before each trainer.")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", choices=["run", "table"], default="run")
    p.add_argument("--data", default="gaussian", help="gaussian, or a saekit cache dir")
    p.add_argument("--shapes", nargs="+", default=["256x4096", "576x4608"],
                   help="d_in x latents")  # fmt: skip
    p.add_argument("--libraries", nargs="+", choices=LIBRARIES,
                   default=[lib for lib in LIBRARIES if installed(lib)],
                   help="default: those installed (pip install -e '.[interop-test]')")  # fmt: skip
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run(args) if args.mode == "run" else table(args)


if __name__ == "__main__":
    main()
