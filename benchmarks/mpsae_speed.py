"""MP-SAE speed: saekit's pursuit (Gram selection + replay) against the naive unrolled loop,
and saekit's whole MP-SAE training step against its TopK training step.

    python benchmarks/mpsae_speed.py              # d_in 576, 4,608 latents, T = k = 32, batch 1,024
    python benchmarks/mpsae_speed.py --small      # a quick run
    python benchmarks/mpsae_speed.py --ratio-only # only the MP / TopK train-step ratio
    python benchmarks/mpsae_speed.py --ratio-only --batch 4096  # another batch size
    python benchmarks/mpsae_speed.py --ratio-only --gram-refresh-every 4,16  # + stale Grams

Each (variant, phase) runs in its own subprocess with one thread, so the peak resident memory
(getrusage maxrss, minus the process's footprint after setup) belongs to that variant alone.
Phases: `encode` (no autograd; ours caches the Gram matrix across calls, as a model does while
its dictionary is unchanged), `encode_cold` (ours, rebuilding the Gram every call) and `train`
(training forward + backward of the reconstruction loss; no optimiser step, no dead atoms).
Prints; asserts nothing. The naive loop is the textbook one
(docs/methods.md#mpsae-speed): c = r Dᵀ and a
dense one-hot update every step, autograd through the loop. Issue targets: encode ≥ 5x,
train step ≥ 10x the naive loop.

The `ratio` child times `Trainer.train_step` (forward, backward, clip, Adam, renormalisation,
dead-latent counters; as benchmarks/train_step.py) for an MP-SAE (T = 32) and a TopK SAE
(k = 32) of the same size on the same batches, alternating rounds so that drifting machine
load hits both, and splits the MP step into Gram build, c⁰ = r Dᵀ, pursuit steps, replay
forward + backward and the rest (optimiser etc.). Issue target: MP step ≤ 1.5x the TopK
step. --gram-refresh-every N[,N...] adds, in the same alternation, MP-SAEs whose training
Gram is rebuilt every N steps (the approximate mode); rounds then run a common multiple of
the Ns steps per model, so every round holds the same share of builds. Writes benchmarks/results/mpsae_speed*.json
and a `speed*` section of benchmarks/results/mpsae.md unless --no-write.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

SIZES = {
    "full": dict(d_in=576, n_latents=4608, n_steps=32, batch=1024),
    "small": dict(d_in=128, n_latents=1024, n_steps=16, batch=256),
}
RESULTS = Path(__file__).parent / "results"


def size_spec(name: str) -> dict[str, int]:
    """A size by name, with `NAME:BATCH` overriding its batch (e.g. `full:4096`)."""
    base, _, batch = name.partition(":")
    return {**SIZES[base], **({"batch": int(batch)} if batch else {})}


RATIO_ROUNDS = 5  # alternating rounds of 2 steps (or one Gram refresh period) per model
# (variant, phase, untimed warm-up runs, timed runs); the naive loop is slow and its first-call
# overheads are negligible, so one timed run.
RUNS = [
    ("ours", "encode_cold", 1, 3),
    ("ours", "encode", 1, 3),
    ("naive", "encode", 0, 1),
    ("ours", "train", 1, 3),
    ("naive", "train", 0, 1),
]


def setup(size: dict[str, int], seed: int = 0):
    """A random unit-norm dictionary with a small b_pre; inputs with ‖x‖ ≈ √d_in (the
    training scale, docs/methods.md#conventions). Exact MP, as the naive loop."""
    from saekit.sae import create

    sae = create("mpsae", d_in=size["d_in"], n_latents=size["n_latents"],
                 n_steps=size["n_steps"], seed=seed, gram_refresh_every=1)  # fmt: skip
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_dec.copy_(0.1 * torch.randn(size["d_in"], generator=g))
    x = torch.randn(size["batch"], size["d_in"], generator=g)
    return sae, x


def encode_ours(sae, x) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {"codes": sae.encode(x)}


def encode_ours_cold(sae, x) -> dict[str, torch.Tensor]:
    sae.selector._gram = None  # drop the cached Gram matrix: rebuilt inside encode
    return encode_ours(sae, x)


def encode_naive(sae, x) -> dict[str, torch.Tensor]:
    from saekit.sae.pursuit import naive_pursuit

    with torch.no_grad():
        return {"codes": naive_pursuit(sae.W_dec, x, sae.b_dec, sae.cfg.n_steps, sae.cfg.sign)[0]}


def _grads(sae, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {"grad_W_dec": sae.W_dec.grad.clone(), "grad_b_dec": sae.b_dec.grad.clone()}


def new_dictionary(sae) -> None:
    """What an optimiser step does to the Gram cache: W_dec changes, so the next forward
    rebuilds the Gram (in place, as in training)."""
    with torch.no_grad():
        sae.W_dec.mul_(1.0)  # bumps the version counter


def train_ours(sae, x) -> dict[str, torch.Tensor]:
    from saekit.sae import TrainContext

    new_dictionary(sae)  # in training the dictionary changes every step: the Gram is rebuilt
    out = sae.training_forward(x, TrainContext())
    return {"codes": out.codes.detach(), **_grads(sae, out.losses["mse"])}


def train_naive(sae, x) -> dict[str, torch.Tensor]:
    from saekit.sae.losses import reconstruction_loss
    from saekit.sae.pursuit import naive_pursuit

    codes, x_hat, _ = naive_pursuit(sae.W_dec, x, sae.b_dec, sae.cfg.n_steps, sae.cfg.sign)
    return {"codes": codes.detach(), **_grads(sae, reconstruction_loss(x, x_hat))}


PHASES: dict[tuple[str, str], Callable] = {
    ("ours", "encode"): encode_ours,
    ("ours", "encode_cold"): encode_ours_cold,
    ("naive", "encode"): encode_naive,
    ("ours", "train"): train_ours,
    ("naive", "train"): train_naive,
}


def _trainer(arch: str, size: dict[str, int], **options):
    """A Trainer on one SAE, stepped by hand (benchmarks/train_step.py's protocol)."""
    from train_step import _NoStream

    from saekit.sae import create
    from saekit.training.trainer import TrainConfig, Trainer

    sae = create(arch, d_in=size["d_in"], n_latents=size["n_latents"], **options)
    cfg = TrainConfig(steps=10**9, lr=1e-3, progress_bar=False)
    return Trainer({arch: sae}, _NoStream(size["d_in"], size["batch"]), cfg)


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def ratio_child(size_name: str, rounds: int, out: Path, refresh: tuple[int, ...] = ()) -> None:
    """MP-SAE (exact, and with a Gram rebuilt every N steps for each N in `refresh`) vs TopK
    Trainer.train_step (and a plain PyTorch TopK step, for scale), alternating; then where
    the exact MP step's time goes."""
    from train_step import PlainTopK, plain_step

    from saekit.data.stream import Batch
    from saekit.sae.pursuit import replay, select_atoms

    torch.set_num_threads(1)
    size = size_spec(size_name)
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(size["batch"], size["d_in"], generator=g) for _ in range(4)]
    mp = _trainer("mpsae", size, n_steps=size["n_steps"], gram_refresh_every=1)
    topk = _trainer("topk", size, k=size["n_steps"])
    plain = PlainTopK(size["d_in"], size["n_latents"], size["n_steps"])
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    steppers = {
        "mpsae": lambda x: mp.train_step(Batch(x)),
        "topk": lambda x: topk.train_step(Batch(x)),
        "plain_topk": lambda x: plain_step(plain, plain_opt, x),
    }
    for n in refresh:
        stale = _trainer("mpsae", size, n_steps=size["n_steps"], gram_refresh_every=n)
        steppers[f"mpsae_gram{n}"] = functools.partial(lambda t, x: t.train_step(Batch(x)), stale)
    step = dict.fromkeys(steppers, 0)
    per_round = math.lcm(2, *refresh)  # every round holds the same share of Gram builds

    def run(name: str, n: int = per_round) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            steppers[name](data[step[name] % 4])
            step[name] += 1
        return (time.perf_counter() - t0) / n

    for name in steppers:
        run(name, 1)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(rounds):
        for name in steppers:
            times[name].append(run(name))

    # The MP step's forward + backward, phase by phase as training_forward runs it (in-place
    # Gram rebuild, replay), each step timed whole so the parts add up.
    sae = mp.members[0].sae
    T = size["n_steps"]

    def phases(x: torch.Tensor) -> list[float]:
        ticks = [time.perf_counter()]
        new_dictionary(sae)  # as after an optimiser step
        G = sae.selector.gram(sae)
        ticks.append(time.perf_counter())
        r0 = (x - sae.b_dec).detach()
        c0 = r0 @ sae.W_dec.detach().T
        ticks.append(time.perf_counter())
        del c0  # select_atoms computes it again: timed here on its own, subtracted below
        sel = select_atoms(sae.W_dec, r0, T, sae.cfg.sign, gram=G, method="gram")
        ticks.append(time.perf_counter())
        sae.zero_grad(set_to_none=True)
        _, recon = replay(sae.W_dec, x - sae.b_dec, sel.indices, sel.updated)
        (recon + sae.b_dec - x).pow(2).sum(-1).mean().backward()
        ticks.append(time.perf_counter())
        return [b - a for a, b in zip(ticks, ticks[1:])]

    runs = [phases(data[i % 4]) for i in range(rounds + 1)][1:]
    gram, c0, pursuit, replay_fb = (1e3 * statistics.median(col) for col in zip(*runs))
    step_ms = 1e3 * statistics.median(times["mpsae"])
    parts = {
        "gram build (in place)": gram,
        "c0 = r D^T": c0,
        f"pursuit steps 2..{T}": pursuit - c0,
        "replay fwd + bwd": replay_fb,
        "rest (clip, Adam, renorm, ...)": step_ms - gram - pursuit - replay_fb,
    }
    torch.save({"times": times, "parts_ms": parts}, out)


def child(variant: str, phase: str, size: str, warmup: int, reps: int, out: Path) -> None:
    """Run one (variant, phase) and save times, memory and the last result to `out`."""
    torch.set_num_threads(1)
    sae, x = setup(size_spec(size))
    fn = PHASES[variant, phase]
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(warmup):
        fn(sae, x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn(sae, x)
        times.append(time.perf_counter() - t0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save({"times": times, "peak_mb": (peak_kb - base_kb) / 1024, **result}, out)


def run_child(
    variant: str, phase: str, size: str, warmup: int, reps: int, tmp: Path, extra: tuple = ()
) -> dict:
    out = tmp / f"{variant}-{phase}.pt"
    cmd = [sys.executable, __file__, "--child", variant, phase, "--size", size,
           "--warmup", str(warmup), "--reps", str(reps), "--out", str(out), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)
    return torch.load(out)


def compare(ours: dict, naive: dict) -> str:
    """Codes: same support and values; gradients: max |Δ| relative to the largest entry."""
    same_support = bool(((ours["codes"] != 0) == (naive["codes"] != 0)).all())
    parts = [f"same support {same_support}",
             f"max |Δcode| {float((ours['codes'] - naive['codes']).abs().max()):.1e}"]  # fmt: skip
    for key in ("grad_W_dec", "grad_b_dec"):
        if key in ours:
            rel = (ours[key] - naive[key]).abs().max() / naive[key].abs().max()
            parts.append(f"{key} rel. max |Δ| {float(rel):.1e}")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", action="store_true", help="d_in 128, 1,024 latents, T 16, batch 256")
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "PHASE"), help=argparse.SUPPRESS)
    ap.add_argument("--size", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ratio-only", action="store_true", help="only the MP / TopK train-step ratio")
    ap.add_argument("--batch", type=int, help="override the size's batch (tokens per step)")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    ap.add_argument(
        "--gram-refresh-every",
        default="",
        metavar="N[,N...]",
        help="also time MP-SAEs whose training Gram is rebuilt every N steps",
    )
    args = ap.parse_args()
    refresh = tuple(int(n) for n in args.gram_refresh_every.split(",") if n)
    if args.child:
        if args.child[0] == "ratio":
            ratio_child(args.size, args.reps, args.out, refresh)
        else:
            child(*args.child, args.size, args.warmup, args.reps, args.out)
        return

    size = ("small" if args.small else "full") + (f":{args.batch}" if args.batch else "")
    spec = size_spec(size)
    print(f"MP-SAE speed, {size}: {json.dumps(spec)}, torch {torch.__version__}, 1 thread")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, phase, warmup, reps in [] if args.ratio_only else RUNS:
            results[variant, phase] = run_child(variant, phase, size, warmup, reps, Path(tmp))
        extra = ("--gram-refresh-every", args.gram_refresh_every)
        ratio = run_child("ratio", "step", size, 0, RATIO_ROUNDS, Path(tmp), extra)
    text = report_ratio(ratio, spec)
    if not args.ratio_only:
        text = report_naive(results, spec) + "\n" + text
    print(text)
    if not args.no_write:
        from mpsae_hierarchy import write_section

        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        doc = {"command": command, "size": spec, "torch": torch.__version__,
               "gram_refresh_every": refresh,
               "ratio": {"times_s": ratio["times"], "parts_ms": ratio["parts_ms"]},
               "naive": {f"{v} {p}": {"times_s": r["times"], "peak_mb": r["peak_mb"]}
                         for (v, p), r in results.items()}}  # fmt: skip
        # The configuration owns `speed`; other sizes get a section of their own.
        key = "speed" if size == "full" else f"speed-{size.replace(':', '-batch')}"
        if refresh:
            key += "-gram" + "-".join(map(str, refresh))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"mpsae_{key.replace('-', '_')}.json").write_text(
            json.dumps(doc, indent=1) + "\n"
        )
        title = "MP-SAE speed" + ("" if key == "speed" else f" ({json.dumps(spec)})")
        md = f"## {title}\n\n```\n{text.strip()}\n```\n\nCommand: `{command}`\n"
        write_section(RESULTS / "mpsae.md", key, md)


def report_ratio(ratio: dict, spec: dict[str, int]) -> str:
    """The MP / TopK train-step ratio and the MP step's breakdown, as text."""
    mp = 1e3 * statistics.median(ratio["times"]["mpsae"])
    tk = 1e3 * statistics.median(ratio["times"]["topk"])
    pl = 1e3 * statistics.median(ratio["times"]["plain_topk"])
    T = spec["n_steps"]
    lines = [
        f"saekit Trainer.train_step, d_in {spec['d_in']}, {spec['n_latents']} latents, "
        f"batch {spec['batch']} (median of {len(ratio['times']['topk'])} alternating rounds)",
        f"  MP-SAE (T = {T})  {mp:8.0f} ms/step  {1e3 * spec['batch'] / mp:8.0f} tokens/s",
        f"  TopK   (k = {T})  {tk:8.0f} ms/step  {1e3 * spec['batch'] / tk:8.0f} tokens/s",
        f"  plain PyTorch TopK loop (benchmarks/train_step.py)  {pl:.0f} ms/step",
        f"  ratio MP / TopK: {mp / tk:.2f} (issue target <= 1.5); MP / plain TopK: {mp / pl:.2f}",
    ]  # fmt: skip
    for name, times in ratio["times"].items():
        if name.startswith("mpsae_gram"):
            st = 1e3 * statistics.median(times)
            lines.append(f"  MP-SAE, Gram rebuilt every {name[10:]} steps  {st:8.0f} ms/step  "
                         f"ratio / TopK: {st / tk:.2f}")  # fmt: skip
    lines.append(
        "  where the exact MP step goes (ms, medians of separately timed steps; rest = step - "
        "parts):"
    )
    for name, ms in ratio["parts_ms"].items():
        lines.append(f"    {name:<32}{ms:8.0f}")
    return "\n".join(lines) + "\n"


def report_naive(results: dict, spec: dict[str, int]) -> str:
    """The ours-vs-naive table, as text."""
    out = []

    batch = spec["batch"]
    out.append(f"\n{'variant':<22}{'seconds':>10}{'tokens/s':>12}{'peak MB':>10}")
    rows = {
        f"{v} {p}": (statistics.median(r["times"]), r["peak_mb"]) for (v, p), r in results.items()
    }
    for name, (sec, mb) in rows.items():
        out.append(f"{name:<22}{sec:>10.3f}{batch / sec:>12.0f}{mb:>10.0f}")

    out.append("\nspeed-up over naive (target: encode >= 5x, train >= 10x)")
    for name in ("ours encode_cold", "ours encode", "ours train"):
        naive_sec = rows["naive " + name.split()[1].removesuffix("_cold")][0]
        out.append(f"  {name:<20}{naive_sec / rows[name][0]:>8.1f}x")
    peak = {k: r["peak_mb"] for k, r in results.items()}
    enc = peak["ours", "encode"] / max(peak["naive", "encode"], 1)
    out.append(f"  peak memory ours/naive: encode {enc:.2f}, "
               f"train {peak['ours', 'train'] / max(peak['naive', 'train'], 1):.2f}")  # fmt: skip
    out.append("\nagreement with the naive loop (fp32)")
    for phase in ("encode", "train"):
        out.append(f"  {phase}: {compare(results['ours', phase], results['naive', phase])}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
