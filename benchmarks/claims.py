"""What the seed-paper claim scripts share (benchmarks/claims_*.py, issue #14): one Trainer per
seed for every SAE of that seed (same batches), one JSON line per (seed, SAE) so a rerun
skips what is done, 95% intervals over seeds, and tables and figures written into
benchmarks/RESULTS.md and docs/ between markers, so a rerun replaces its own section.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from architectures import append

from saekit.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
DOCS = ROOT / "docs"

# Two-sided 95% Student-t quantiles by degrees of freedom (n seeds - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def rows_of(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line]
        if path.exists()
        else []
    )


def finished_rows(path: Path) -> tuple[list[dict], list[int], dict]:
    """(rows, their seeds, the first row) of a run's output; exits if there is none yet."""
    rows = rows_of(path)
    if not rows:
        raise SystemExit(f"no rows in {path}: run first")
    return rows, sorted({r["seed"] for r in rows}), rows[0]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parser(
    doc: str, modes: list[str], cache: str, steps: int, out: Path
) -> argparse.ArgumentParser:
    """The options every claim script shares (SmolLM2-135M layer 15, 2,304 latents, 3 seeds, batches of 1,024)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=modes)
    p.add_argument("--cache", type=Path, default=Path(cache))
    p.add_argument("--model", default="default")
    p.add_argument("--hookpoint", default="model.layers.15")
    p.add_argument("--seeds", type=ints, default=[0, 1, 2])
    p.add_argument("--n-latents", type=int, default=2304)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dead-window", type=int, default=200_000, help="tokens without firing: dead")
    p.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens for core")
    p.add_argument("--contexts", type=int, default=16, help="held-out contexts for spliced CE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=out)
    return p


def interval(values: Iterable[float | None]) -> tuple[float, float] | None:
    """(mean, half-width of the 95% t-interval over seeds); half-width nan for one seed."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0], math.nan
    return statistics.fmean(vals), T95.get(len(vals) - 1, 1.96) * statistics.stdev(
        vals
    ) / math.sqrt(len(vals))


def ci_text(values: Iterable[float | None], spec: str = ".4f", scale: float = 1.0) -> str:
    got = interval(values)
    if got is None:
        return "–"
    mean, half = got
    if math.isnan(half):
        return f"{scale * mean:{spec}}"
    return f"{scale * mean:{spec}} ± {scale * half:{spec.lstrip('+')}}"


def train_seed(
    saes: dict, stream, cfg: TrainConfig, done: set[str] = frozenset()
) -> tuple[dict[str, tuple[object, float]], float]:
    """Train every SAE not in `done` on the same batches: ({name: (trained SAE, dead
    fraction at the end of training)}, seconds); nothing to train gives ({}, 0)."""
    saes = {name: sae for name, sae in saes.items() if name not in done}
    if not saes:
        return {}, 0.0
    print(f"training {len(saes)} SAEs", flush=True)
    start = time.perf_counter()
    trainer = Trainer(saes, stream, cfg)
    trainer.fit()
    seconds = time.perf_counter() - start
    out = {}
    for m in trainer.members:
        dead = float((m.tokens_since_fired >= cfg.dead_window_tokens).float().mean())
        out[m.name] = (trainer.export(m), dead)
    return out, seconds


def run_seeds(
    out: Path,
    seeds: Iterable[int],
    train: Callable[[int, set[str]], tuple[dict[str, tuple[object, float]], float]],
    evaluate: Callable[[str, object, float, int], dict],
) -> None:
    """For each seed: train(seed, names already in `out` for it) trains the SAEs not yet
    done (on the seed's batches, so an SAE added later gets the batches the others had),
    then one row per SAE from evaluate(name, sae, dead, seed), appended once all of the
    seed's new SAEs are evaluated."""
    done: dict[int, set[str]] = {}
    for r in rows_of(out):
        done.setdefault(r["seed"], set()).add(r["name"])
    for seed in seeds:
        trained, seconds = train(seed, done.get(seed, set()))
        if not trained:
            print(f"seed {seed}: done", flush=True)
            continue
        print(f"seed {seed}: trained {len(trained)} SAEs in {seconds:.0f} s", flush=True)
        rows = []
        for name, (sae, dead) in trained.items():
            start = time.perf_counter()
            row = {
                "seed": seed,
                "name": name,
                "train_seconds": seconds,
                **evaluate(name, sae, dead, seed),
            }
            row["eval_seconds"] = time.perf_counter() - start
            print(json.dumps(row), flush=True)
            rows.append(row)
        for row in rows:  # the seed's new SAEs land together or not at all
            append(out, row)


def dispatch(p: argparse.ArgumentParser, modes: dict[str, Callable], prepare=None) -> None:
    """Parse the options (prepare(args) may fill derived defaults), set the torch threads and
    run the chosen mode."""
    import torch

    args = p.parse_args()
    if prepare:
        prepare(args)
    torch.set_num_threads(args.threads)
    modes[args.mode](args)


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the text between `<!-- name -->` and `<!-- /name -->` in path (append the
    marked section if it is not there yet)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    path.write_text(new)


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def pareto_plot(
    path: Path,
    panels: list[tuple[str, str]],
    series: dict[str, list[dict]],
    title: str,
    x: str = "l0",
    logx: bool = True,
) -> None:
    """One panel per (metric key, axis label): every series' seed-mean against mean `x`,
    with 95% interval bars over seeds. series: {label: rows}; rows of one point share
    row["point"]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for name, rows in series.items():
            points = sorted({r["point"] for r in rows}, key=str)
            xs, ys, xe, ye = [], [], [], []
            for p in points:
                pr = [r for r in rows if r["point"] == p]
                xi, yi = interval(r[x] for r in pr), interval(r.get(key) for r in pr)
                if xi is None or yi is None:
                    continue
                xs.append(xi[0])
                ys.append(yi[0])
                xe.append(0.0 if math.isnan(xi[1]) else xi[1])
                ye.append(0.0 if math.isnan(yi[1]) else yi[1])
            order = sorted(range(len(xs)), key=xs.__getitem__)
            pick = [[v[i] for i in order] for v in (xs, ys, xe, ye)]
            ax.errorbar(
                pick[0], pick[1], xerr=pick[2], yerr=pick[3], marker="o", capsize=3, label=name
            )
        ax.set_xlabel("mean L0" if x == "l0" else x)
        ax.set_ylabel(label)
        if logx:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
