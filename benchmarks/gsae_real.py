"""g-SAE vs TopK (and top-AFA) on the default model's activations, CPU-sized.

    python benchmarks/gsae_collect.py --out /tmp/saekit_gsae/data.pt --contexts 192
    python benchmarks/gsae_real.py --data /tmp/saekit_gsae/data.pt --out /tmp/saekit_gsae/run

Trains, on the collected (x, grad) pairs and in one Trainer (same batches for all):
TopK at k in --ks; g-SAE at the same ks with β = --beta; g-SAE at k = --sweep-k for every β
in --betas; top-AFA for every λ in --afa-coeffs. Saves the SAEs (raw units) under
<out>/saes, then evaluates them as `saekit eval -g core,spliced,afa,steering` does: core and
afa on the last 4,096 collected tokens (held out from training), spliced CE/KL (g-SAE in
both inference modes, the gradient one label-informed) and the steering effect on held-out
contexts. Writes <out>/report/results.json (every eval document) and report.html (tables'
figures) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saekit.data.stream import TensorStream
from saekit.formats import native
from saekit.sae import create
from saekit.training.trainer import TrainConfig, Trainer

HELD_OUT = 4096


def build_saes(args, d_in: int) -> dict:
    common = dict(d_in=d_in, n_latents=args.n_latents, seed=args.seed)
    saes = {}
    for k in args.ks:
        saes[f"topk-k{k}"] = create("topk", k=k, **common)
        saes[f"gsae-k{k}-b{args.beta:g}"] = create("gsae", k=k, beta=args.beta, **common)
    for beta in args.betas:
        name = f"gsae-k{args.sweep_k}-b{beta:g}"
        saes.setdefault(name, create("gsae", k=args.sweep_k, beta=beta, **common))
    for lam in args.afa_coeffs:
        saes[f"topafa-l{lam:g}"] = create("topafa", afa_coeff=lam, k_max=args.k_max, **common)
    return saes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-latents", type=int, default=2304)
    p.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64])
    p.add_argument("--beta", type=float, default=10.0)
    p.add_argument("--sweep-k", type=int, default=32)
    p.add_argument("--betas", type=lambda s: [float(v) for v in s.split(",")],
                   default=[1.0, 3.0, 30.0, 100.0])  # fmt: skip
    p.add_argument("--afa-coeffs", type=lambda s: [float(v) for v in s.split(",") if v],
                   default=[1 / 32])  # fmt: skip
    p.add_argument("--k-max", type=int, default=512)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-contexts", type=int, default=12)
    p.add_argument("--steer-latents", type=int, default=24)
    p.add_argument("--steer-contexts", type=int, default=12)
    p.add_argument("--skip-train", action="store_true", help="evaluate the SAEs already in --out")
    args = p.parse_args()
    torch.set_num_threads(1)

    data = torch.load(args.data)
    describe = data["describe"]
    hookpoint = describe["hookpoint"]
    sae_dir = args.out / "saes"
    if not args.skip_train:
        # The last HELD_OUT pairs are held out for the evaluation below.
        stream = TensorStream(data["x"][:-HELD_OUT], args.batch_size, seed=args.seed,
                              extras={"grad": data["grad"][:-HELD_OUT]}, description=describe)  # fmt: skip
        saes = build_saes(args, stream.d_in)
        cfg = TrainConfig(steps=args.steps, progress_bar=False, log_every=50,
                          dead_window_tokens=len(data["x"]))  # fmt: skip
        start = time.perf_counter()
        trainer = Trainer(saes, stream, cfg, args.out)
        last = trainer.fit()
        print(f"trained {len(saes)} SAEs in {time.perf_counter() - start:.0f} s")
        print(json.dumps({k: {m: round(v, 4) for m, v in r.items()} for k, r in last.items()}))
    names = sorted(p.name for p in sae_dir.iterdir())

    from saekit.evaluation import tables
    from saekit.evaluation.comparison import write_report
    from saekit.evaluation.evaluate import EvalSettings, ModelSource, evaluate_sae

    saes = {n: native.load(sae_dir / n) for n in names}
    source = ModelSource("default", hookpoint)
    settings = EvalSettings(
        groups=("core", "spliced", "afa", "steering"), n_tokens=HELD_OUT, sample_tokens=HELD_OUT,
        spliced_contexts=args.eval_contexts, steer_latents=args.steer_latents,
        steer_contexts=args.steer_contexts, kappa=0.5, seed=args.seed,
    )  # fmt: skip
    shared: dict = {}
    start = time.perf_counter()
    docs = {}
    for n, sae in saes.items():
        held_out = TensorStream(data["x"][-HELD_OUT:], 1024, shuffle=False, loop=False)
        docs[n] = evaluate_sae(sae, held_out, settings, source, shared, n)
    print(f"evaluated {len(docs)} SAEs in {time.perf_counter() - start:.0f} s")
    (args.out / "report").mkdir(parents=True, exist_ok=True)
    (args.out / "report" / "results.json").write_text(json.dumps(docs, indent=1) + "\n")
    write_report(docs, args.out / "report" / "report.html", "g-SAE vs TopK")
    for title, table in tables.eval_tables(docs):
        print(f"\n{title}:\n{tables.markdown(table)}")


if __name__ == "__main__":
    main()
