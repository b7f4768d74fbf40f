"""The sweep behind saekit's budget-aware default learning rate (issue #16).

Trains TopK (and, with --archs, other architectures at L0 ≈ k) on cached activations over a
grid of widths, step budgets and learning rates, with every other setting at saekit's default,
and records held-out FVU, L0 and the fraction of latents that never fire on the held-out split.
Resumable: one JSON line per run in --out; a rerun skips the runs already there.

    python benchmarks/lr_sweep.py run --cache /work/bench/mainjob/activations \\
        --expansions 4,8 --steps 300,600,1500 --lrs 2.5e-4,5e-4,1e-3,2e-3,4e-3
    python benchmarks/lr_sweep.py fit        # best lr per cell, the fitted rule, the table

`fit` takes, per (data, architecture, width, budget, seed), the learning rate with the lowest
held-out FVU among those leaving at most --max-dead of the latents dead (the optimum of a
parabola through the best grid point and its two neighbours in log lr, when both exist), and
fits log lr* = log c − ½·log(n / 2^14) + b·log(steps / 1000) by least squares.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from architectures import RESULTS, append, done_keys, l0_options
from libraries import evaluate, load_activations

import saekit
from saekit.data.stream import TensorStream
from saekit.training.trainer import TrainConfig, Trainer

OUT = RESULTS / "lr_sweep.jsonl"


def previous_rule(n_latents: int) -> float:
    """saekit's default before this sweep: fitted to long GPU runs, blind to the budget."""
    return 2e-4 / math.sqrt(n_latents / 2**14)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    done = done_keys(args.out)
    for spec in args.cache:
        acts = load_activations(spec)
        for arch in args.archs:
            for seed in range(args.seeds):
                for expansion in args.expansions:
                    n_latents = expansion * acts.d_in
                    for steps in args.steps:
                        for lr in args.lrs:
                            key = f"{acts.name}|{arch}|{n_latents}|{steps}|{lr:g}|{seed}"
                            if args.train or args.sae:
                                key += "|" + _label({"train": {**args.train, **args.sae}})
                            if key in done:
                                continue
                            row = train_one(acts, arch, n_latents, steps, lr, seed, args)
                            append(args.out, {"key": key, **row})
                            print(key, f"fvu {row['fvu']:.4f} dead {row['frac_dead']:.3f}",
                                  f"{row['seconds']:.0f}s", file=sys.stderr, flush=True)  # fmt: skip


def train_one(acts, arch: str, n_latents: int, steps: int, lr: float, seed: int, args) -> dict:
    options = {**l0_options(arch, args.k)[0], **args.sae}
    sae = saekit.create(arch, d_in=acts.d_in, n_latents=n_latents, seed=seed, **options)
    cfg = TrainConfig(steps=steps, lr=lr, progress_bar=False, **args.train)
    trainer = Trainer({arch: sae}, TensorStream(acts.train, args.batch, seed=seed), cfg)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    return dict(
        data=acts.name, hookpoint=acts.hookpoint, d_in=acts.d_in, arch=arch, options=options,
        n_latents=n_latents, k=args.k, batch=args.batch, steps=steps, lr=lr, seed=seed,
        train={**args.train, **args.sae}, seconds=seconds, **evaluate(trainer.export(trainer.members[0]), acts.held_out),
    )  # fmt: skip


def best_lr(rows: list[dict], max_dead: float) -> tuple[float, dict] | None:
    """The FVU-optimal lr among runs with at most max_dead dead latents, refined by a parabola
    in log lr through the best admissible run and its grid neighbours; and the best run."""
    rows = sorted(rows, key=lambda r: r["lr"])
    ok = [r for r in rows if r["frac_dead"] <= max_dead]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["fvu"])
    i = rows.index(best)
    if 0 < i < len(rows) - 1 and all(r["frac_dead"] <= max_dead for r in rows[i - 1 : i + 2]):
        (x0, y0), (x1, y1), (x2, y2) = ((math.log(r["lr"]), r["fvu"]) for r in rows[i - 1 : i + 2])
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
        if a > 0:  # a minimum: keep it inside the bracket
            return math.exp(min(max(-b / (2 * a), x0), x2)), best
    return best["lr"], best


def fit_rule(cells: list[tuple[int, int, float]]) -> tuple[float, float]:
    """Least squares of log lr* − (−1/2)·log(n / 2^14) on [1, log(steps / 1000)]: (c, b) of
    lr* = c · (n/2^14)^(-1/2) · (steps/1000)^b. The width exponent stays the previous rule's
    (widths and data sets are confounded here); the widths' residuals test it."""
    ys = torch.tensor(
        [math.log(lr * math.sqrt(n / 2**14)) for n, _, lr in cells], dtype=torch.float64
    )
    logs = torch.tensor([math.log(s / 1000) for _, s, _ in cells], dtype=torch.float64)
    if len({s for _, s, _ in cells}) < 2:  # one budget: no budget exponent to fit
        return math.exp(float(ys.mean())), 0.0
    X = torch.stack([torch.ones_like(ys), logs], 1)
    c, b = torch.linalg.lstsq(X, ys[:, None]).solution[:, 0].tolist()
    return math.exp(c), b


def _label(row: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(row.get("train", {}).items()))


def _override(text: str) -> tuple[str, object]:
    """NAME=VALUE for a TrainConfig field, the value parsed as JSON when it parses."""
    name, _, value = text.partition("=")
    try:
        return name.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return name.replace("-", "_"), value


def fit(args) -> None:
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        cell = (r["data"], r["arch"], r["n_latents"], r["steps"], r["seed"], _label(r))
        groups.setdefault(cell, []).append(r)
    print(
        f"Best learning rate per cell (at most {args.max_dead:.0%} dead latents on the held-out split)\n"
    )
    print("| data | arch | latents | steps | seed | training overrides | lr* | best grid lr: FVU, L0, dead | "
          "previous default lr | its FVU, dead |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|---:|---|---:|---|")
    by_arch: dict[str, list[tuple[int, int, float]]] = {}
    for (data, arch, n, steps, seed, label), cell in sorted(groups.items()):
        found = best_lr(cell, args.max_dead)
        if found is None:
            least = min(cell, key=lambda r: r["frac_dead"])
            print(f"| {data} | {arch} | {n:,} | {steps:,} | {seed} | {label or '–'} | none | "
                  f"every lr kills > {args.max_dead:.0%}; least: {least['lr']:.1e}: "
                  f"{least['fvu']:.4f}, {least['frac_dead']:.1%} dead | | |")  # fmt: skip
            continue
        lr_star, best = found
        by_arch.setdefault(f"{arch} {label}".strip(), []).append((n, steps, lr_star))
        default = previous_rule(n)
        near = min(cell, key=lambda r: abs(math.log(r["lr"] / default)))
        print(f"| {data} | {arch} | {n:,} | {steps:,} | {seed} | {label or '–'} | {lr_star:.2e} | "
              f"{best['lr']:.1e}: {best['fvu']:.4f}, L0 {best['l0']:.0f}, {best['frac_dead']:.1%} | {default:.1e} | "
              f"{near['fvu']:.4f}, {near['frac_dead']:.1%} (at {near['lr']:.1e}) |")  # fmt: skip
    print()
    for arch, cells in by_arch.items():
        c, b = fit_rule(cells)
        resid = [math.log(lr / (c * (n / 2**14) ** -0.5 * (s / 1000) ** b)) for n, s, lr in cells]
        print(f"{arch}: lr* = {c:.2e} · (n/2^14)^-0.5 · (steps/1000)^{b:.2f}  ({len(cells)} cells; "
              f"residual sd {statistics.pstdev(resid):.2f} in log lr, a factor "
              f"{math.exp(statistics.pstdev(resid)):.2f}); residual by width: " + ", ".join(
                  f"{n:,}: {statistics.mean(r for (w, _, _), r in zip(cells, resid) if w == n):+.2f}"
                  for n in sorted({n for n, _, _ in cells})))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cache", action="append", required=True, help="DIR[@HOOKPOINT], repeatable")
    r.add_argument("--archs", type=lambda s: s.split(","), default=["topk"])
    r.add_argument("--expansions", type=lambda s: [int(v) for v in s.split(",")], default=[4, 8])
    r.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")],
                   default=[300, 600, 1500])  # fmt: skip
    r.add_argument("--lrs", type=lambda s: [float(v) for v in s.split(",")],
                   default=[2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3])  # fmt: skip
    r.add_argument("--seeds", type=int, default=1)
    r.add_argument("--k", type=int, default=32)
    r.add_argument("--batch", type=int, default=1024)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--sae", type=_override, action="append", default=[], metavar="NAME=VALUE",
                   help="an architecture option for every run (repeatable): aux_coeff=0.25")  # fmt: skip
    r.add_argument("--train", type=_override, action="append", default=[], metavar="NAME=VALUE",
                   help="a TrainConfig field for every run (repeatable): dead_window_tokens=100000")  # fmt: skip
    f = sub.add_parser("fit")
    f.add_argument("--max-dead", type=float, default=0.01)
    for sp in (r, f):
        sp.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.command == "run":
        args.train, args.sae = dict(args.train), dict(args.sae)
    run(args) if args.command == "run" else fit(args)


if __name__ == "__main__":
    main()
