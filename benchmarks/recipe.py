"""Reconstruction per training token, each trainer with its own defaults (#16 "How it is
shown"): saekit's defaults, sparsify's, SAELens's (each library's own loop; see
benchmarks/libraries.py for what their defaults are), and saekit with each optimiser, at
equal tokens on the same cached activations. One JSON line per (trainer, steps, seed) in
--out; a rerun skips those already there.

    python benchmarks/recipe.py run --cache /work/bench/smollm2-l15 \\
        --out benchmarks/results/recipe.jsonl
    python benchmarks/recipe.py table --out benchmarks/results/recipe.jsonl

Defaults: 4,608 latents, k 32, batch 1,024, steps 600 and 1,500, seeds 0 and 1, one torch
thread. Columns: held-out FVU, mean L0 and dead fraction (latents never active on the cache's
whole eval split) from one saekit evaluation of every SAE; the spliced CE-loss score from
saekit.evaluation (model and hookpoint from the cache's manifest, --ce-contexts held-out
contexts of 128 tokens; 0 skips it); tokens/s of the training loop alone. The saekit row
with its default optimiser (adam) is the "saekit defaults" row.

Cost on one shared core: 20 runs (5 trainers x 2 budgets x 2 seeds) at about 0.25 (saekit
adam, signsgd-sf), 0.3 (sparsify), 0.65 (SAELens) and 1.1 (saekit muon) s/step, plus ~45 s
of CE per SAE: about 3 hours in all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from architectures import append, done_keys
from libraries import Budget, ce_score, evaluate, installed, load_activations, train

from saekit.training.optimizers import OPTIMIZERS
from saekit.training.trainer import TrainConfig

DEFAULT_OPTIMIZER = TrainConfig.optimizer
# "saekit" is saekit with every default; "saekit:<optimizer>" changes the optimiser only
# (its default one is the "saekit" row).
TRAINERS = ["saekit", "sparsify", "saelens"] + [
    f"saekit:{o}" for o in OPTIMIZERS if o != DEFAULT_OPTIMIZER
]


def run(args) -> None:
    acts = load_activations(args.cache)
    done = done_keys(args.out)
    shared: dict = {}  # CE contexts and mean activation, computed once
    for steps in args.steps:
        for seed in range(args.seeds):
            for trainer in args.trainers:
                key = (
                    f"{acts.name}|{args.n_latents}|k{args.k}|b{args.batch}|{trainer}|{steps}|{seed}"
                )
                library, _, optimizer = trainer.partition(":")
                if key in done or not installed(library):
                    continue
                print(f"{key}: training", file=sys.stderr, flush=True)
                options = {"optimizer": optimizer} if optimizer else {}
                budget = Budget(args.n_latents, args.k, args.batch, steps, seed)
                t = train(library, acts.train, budget, **options)
                row = dict(
                    key=key, data=acts.name, trainer=trainer, library=library, steps=steps,
                    seed=seed, tokens=t.tokens, n_latents=args.n_latents, k=args.k,
                    batch=args.batch, threads=args.threads, **evaluate(t.sae, acts.held_out),
                    ce_score=ce_score(t.sae, acts, args.ce_contexts, shared),
                    ce_contexts=args.ce_contexts, dead_own=t.dead_own, dead_rule=t.dead_rule,
                    tokens_per_s=t.tokens_per_s, seconds=t.seconds, hyper=t.hyper,
                )  # fmt: skip
                append(args.out, row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    table(args)


def mean_spread(values: list, spec: str = ".4f") -> str:
    """mean ± half the range over seeds (– if missing)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean, half = statistics.fmean(values), (max(values) - min(values)) / 2
    return f"{mean:{spec}} ± {half:{spec}}" if len(values) > 1 else f"{mean:{spec}}"


def table(args) -> None:
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["steps"], r["trainer"]), []).append(r)
    order = {t: i for i, t in enumerate(TRAINERS)}
    print("| trainer | steps | tokens | held-out FVU | CE score | L0 | dead % (held-out) "
          "| dead % (own counter) | tokens/s | seeds |")  # fmt: skip
    print("|---|---:|---:|---|---|---|---|---|---:|---:|")
    for (_, steps, trainer), rs in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1],
                                                                        order.get(g[0][2], 99))):  # fmt: skip
        name = f"saekit defaults ({DEFAULT_OPTIMIZER})" if trainer == "saekit" else trainer
        if trainer in ("sparsify", "saelens"):
            name += " defaults"
        dead = [100 * r["frac_dead"] for r in rs]
        own = [100 * r["dead_own"] for r in rs]
        speed = statistics.fmean(r["tokens_per_s"] for r in rs)
        print(f"| {name} | {steps:,} | {rs[0]['tokens']:,} | {mean_spread([r['fvu'] for r in rs])} "
              f"| {mean_spread([r['ce_score'] for r in rs])} "
              f"| {mean_spread([r['l0'] for r in rs], '.1f')} | {mean_spread(dead, '.2f')} "
              f"| {mean_spread(own, '.2f')} | {speed:,.0f} | {len(rs)} |")  # fmt: skip
    if rows:
        r = rows[0]
        rules = "; ".join(sorted({f"{r['library']}: {r['dead_rule']}" for r in rows}))
        print(f"\n{r['data']}: {r['n_latents']:,} latents, k {r['k']}, batch {r['batch']}, "
              f"{r['threads']} thread(s); mean ± half the range over seeds; CE score: "
              + (f"{r['ce_contexts']} held-out contexts of 128 tokens" if r["ce_contexts"]
                 else "not computed") + f". Own counters: {rules}.")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["run", "table"])
    p.add_argument("--cache", default="/work/bench/smollm2-l15", help="saekit cache DIR[@HOOK]")
    p.add_argument("--trainers", nargs="+", choices=TRAINERS,
                   default=[t for t in TRAINERS if installed(t.partition(":")[0])],
                   help="default: all whose library is installed")  # fmt: skip
    p.add_argument("--n-latents", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[600, 1500])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--ce-contexts", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run(args) if args.mode == "run" else table(args)


if __name__ == "__main__":
    main()
