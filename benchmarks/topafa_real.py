"""top-AFA vs TopK on the default model's activations: held-out FVU and mean L0.

    python benchmarks/gsae_collect.py --out /tmp/saekit_gsae/data.pt --contexts 192
    python benchmarks/topafa_real.py --data /tmp/saekit_gsae/data.pt

or on an activation cache (`saekit cache`), in the top-AFA paper's own setting (every token
standardised across its dimensions, b_dec initialised at zero, no dataset-wide scale):

    python benchmarks/topafa_real.py --data runs/bench/smollm2-l15 --setting reference

Trains TopK at every k in --ks and top-AFA for every (loss_target, λ) pair in one Trainer
(same batches), holds out the last 4,096 tokens, and reports FVU, mean/median/max L0 and the
AFA diagnostic (ε_LBO, over/under-activation) of each SAE on them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saekit.data import open_stream
from saekit.data.stream import TensorStream
from saekit.evaluation.afa import afa_quantities, summarise
from saekit.evaluation.metrics import ReconstructionMetrics
from saekit.sae import create
from saekit.training.trainer import TrainConfig, Trainer

HELD_OUT = 4096


def standardise_tokens(x: torch.Tensor) -> torch.Tensor:
    """Each token centred and scaled across its dimensions (std + 1e-5), so ||x||^2 ~ d_in."""
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)


def load_activations(path: str) -> tuple[torch.Tensor, dict]:
    """A gsae_collect.py tensor file, or every token of an activation cache (train, then held-out)."""
    if Path(path).is_dir():
        parts = []
        for split in ("train", "heldout"):
            stream = open_stream(f"cache:{path}", 8192, split=split, loop=False, verify="none")
            parts += [b.x.float() for b in stream]
        return torch.cat(parts), {"cache": path}
    data = torch.load(path)
    return data["x"], data["describe"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--n-latents", type=int, default=2304)
    p.add_argument("--ks", default="16,32,64,128")
    p.add_argument("--afa", default="input:0.03125,centred:0.03125,centred:0.0078125",
                   help="comma-separated loss_target:λ pairs")  # fmt: skip
    p.add_argument("--k-max", type=int, help="top-AFA's cap (default: the architecture's)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument(
        "--setting",
        choices=["saekit", "reference"],
        default="saekit",
        help="saekit: dataset-wide scale, b_dec at the geometric median; reference: per-token "
        "standardisation, b_dec at zero (the top-AFA paper's setting)",
    )
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(1)
    x, describe = load_activations(args.data)
    if args.setting == "reference":
        x = standardise_tokens(x)
    stream = TensorStream(x[:-HELD_OUT], args.batch_size, description=describe)
    common = dict(d_in=x.shape[1], n_latents=args.n_latents)
    saes = {f"topk-k{k}": create("topk", k=int(k), **common) for k in args.ks.split(",")}
    for item in args.afa.split(","):
        target, lam = item.split(":")
        saes[f"topafa-{target}-l{float(lam):g}"] = create(
            "topafa",
            loss_target=target,
            afa_coeff=float(lam),
            **common,
            **({"k_max": args.k_max} if args.k_max else {}),
        )
    reference = args.setting == "reference"
    cfg = TrainConfig(
        steps=args.steps,
        progress_bar=False,
        dead_window_tokens=len(x),
        normalise_inputs=not reference,
        init_b_dec="zero" if reference else "geometric_median",
    )
    start = time.perf_counter()
    trainer = Trainer(saes, stream, cfg)
    trainer.fit()
    seconds = time.perf_counter() - start
    held = x[-HELD_OUT:]
    rows = {}
    for m in trainer.members:
        sae = trainer.export(m)
        with torch.no_grad():
            codes = sae.encode(held)
            x_hat = sae.decode(codes)
        acc = ReconstructionMetrics(sae.n_latents)
        acc.update(held, x_hat, codes)
        r = acc.compute()
        l0 = (codes != 0).sum(-1).float()
        afa = summarise(afa_quantities(held, codes, sae.W_dec, sae.b_dec))
        rows[m.name] = {
            "fvu": r["fvu"], "l0_mean": r["l0"], "l0_median": float(l0.median()),
            "l0_max": float(l0.max()), "frac_dead": r["frac_dead"],
            "cap_frac": m.last.get("cap_frac"),
            "median_eps_lbo_width": afa["median_eps_lbo_width"],
            "median_eps_lbo_active": afa["median_eps_lbo_active"],
            "median_eps_lbo_l1": afa["median_eps_lbo_l1"],
            "frac_over": afa["frac_over_activated"], "frac_under": afa["frac_under_activated"],
        }  # fmt: skip
    print(f"{len(x) - HELD_OUT} train tokens, {args.steps} steps x {args.batch_size}, "
          f"n_latents {args.n_latents}, {HELD_OUT} held-out tokens, {seconds:.0f} s\n")  # fmt: skip
    print(
        "| SAE | FVU | mean L0 | median L0 | max L0 | dead % | ε_LBO width | ε_LBO active | "
        "ε_LBO (ℓ1) | over % | under % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in rows.items():
        print(f"| {n} | {r['fvu']:.3f} | {r['l0_mean']:.1f} | {r['l0_median']:.0f} | "
              f"{r['l0_max']:.0f} | {r['frac_dead']:.1%} | {r['median_eps_lbo_width']:.3g} | "
              f"{r['median_eps_lbo_active']:.4f} | {r['median_eps_lbo_l1']:.4f} | "
              f"{r['frac_over']:.1%} | {r['frac_under']:.1%} |")  # fmt: skip
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "rows": rows, "seconds": seconds}, fh, indent=1)


if __name__ == "__main__":
    main()
