"""How much the MP selection changes when the Gram matrix is cheaper than an exact fp32 one.

The MP-SAE training step rebuilds G = D Dᵀ every step (benchmarks/mpsae_speed.py: ~40% of
the step on a CPU). Two ways to pay less, both of which change which atoms the pursuit
selects; this script measures by how much. Whether that changes what the SAE learns is
benchmarks/mpsae_gram_quality.py's question (the stale Gram is the `gram_refresh_every`
option):

- a bf16 Gram (AMX matmul, bf16 output; and bf16 inputs with fp32 accumulation), and
- a stale Gram, built from the dictionary of an earlier optimiser step.

Reference: the direct loop in fp64 (c = r Dᵀ every step). Reported per variant: the share of
(sample, step) selections equal to the reference, and the share of samples whose whole
T-step sequence is. The dictionary is clustered (groups of 8 atoms around shared directions,
as trained dictionaries have near-duplicate atoms) and the inputs are sparse combinations of
atoms plus noise. The per-atom drift of one Adam step is measured by training an MP-SAE on
these inputs with saekit's trainer (lr 1e-3).

    python benchmarks/mpsae_gram_precision.py [--n-latents 4608 --d-in 576 --batch 512]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from train_step import _NoStream

from saekit.data.stream import Batch
from saekit.sae import create
from saekit.sae.pursuit import gram_matrix, select_atoms
from saekit.training.trainer import TrainConfig, Trainer


def clustered(n: int, d: int, batch: int, g: torch.Generator):
    base = torch.randn(n // 8, d, generator=g).repeat_interleave(8, 0)
    D = torch.nn.functional.normalize(base + 0.7 * torch.randn(n, d, generator=g), dim=1)
    codes = torch.zeros(batch, n)
    idx = torch.randint(0, n, (batch, 20), generator=g)
    codes.scatter_(1, idx, 3 * torch.rand(batch, 20, generator=g))
    return D, codes @ D + 0.3 * torch.randn(batch, d, generator=g)


def adam_drift(x: torch.Tensor, n: int, steps: int) -> float:
    """Median over steps 10.. of the mean per-atom ‖Δd_i‖ of one trainer step."""
    sae = create("mpsae", d_in=x.shape[1], n_latents=n, n_steps=32, seed=0)
    cfg = TrainConfig(steps=10**9, lr=1e-3, progress_bar=False)
    trainer = Trainer({"mpsae": sae}, _NoStream(x.shape[1], x.shape[0]), cfg)
    drift = []
    for step in range(steps):
        before = sae.W_dec.detach().clone()
        trainer.train_step(Batch(x[torch.randperm(x.shape[0])]))
        if step >= 10:
            drift.append(float((sae.W_dec.detach() - before).norm(dim=1).mean()))
    return statistics.median(drift)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-latents", type=int, default=4608)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32, help="pursuit steps T")
    ap.add_argument("--train-steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, d, T = args.n_latents, args.d_in, args.steps
    g = torch.Generator().manual_seed(0)
    D, x = clustered(n, d, args.batch, g)
    ref = select_atoms(D.double(), x.double(), T, "nonneg", method="direct").indices

    def row(name: str, **kw) -> None:
        same = select_atoms(D, x, T, "nonneg", **kw).indices == ref
        print(f"  {name:<44}{same.float().mean():>10.4f}{same.all(1).float().mean():>10.3f}")

    print(
        f"MP selection vs the fp64 direct loop: {n} latents, d_in {d}, T = {T}, batch {args.batch}"
    )
    print(f"  {'Gram used for selection':<44}{'steps ==':>10}{'rows ==':>10}")
    row("none (direct loop, fp32)", method="direct")
    row("exact fp32 Gram (the default)", method="gram", gram=gram_matrix(D))
    Db = D.bfloat16()
    row("bf16 Gram (bf16 in, bf16 out)", method="gram", gram=(Db @ Db.T).float())
    Db32 = Db.float()
    row("bf16 inputs, fp32 accumulation", method="gram", gram=Db32 @ Db32.T)
    drift = adam_drift(x, n, args.train_steps)
    print(f"\n  one Adam step (lr 1e-3) moves an atom by {drift:.4f} on average (median of steps)")
    for steps_old in (0.25, 1, 4):
        eps = steps_old * drift
        noise = torch.randn(n, d, generator=g)
        moved = D + eps * noise / noise.norm(dim=1, keepdim=True)
        old = gram_matrix(torch.nn.functional.normalize(moved, dim=1))
        row(f"stale Gram, atoms moved {eps:.4f} ({steps_old:g} steps)", method="gram", gram=old)


if __name__ == "__main__":
    main()
