"""g-SAE vs TopK (and top-AFA) on the default model's activations, CPU-sized.

    python benchmarks/gsae_collect.py --out /tmp/saekit_gsae/data.pt --contexts 192
    python benchmarks/gsae_real.py --data /tmp/saekit_gsae/data.pt --out /tmp/saekit_gsae/run

Trains, on the collected (x, grad) pairs and in one Trainer (same batches for all):
TopK at k in --ks; g-SAE at the same ks with β = --beta; g-SAE at k = --sweep-k for every β
in --betas; top-AFA for every λ in --afa-coeffs. Saves the SAEs (raw units) under
<out>/saes, then runs the `saekit gsae` evaluation on held-out contexts (FVU, L0, dead %,
spliced CE/KL scores, steering effect) and writes <out>/report/{results.json,table.md,
gsae.png} plus the AFA diagnostic of every SAE (<out>/afa/<name>/{afa.json,zf.png}).
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
        # The last 4,096 pairs are held out for the AFA diagnostic below.
        stream = TensorStream(data["x"][:-4096], args.batch_size, seed=args.seed,
                              extras={"grad": data["grad"][:-4096]}, description=describe)  # fmt: skip
        saes = build_saes(args, stream.d_in)
        cfg = TrainConfig(steps=args.steps, progress_bar=False, log_every=50,
                          dead_window_tokens=len(data["x"]))  # fmt: skip
        start = time.perf_counter()
        trainer = Trainer(saes, stream, cfg, args.out)
        last = trainer.fit()
        print(f"trained {len(saes)} SAEs in {time.perf_counter() - start:.0f} s")
        print(json.dumps({k: {m: round(v, 4) for m, v in r.items()} for k, r in last.items()}))
    names = sorted(p.name for p in sae_dir.iterdir())

    from saekit.cli.gsae import evaluate, table, write_report
    from saekit.data.corpora import tokenize_corpus
    from saekit.data.models import load_model
    from saekit.evaluation.afa import afa_diagnostic, zf_plot

    saes = {n: native.load(sae_dir / n) for n in names}
    model, tok = load_model("default")
    n_ctx = args.eval_contexts + 8
    ctx = tokenize_corpus(tok, "default", n_ctx, 128, "heldout", args.seed)
    start = time.perf_counter()
    results = evaluate(saes, model, ctx, hookpoint, args.eval_contexts, args.steer_latents,
                       args.steer_contexts, kappa=0.5, seed=args.seed)  # fmt: skip
    results["_meta"] = {"hookpoint": hookpoint, "eval_contexts": args.eval_contexts,
                        "train_tokens": len(data["x"]), "steps": args.steps,
                        "batch_size": args.batch_size, "n_latents": args.n_latents,
                        "eval_seconds": time.perf_counter() - start}  # fmt: skip
    write_report(results, args.out / "report")
    print(table(results))

    # AFA diagnostic of every SAE on the 4,096 held-out pairs.
    x, g = data["x"][-4096:], data["grad"][-4096:]
    afa_rows = {}
    for n, sae in saes.items():
        stream = TensorStream(x, 1024, shuffle=False, loop=False, extras={"grad": g})
        q, summary = afa_diagnostic(sae, stream, 4096)
        zf_plot(q, args.out / "afa" / n / "zf.png", title=n)
        (args.out / "afa" / n).mkdir(parents=True, exist_ok=True)
        (args.out / "afa" / n / "afa.json").write_text(json.dumps(summary, indent=2))
        afa_rows[n] = summary
    print("\n| SAE | median ε_LBO (h−1) | median ε_LBO (ℓ1) | over % | under % | mean h |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, s in afa_rows.items():
        print(f"| {n} | {s['median_eps_lbo_h']:.4f} | {s['median_eps_lbo_l1']:.4f} | "
              f"{s['frac_over_activated']:.1%} | {s['frac_under_activated']:.1%} | "
              f"{s['mean_n_atoms']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
