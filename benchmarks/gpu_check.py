"""The CUDA path against the CPU, and GPU training throughput. Run it whenever a GPU is at
hand (about 2-4 minutes on one GPU); without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py [--quick] [--out benchmarks/results/gpu_check.json]

1. Every registered architecture, small (d_in 64, 512 latents), on CPU and on CUDA from the
   same weights and inputs: inference codes (same support; values within 1e-4 relative) and
   the training loss and gradients (within 1e-3 relative; float32 matmuls differ in
   summation order between the backends).
2. Training throughput on CUDA, TopK and MP-SAE at d_in 576, 4,608 latents, k = T = 32, batch
   1,024 and 4,096, fp32 and bf16 autocast, through the real trainer: tokens/s and the
   MP-SAE / TopK step ratio that the CPU measurement could not settle.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import saekit
from saekit.data.stream import TensorStream
from saekit.sae import TrainContext
from saekit.training.trainer import TrainConfig, Trainer


def options(arch: str) -> dict:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(saekit.get_architecture(arch).Config)}
    wanted = {"k": 16, "n_steps": 16, "target_l0": 16.0, "k_max": 64}
    return {k: v for k, v in wanted.items() if k in fields}


def compare(arch: str) -> dict:
    torch.manual_seed(0)
    cpu = saekit.create(arch, d_in=64, n_latents=512, **options(arch))
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(0.05 * torch.randn_like(p))
        cpu.after_optimizer_step()
    gpu = saekit.create(arch, d_in=64, n_latents=512, **options(arch))
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    x = torch.randn(256, 64) + 1.0
    extras = {"grad": torch.randn(256, 64), "target": torch.randn(256, 64)}
    gx = {k: v.cuda() for k, v in extras.items()}
    out = {"arch": arch}
    if "threshold_scale" not in cpu.knobs:  # thresholds need training to be calibrated
        with torch.no_grad():
            a, b = cpu.encode(x, extras=extras), gpu.encode(x.cuda(), extras=gx).cpu()
        out["same_support"] = bool(((a != 0) == (b != 0)).float().mean() > 0.999)
        out["codes_rel_err"] = float((a - b).norm() / a.norm().clamp_min(1e-12))
    lc = cpu.train().training_forward(x, TrainContext(extras=extras))
    lg = gpu.train().training_forward(x.cuda(), TrainContext(extras=gx))
    sum(lc.losses.values()).backward()
    sum(lg.losses.values()).backward()
    worst = 0.0
    for p, q in zip(cpu.parameters(), gpu.parameters(), strict=True):
        if p.grad is not None and q.grad is not None:
            err = (p.grad - q.grad.cpu()).norm() / p.grad.norm().clamp_min(1e-12)
            worst = max(worst, float(err))
    out["grad_rel_err"] = worst
    out["ok"] = worst < 1e-3 and out.get("same_support", True)
    return out


def throughput(arch: str, batch: int, autocast: str | None, steps: int) -> float:
    x = torch.randn(batch * 8, 576)
    stream = TensorStream(x, batch_size=batch)
    sae = saekit.create(arch, d_in=576, n_latents=4608, **({"k": 32} if arch == "topk" else {}))
    cfg = TrainConfig(
        steps=steps + 5, progress_bar=False, device="cuda", autocast=autocast, warmup_steps=1
    )
    trainer = Trainer({arch: sae}, stream, cfg)
    trainer._initialise()
    for _ in range(5):  # warm-up: kernels, allocator
        trainer.train_step(trainer._next_batch())
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(trainer._next_batch())
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer timing steps")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check")
        return
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    report["validation"] = [compare(a) for a in saekit.architectures()]
    for row in report["validation"]:
        print(json.dumps(row))
    steps = 10 if args.quick else 50
    rows = []
    for batch in (1024, 4096):
        for autocast in (None, "bf16"):
            t = {a: throughput(a, batch, autocast, steps) for a in ("topk", "mpsae")}
            rows.append(
                {
                    "batch": batch,
                    "autocast": autocast or "fp32",
                    "topk_tokens_per_s": t["topk"],
                    "mpsae_tokens_per_s": t["mpsae"],
                    "mpsae_step_over_topk_step": t["topk"] / t["mpsae"],
                }
            )
            print(json.dumps(rows[-1]))
    report["throughput"] = rows
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
