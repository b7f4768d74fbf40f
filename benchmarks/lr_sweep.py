"""The sweep behind saekit's budget-aware default learning rate (issue #16).

Trains TopK (and, with --archs, other architectures at L0 ≈ k) on cached activations over a
grid of widths, step budgets and learning rates, with every other setting at saekit's default,
and records held-out FVU, L0 and the fraction of latents that never fire on the held-out split.
Resumable: one JSON line per run in --out; a rerun skips the runs already there.

    python benchmarks/lr_sweep.py run --cache /work/bench/mainjob/activations \\
        --expansions 4,8 --steps 300,600,1500 --lrs 2.5e-4,5e-4,1e-3,2e-3,4e-3
    python benchmarks/lr_sweep.py fit        # best lr per cell, the fitted rule, the table
    python benchmarks/lr_sweep.py range-test --cache ...   # --find-lr's suggestion vs lr*

`fit` takes, per (data, architecture, width, budget, seed), the learning rate with the lowest
held-out FVU among those leaving at most --max-dead of the latents dead (the optimum of a
parabola through the best grid point and its two neighbours in log lr, when both exist), and
fits log lr* = log c − ½·log(n / 2^14) + b·log(steps / 1000) by least squares (and, given 3
widths, again with the width exponent free). Where the L0
is learned (ReLU, Gated: several --sae l1_coeff=…; JumpReLU steering to k), lr* is the rate
with the lowest FVU at L0 = k instead, interpolated between sparsity coefficients.
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
from saekit.training.lr_finder import find_lr
from saekit.training.trainer import TrainConfig, Trainer

OUT = RESULTS / "lr_sweep.jsonl"
RANGE_OUT = RESULTS / "lr_range_test.jsonl"


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


def range_test(args) -> None:
    """`saekit train --find-lr`'s suggestion for each (data, arch, width), beside the sweep's
    lr* for the same cell at every budget in --out: how far the cheap test is from the sweep."""
    torch.set_num_threads(args.threads)
    done = done_keys(args.range_out)
    for spec in args.cache:
        acts = load_activations(spec)
        for arch in args.archs:
            for expansion in args.expansions:
                n_latents = expansion * acts.d_in
                key = f"{acts.name}|{arch}|{n_latents}|{args.range_steps}"
                if key in done:
                    continue
                options = l0_options(arch, args.k)[0]
                sae = saekit.create(arch, d_in=acts.d_in, n_latents=n_latents, seed=0, **options)
                stream = TensorStream(acts.train, args.batch, seed=0)
                start = time.perf_counter()
                test = find_lr(sae, stream, steps=args.range_steps)
                row = dict(key=key, data=acts.name, arch=arch, n_latents=n_latents,
                           steps=args.range_steps, suggested=test.suggested,
                           seconds=time.perf_counter() - start)  # fmt: skip
                append(args.range_out, row)
                print(test.summary(), file=sys.stderr, flush=True)
    sweep = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    print("| data | arch | latents | range test: suggested lr (s) | sweep lr* by budget (seed 0) |")
    print("|---|---|---:|---|---|")
    for t in (json.loads(line) for line in args.range_out.read_text().splitlines() if line):
        stars = []
        for steps in sorted({r["steps"] for r in sweep}):
            cell = [r for r in sweep if (r["data"], r["arch"], r["n_latents"], r["steps"], r["seed"])
                    == (t["data"], t["arch"], t["n_latents"], steps, 0) and not r.get("train")]  # fmt: skip
            found = best_lr(cell, args.max_dead) if cell else None
            if found:
                stars.append(f"{steps:,} steps: {found[0]:.1e} ({found[0] / t['suggested']:.1f}x)")
        print(f"| {t['data']} | {t['arch']} | {t['n_latents']:,} | {t['suggested']:.1e} "
              f"({t['seconds']:.0f} s) | {'; '.join(stars) or '–'} |")  # fmt: skip


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


def fit_free(cells: list[tuple[int, int, float]]) -> tuple[float, float, float] | None:
    """Least squares of log lr* on [1, log(n / 2^14), log(steps / 1000)]: (c, a, b) of
    lr* = c · (n/2^14)^a · (steps/1000)^b, the width exponent free (needs 3 widths)."""
    if len({n for n, _, _ in cells}) < 3 or len({s for _, s, _ in cells}) < 2:
        return None
    ys = torch.tensor([math.log(lr) for _, _, lr in cells], dtype=torch.float64)
    X = torch.tensor(
        [[1.0, math.log(n / 2**14), math.log(s / 1000)] for n, s, _ in cells], dtype=torch.float64
    )
    c, a, b = torch.linalg.lstsq(X, ys[:, None]).solution[:, 0].tolist()
    return math.exp(c), a, b


def _label(row: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(row.get("train", {}).items()))


def _override(text: str) -> tuple[str, object]:
    """NAME=VALUE for a TrainConfig field, the value parsed as JSON when it parses."""
    name, _, value = text.partition("=")
    try:
        return name.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return name.replace("-", "_"), value


def exact_l0(row: dict) -> bool:
    """Whether the run's L0 is set by construction (k or n_steps) rather than learned."""
    return "k" in row["options"] or "n_steps" in row["options"]


def fit(args) -> None:
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    matched(args, [r for r in rows if not exact_l0(r)])
    groups: dict[tuple, list[dict]] = {}
    for r in filter(exact_l0, rows):
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
        if len(cells) < 2:  # one cell is its own lr*: no rule to fit
            continue
        c, b = fit_rule(cells)
        resid = [math.log(lr / (c * (n / 2**14) ** -0.5 * (s / 1000) ** b)) for n, s, lr in cells]
        print(f"{arch}: lr* = {c:.2e} · (n/2^14)^-0.5 · (steps/1000)^{b:.2f}  ({len(cells)} cells; "
              f"residual sd {statistics.pstdev(resid):.2f} in log lr, a factor "
              f"{math.exp(statistics.pstdev(resid)):.2f}); residual by width: " + ", ".join(
                  f"{n:,}: {statistics.mean(r for (w, _, _), r in zip(cells, resid) if w == n):+.2f}"
                  for n in sorted({n for n, _, _ in cells})))  # fmt: skip
        free = fit_free(cells)
        if free:
            c, a, b = free
            resid = [math.log(lr / (c * (n / 2**14) ** a * (s / 1000) ** b)) for n, s, lr in cells]
            print(f"{arch}, width exponent free: lr* = {c:.2e} · (n/2^14)^{a:.2f} · "
                  f"(steps/1000)^{b:.2f}  (residual sd a factor "
                  f"{math.exp(statistics.pstdev(resid)):.2f})")  # fmt: skip


# The options that move a learned L0; runs that differ only in them are one learning-rate cell.
SPARSITY_KNOBS = ("l1_coeff", "sparsity_coeff")


def fvu_at_l0(rows: list[dict], target: float) -> dict | None:
    """FVU at L0 = target for runs at one learning rate and several sparsity coefficients:
    log FVU and the dead fraction linear in log L0 between the two runs that bracket the
    target. A lone run (JumpReLU steering its own L0) counts only within 15% of the target."""
    rows = sorted(rows, key=lambda r: r["l0"])
    below = [r for r in rows if r["l0"] <= target]
    above = [r for r in rows if r["l0"] > target]
    if below and above:
        a, b = below[-1], above[0]
        t = math.log(target / a["l0"]) / math.log(b["l0"] / a["l0"])
        fvu = math.exp((1 - t) * math.log(a["fvu"]) + t * math.log(b["fvu"]))
        dead = (1 - t) * a["frac_dead"] + t * b["frac_dead"]
        return dict(fvu=fvu, dead=dead, how=f"between L0 {a['l0']:.0f} and {b['l0']:.0f}")
    near = min(rows, key=lambda r: abs(math.log(r["l0"] / target)))
    if abs(math.log(near["l0"] / target)) <= math.log(1.15):
        return dict(fvu=near["fvu"], dead=near["frac_dead"], how=f"reached L0 {near['l0']:.0f}")
    return None


def matched(args, rows: list[dict]) -> None:
    """Architectures whose L0 follows the learning rate (ReLU, Gated, JumpReLU): lr* is the
    rate with the lowest FVU at L0 = k (fvu_at_l0), not the lowest FVU."""
    if not rows:
        return
    cells: dict[tuple, dict[float, list[dict]]] = {}
    for r in rows:
        rest = ",".join(p for p in _label(r).split(",") if p and not p.startswith(SPARSITY_KNOBS))
        cell = (r["data"], r["arch"], r["n_latents"], r["steps"], r["seed"], rest)
        cells.setdefault(cell, {}).setdefault(r["lr"], []).append(r)
    print(
        f"Architectures with a learned L0: held-out FVU at L0 = {rows[0]['k']} per learning rate\n"
    )
    print(
        "| data | arch | latents | steps | seed | overrides | lr: FVU at the target L0, dead | lr* |"
    )
    print("|---|---|---:|---:|---:|---|---|---:|")
    for (data, arch, n, steps, seed, rest), by_lr in sorted(cells.items()):
        found = {lr: fvu_at_l0(rs, rs[0]["k"]) for lr, rs in sorted(by_lr.items())}
        parts = [
            f"{lr:.1e}: {m['fvu']:.4f}, {m['dead']:.1%} ({m['how']})" if m else
            f"{lr:.1e}: L0 {min(r['l0'] for r in by_lr[lr]):.0f}-{max(r['l0'] for r in by_lr[lr]):.0f}, not matched"
            for lr, m in found.items()
        ]  # fmt: skip
        ok = {lr: m for lr, m in found.items() if m and m["dead"] <= args.max_dead}
        star = f"{min(ok, key=lambda lr: ok[lr]['fvu']):.1e}" if ok else "none"
        print(
            f"| {data} | {arch} | {n:,} | {steps:,} | {seed} | {rest or '–'} | {'; '.join(parts)} | {star} |"
        )
    print()


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
    r.add_argument("--sae", type=_override, action="append", default=[], metavar="NAME=VALUE",
                   help="an architecture option for every run (repeatable): aux_coeff=0.25")  # fmt: skip
    r.add_argument("--train", type=_override, action="append", default=[], metavar="NAME=VALUE",
                   help="a TrainConfig field for every run (repeatable): dead_window_tokens=100000")  # fmt: skip
    f = sub.add_parser("fit")
    t = sub.add_parser("range-test", help="saekit train --find-lr's suggestion per cell vs lr*")
    t.add_argument("--cache", action="append", required=True, help="DIR[@HOOKPOINT], repeatable")
    t.add_argument("--archs", type=lambda s: s.split(","), default=["topk"])
    t.add_argument("--expansions", type=lambda s: [int(v) for v in s.split(",")], default=[4, 8])
    t.add_argument("--range-steps", type=int, default=100)
    t.add_argument("--range-out", type=Path, default=RANGE_OUT)
    for sp in (r, t):
        sp.add_argument("--k", type=int, default=32)
        sp.add_argument("--batch", type=int, default=1024)
        sp.add_argument("--threads", type=int, default=1)
    for sp in (r, f, t):
        sp.add_argument("--out", type=Path, default=OUT)
        sp.add_argument("--max-dead", type=float, default=0.01)
    args = p.parse_args()
    if args.command == "run":
        args.train, args.sae = dict(args.train), dict(args.sae)
    {"run": run, "fit": fit, "range-test": range_test}[args.command](args)


if __name__ == "__main__":
    main()
