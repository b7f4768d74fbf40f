"""Does a stale training Gram change what an MP-SAE learns? (issue 15, item 3)

MP-SAEs with `gram_refresh_every` N = 1 (exact MP) and N > 1 (the pursuit selects with a
Gram rebuilt every N optimiser steps; the replay and its gradient stay exact) are trained
together in one `saekit train` run, so every N sees the same batches for the same steps, on
the cached SmolLM2-135M layer-15 activations (d_in 576): 4,608 latents, T = 32, batch
1,024. The run's final evaluation gives the held-out FVU (16,384 tokens) and the spliced CE
score (16 contexts). One run per seed; each appends one JSON line per N to
benchmarks/results/mpsae_gram_quality.jsonl, and seeds already there are skipped, so an
interrupted sweep resumes.

    python benchmarks/mpsae_gram_quality.py run --steps 600 --seeds 0,1 --refresh 1,4,16
    python benchmarks/mpsae_gram_quality.py table

The step-time columns come from `python benchmarks/mpsae_speed.py --ratio-only
--gram-refresh-every 4,16 [--batch 4096]` (benchmarks/results/mpsae_speed*gram*.json: exact
MP, stale-Gram MP and TopK alternating in one process), not from these runs, which train
several SAEs in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LOG = RESULTS / "mpsae_gram_quality.jsonl"
DATA = "cache:/work/bench/smollm2-l15"


def done() -> list[dict]:
    return [json.loads(line) for line in LOG.read_text().splitlines()] if LOG.exists() else []


def run(args: argparse.Namespace) -> None:
    refresh = [int(n) for n in args.refresh.split(",")]
    finished = {(r["seed"], r["steps"], r["gram_refresh_every"]) for r in done()}
    for seed in (int(s) for s in args.seeds.split(",")):
        if all((seed, args.steps, n) in finished for n in refresh):
            print(f"seed {seed}: done, skipped")
            continue
        out = Path(args.work) / f"seed{seed}-steps{args.steps}"
        cmd = [sys.executable, "-m", "saekit", "train", "--data", args.data, "-a", "mpsae",
               "--n-latents", "4608", "--n-steps", "32", "--batch-size", "1024",
               "--steps", str(args.steps), "--seed", str(seed), "--gram-refresh-every",
               ",".join(map(str, refresh)), "--threads", "1", "--browser-contexts", "0",
               "--no-progress", "--out", str(out)]  # fmt: skip
        print(" ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.time() - t0
        RESULTS.mkdir(exist_ok=True)
        with LOG.open("a") as f:
            for n in refresh:
                ev = json.loads(
                    (out / "saes" / f"mpsae-gram_refresh_every{n}" / "eval.json").read_text()
                )
                row = {"seed": seed, "steps": args.steps, "gram_refresh_every": n,
                       "heldout_fvu": ev["core"]["fvu"], "ce_score": ev["spliced"]["ce_loss_score"],
                       "l0": ev["core"]["l0"], "frac_dead": ev["core"]["frac_dead"],
                       "run_wall_s": round(wall, 1), "command": " ".join(cmd[1:])}  # fmt: skip
                f.write(json.dumps(row) + "\n")


def step_ms() -> dict[int, dict[int, tuple[float, float]]]:
    """{batch: {N: (MP ms, TopK ms)}} from the speed benchmark's runs with stale Grams, where
    exact MP (N = 1), the stale ones and TopK alternate in one process."""
    out: dict[int, dict[int, tuple[float, float]]] = {}
    for path in RESULTS.glob("mpsae_speed*gram*.json"):
        doc = json.loads(path.read_text())
        times = {k: 1e3 * statistics.median(v) for k, v in doc["ratio"]["times_s"].items()}
        for name, ms in times.items():
            if name == "mpsae" or name.startswith("mpsae_gram"):
                n = int(name.removeprefix("mpsae_gram").removeprefix("mpsae") or 1)
                out.setdefault(doc["size"]["batch"], {})[n] = (ms, times["topk"])
    return out


def table() -> str:
    rows = done()
    speed = step_ms()
    exact = {(r["seed"], r["steps"]): r for r in rows if r["gram_refresh_every"] == 1}
    lines = [
        "| seed | steps | Gram | held-out FVU | vs exact | CE score | vs exact "
        "| MP step, batch 1,024 | / TopK | / TopK at batch 4,096 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = (float("nan"), 1.0)
    for r in sorted(rows, key=lambda r: (r["seed"], r["steps"], r["gram_refresh_every"])):
        ref = exact[r["seed"], r["steps"]]
        n = r["gram_refresh_every"]
        mp, tk = speed.get(1024, {}).get(n, nan)
        mp4, tk4 = speed.get(4096, {}).get(n, nan)
        lines.append(
            f"| {r['seed']} | {r['steps']} | {'exact' if n == 1 else f'every {n} steps'} "
            f"| {r['heldout_fvu']:.4f} | {r['heldout_fvu'] / ref['heldout_fvu'] - 1:+.2%} "
            f"| {r['ce_score']:.4f} | {r['ce_score'] / ref['ce_score'] - 1:+.2%} "
            f"| {mp:.0f} ms | {mp / tk:.2f}x | {mp4 / tk4:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the missing seeds")
    r.add_argument("--steps", type=int, default=600)
    r.add_argument("--seeds", default="0,1")
    r.add_argument("--refresh", default="1,4,16", help="gram_refresh_every values (1 = exact)")
    r.add_argument("--data", default=DATA)
    r.add_argument("--work", default="/tmp/saekit-mpsae-gram", help="run directories")
    sub.add_parser("table", help="print the quality table")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args)
    else:
        print(table())


if __name__ == "__main__":
    main()
