"""Every registered architecture at matched L0 on the same cached SmolLM2 activations, plus
ground-truth recovery on the superposition recipe. Resumable: one JSON line per finished row
in --out; a rerun skips what is done.

    saekit cache --model default --hookpoint model.layers.15 --tokens 120000 \\
        --eval-tokens 16384 --max-norm-factor 10 --out runs/bench/smollm2-l15
    python benchmarks/architectures.py real --cache runs/bench/smollm2-l15
    saekit cache --model default --hookpoint 'model.layers.6.mlp:in->out' --tokens 60000 \\
        --eval-tokens 8192 --max-norm-factor 10 --out runs/bench/smollm2-mlp6
    python benchmarks/architectures.py transcoders --pair-cache runs/bench/smollm2-mlp6
    python benchmarks/architectures.py synthetic
    python benchmarks/architectures.py table        # markdown for benchmarks/RESULTS.md

How L0 is matched: k (TopK family, Feature/Mutual Choice, AbsTopK, g-SAE), pursuit steps
(MP-SAE, ITDA), target_l0 (JumpReLU); ReLU and Gated have no L0 knob, so they run at three
L1 coefficients and land where they land; top-AFA chooses its own L0 and runs once.
g-SAE needs gradients: its real-data comparison is benchmarks/gsae_real.py. Transcoders
(`transcoders` mode) train on a paired cache (`...@model.layers.6.mlp:in->out`) and are
scored on the MLP's output and with the MLP replaced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import saekit
from saekit.sae import get_architecture
from saekit.training.trainer import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results"
L1_COEFFS = (1.0, 3.0, 10.0)  # ReLU and Gated: no L0 knob
# Architectures needing a paired cache (transcoder mode) or gradients (g-SAE: its real-data
# comparison with TopK is benchmarks/gsae_real.py, on a gradient cache).
TRANSCODERS = ("transcoder", "skip_transcoder")
NEEDS_GRADIENTS = ("gsae",)


def l0_options(arch: str, l0: int) -> list[dict]:
    """The options that put `arch` at L0 ≈ l0 (several where it has no L0 knob)."""
    fields = {f.name for f in dataclasses.fields(get_architecture(arch).Config)}
    if "k" in fields:
        return [{"k": l0}]
    if "n_steps" in fields:
        return [{"n_steps": l0}]
    if "target_l0" in fields:
        return [{"target_l0": float(l0)}]
    if "l1_coeff" in fields:
        return [{"l1_coeff": c} for c in L1_COEFFS] if l0 == 32 else []
    if "loss_target" in fields:  # top-AFA: its own L0; the reference's loss target and ours
        return [{}, {"loss_target": "centred"}] if l0 == 32 else []
    return [{}] if l0 == 32 else []


def done_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line}


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def train_one(arch: str, opts: dict, stream, d_in: int, args) -> tuple:
    sae = saekit.create(arch, d_in=d_in, n_latents=args.n_latents, seed=args.seed, **opts)
    cfg = TrainConfig(steps=args.steps, progress_bar=False, dead_window_tokens=args.dead_window)
    trainer = Trainer({arch: sae}, stream, cfg)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    member = trainer.members[0]
    dead = float((member.tokens_since_fired >= args.dead_window).float().mean())
    return trainer.export(member), args.steps * args.batch / seconds, dead


def run_real(args) -> None:
    from saekit.data import open_stream
    from saekit.evaluation.evaluate import EvalSettings, ModelSource, evaluate_sae

    out = args.out or RESULTS / "architectures_real.jsonl"
    done = done_keys(out)
    source = ModelSource("default", args.hookpoint)
    settings = EvalSettings(groups=("core", "spliced"), n_tokens=args.eval_tokens)
    shared: dict = {}
    skip = TRANSCODERS + NEEDS_GRADIENTS
    archs = args.archs or [a for a in saekit.architectures() if a not in skip]
    for l0 in args.l0:
        for arch in archs:
            for opts in l0_options(arch, l0):
                key = f"{arch}|{l0}|{json.dumps(opts, sort_keys=True)}"
                if key in done:
                    continue
                print(f"{key}: training", flush=True)
                stream = open_stream(f"cache:{args.cache}", args.batch, seed=args.seed)
                sae, tokens_per_s, dead = train_one(arch, opts, stream, stream.d_in, args)
                held_out = open_stream(f"cache:{args.cache}", 4096, seed=0, split="heldout")
                doc = evaluate_sae(sae, held_out, settings, source=source, shared=shared)
                core, spliced = doc.get("core", {}), doc.get("spliced", {})
                row = dict(
                    key=key, arch=arch, target_l0=l0, options=opts,
                    fvu=core.get("fvu"), l0=core.get("l0"),
                    ce_score=spliced.get("ce_loss_score"), frac_dead=dead,
                    frac_dead_held_out=core.get("frac_dead"), tokens_per_s=tokens_per_s,
                    steps=args.steps, batch=args.batch, n_latents=args.n_latents,
                    width=sae.n_latents,  # ITDA: the atoms it grew
                    skipped=doc.get("skipped", {}),
                )  # fmt: skip
                append(out, row)
                print(json.dumps(row), flush=True)


def run_transcoders(args) -> None:
    """TopK and skip transcoders at k = --l0, and a JumpReLU transcoder, on a paired cache:
    FVU of the target (the MLP's output) and CE with the MLP replaced by the transcoder."""
    from saekit.data import open_stream
    from saekit.evaluation.evaluate import EvalSettings, evaluate_sae, model_source

    out = args.out or RESULTS / "architectures_transcoders.jsonl"
    done = done_keys(out)
    spec = f"cache:{args.pair_cache}@{args.pair}"
    settings = EvalSettings(groups=("core", "spliced"), n_tokens=args.eval_tokens)
    shared: dict = {}
    runs = [(a, {"k": l0}, l0) for l0 in args.l0 for a in TRANSCODERS]
    runs += [("jumprelu", {"transcode": True, "target_l0": float(l0)}, l0) for l0 in args.l0]
    for arch, opts, l0 in runs:
        key = f"{arch}|{l0}|{json.dumps(opts, sort_keys=True)}"
        if key in done:
            continue
        print(f"{key}: training", flush=True)
        stream = open_stream(spec, args.batch, seed=args.seed)
        opts = {**opts, "d_out": stream.d_out}
        sae, tokens_per_s, dead = train_one(arch, opts, stream, stream.d_in, args)
        held_out = open_stream(spec, 4096, seed=0, split="heldout")
        source = model_source(sae, data_spec=f"model:default@{args.pair}")
        doc = evaluate_sae(sae, held_out, settings, source=source, shared=shared)
        core, spliced = doc.get("core", {}), doc.get("spliced", {})
        row = dict(
            key=key, arch=arch, target_l0=l0, options=opts, pair=args.pair,
            fvu=core.get("fvu"), l0=core.get("l0"), ce_score=spliced.get("ce_loss_score"),
            ce_score_mean_ablation=spliced.get("ce_loss_score_mean_ablation"),
            frac_dead=dead, tokens_per_s=tokens_per_s, steps=args.steps, batch=args.batch,
            n_latents=args.n_latents, width=sae.n_latents, skipped=doc.get("skipped", {}),
        )  # fmt: skip
        append(out, row)
        print(json.dumps(row), flush=True)


def run_synthetic(args) -> None:
    from saekit.data.synthetic import SyntheticStream, make_recipe
    from saekit.evaluation.evaluate import evaluate

    out = args.out or RESULTS / "architectures_synthetic.jsonl"
    done = done_keys(out)
    recipe = "superposition:n_features=512,d_in=64,k_avg=5"
    skip = TRANSCODERS + NEEDS_GRADIENTS  # g-SAE's synthetic test: benchmarks/gsae_synthetic.py
    archs = args.archs or [a for a in saekit.architectures() if a not in skip]
    for arch in archs:
        for opts in l0_options(arch, 8) or l0_options(arch, 32)[:1]:
            key = f"{arch}|{json.dumps(opts, sort_keys=True)}"
            if key in done:
                continue
            print(f"{key}: training", flush=True)
            stream = SyntheticStream(make_recipe(recipe, seed=0), batch_size=1024, seed=0)
            sae = saekit.create(arch, d_in=64, n_latents=1024, seed=args.seed, **opts)
            cfg = TrainConfig(steps=args.synthetic_steps, progress_bar=False)
            trainer = Trainer({arch: sae}, stream, cfg)
            start = time.perf_counter()
            trainer.fit()
            seconds = time.perf_counter() - start
            held_out = SyntheticStream(make_recipe(recipe, seed=0), batch_size=4096, seed=99)
            doc = evaluate(trainer.export(trainer.members[0]), held_out)
            syn, core = doc.get("synthetic", {}), doc.get("core", {})
            row = dict(
                key=key, arch=arch, options=opts, fvu=core.get("fvu"), l0=core.get("l0"),
                mmcs=syn.get("mmcs_gt_to_learned"), mmcs_abs=syn.get("mmcs_gt_to_learned_abs"),
                mcc=syn.get("hungarian_mcc"), frr=syn.get("frr_0.9"),
                seconds=seconds, steps=args.synthetic_steps,
            )  # fmt: skip
            append(out, row)
            print(json.dumps(row), flush=True)


def options_text(options: dict) -> str:
    shown = {k: v for k, v in options.items() if k not in ("d_out", "transcode")}
    return ", ".join(f"{k}={v:g}" if isinstance(v, float | int) else f"{k}={v}"
                     for k, v in shown.items()) or "–"  # fmt: skip


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(args) -> None:
    real = RESULTS / "architectures_real.jsonl"
    if real.exists():
        rows = [json.loads(line) for line in real.read_text().splitlines() if line]
        print(
            "| target L0 | architecture | options | width | L0 | FVU | CE score | dead | tokens/s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["target_l0"], r["arch"])):
            opts = options_text(r["options"])
            print(
                f"| {r['target_l0']} | {r['arch']} | {opts} | {r['width']} | {fmt(r['l0'], '.1f')} | "
                f"{fmt(r['fvu'], '.3f')} | {fmt(r['ce_score'], '.3f')} | "
                f"{fmt(100 * r['frac_dead'], '.1f')}% | {fmt(r['tokens_per_s'], ',.0f')} |"
            )
    tc = RESULTS / "architectures_transcoders.jsonl"
    if tc.exists():
        rows = [json.loads(line) for line in tc.read_text().splitlines() if line]
        print("\n| target L0 | transcoder | L0 | FVU of the MLP output | CE score, MLP replaced "
              "(vs zero / mean ablation) | dead | tokens/s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["target_l0"], r["arch"])):
            name = r["arch"] if r["arch"] in TRANSCODERS else f"{r['arch']} (transcode=true)"
            print(
                f"| {r['target_l0']} | {name} | {fmt(r['l0'], '.1f')} | {fmt(r['fvu'], '.3f')} | "
                f"{fmt(r['ce_score'], '.3f')} / {fmt(r['ce_score_mean_ablation'], '.3f')} | "
                f"{fmt(100 * r['frac_dead'], '.1f')}% | {fmt(r['tokens_per_s'], ',.0f')} |"
            )
    syn = RESULTS / "architectures_synthetic.jsonl"
    if syn.exists():
        rows = [json.loads(line) for line in syn.read_text().splitlines() if line]
        print("\n| architecture | options | L0 | FVU | MMCS (\\|cos\\|) | MCC | FRR@0.9 |")
        print("|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: r["arch"]):
            opts = options_text(r["options"])
            print(
                f"| {r['arch']} | {opts} | {fmt(r['l0'], '.1f')} | {fmt(r['fvu'], '.3f')} | "
                f"{fmt(r['mmcs'], '.3f')} ({fmt(r['mmcs_abs'], '.3f')}) | {fmt(r['mcc'], '.3f')} | "
                f"{fmt(r['frr'], '.3f')} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["real", "transcoders", "synthetic", "table"])
    p.add_argument("--cache", type=Path, default=Path("runs/bench/smollm2-l15"))
    p.add_argument("--hookpoint", default="model.layers.15")
    p.add_argument("--pair-cache", type=Path, default=Path("runs/bench/smollm2-mlp6"))
    p.add_argument("--pair", default="model.layers.6.mlp:in->out")
    p.add_argument("--archs", nargs="*")
    p.add_argument("--l0", type=int, nargs="*", default=[16, 32, 64])
    p.add_argument("--n-latents", type=int, default=2304)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--synthetic-steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dead-window", type=int, default=200_000)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    modes = {"real": run_real, "transcoders": run_transcoders, "synthetic": run_synthetic}
    {**modes, "table": table}[args.mode](args)


if __name__ == "__main__":
    main()
