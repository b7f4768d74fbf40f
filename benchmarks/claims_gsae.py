"""Does g-SAE beat TopK on a real model? (issue #14, question 1; Olmo et al.'s claim: lower
spliced-in ΔCE than TopK at equal k.)

    saekit cache --with-grad --tokens 200000 --eval-tokens 20000 --threads 1 \\
        --out runs/bench/gsae-200k
    python benchmarks/claims_gsae.py run --cache runs/bench/gsae-200k
    python benchmarks/claims_gsae.py report

The cache holds 200k training tokens of SmolLM2-135M layer 15 with ∂(next-token CE)/∂x per
token (and 20k held-out ones), captured once and reused by every seed. Per seed, one
Trainer trains TopK (β = 0) and g-SAE at every β > 0 for every k, on the same batches.
Each SAE is then evaluated as `saekit eval -g core,spliced,steering` does: core on --eval-
tokens held-out tokens, spliced CE/KL on --contexts held-out contexts in the label-free
TopK inference mode (the g-SAE's gradient mode reads the gradient of the very tokens it is
scored on, so its numbers are label-informed and reported apart), and the steering effect.
One JSON line per (seed, SAE) in --out; a rerun skips the seeds already there. `report`
writes the table into benchmarks/RESULTS.md and the figure docs/claims_gsae.png.
"""

from __future__ import annotations

from pathlib import Path

import claims

import saekit
from saekit.data import open_stream
from saekit.evaluation.evaluate import EvalSettings, ModelSource, evaluate_sae
from saekit.training.trainer import TrainConfig

OUT = Path(__file__).parent / "results" / "claims_gsae.jsonl"


def saes_for(seed: int, d_in: int, args) -> dict:
    common = dict(d_in=d_in, n_latents=args.n_latents, seed=seed)
    saes = {}
    for k in args.ks:
        for beta in args.betas:
            if beta == 0:  # g-SAE's ranking a·(1 + β|W_dec g|) at β = 0 is TopK's
                saes[f"k{k}-b0"] = saekit.create("topk", k=k, **common)
            else:
                saes[f"k{k}-b{beta:g}"] = saekit.create("gsae", k=k, beta=beta, **common)
    return saes


def run(args) -> None:
    cfg = TrainConfig(steps=args.steps, progress_bar=False, dead_window_tokens=args.dead_window)
    source = ModelSource(args.model, args.hookpoint)
    settings = EvalSettings(
        groups=("core", "spliced", "steering"), n_tokens=args.eval_tokens,
        spliced_contexts=args.contexts, steer_latents=args.steer_latents,
    )  # fmt: skip
    shared: dict = {}

    def train(seed: int, done: set[str]):
        stream = open_stream(f"cache:{args.cache}", args.batch, seed=seed)
        return claims.train_seed(saes_for(seed, stream.d_in, args), stream, cfg, done)

    def evaluate(name: str, sae, dead: float, seed: int) -> dict:
        held_out = open_stream(f"cache:{args.cache}", 4096, seed=0, split="heldout")
        doc = evaluate_sae(sae, held_out, settings, source=source, shared=shared, name=name)
        core, spliced, steer = doc["core"], doc["spliced"], doc["steering"]
        variants = spliced["variants"]
        topk_mode = variants.get("topk", variants.get("sae"))
        gradient_mode = variants.get("gradient", {})
        k, beta = name[1:].split("-b")
        return dict(
            k=int(k), beta=float(beta), fvu=core["fvu"], l0=core["l0"], frac_dead=dead,
            frac_dead_held_out=core["frac_dead"], delta_ce=topk_mode["delta_ce"],
            ce_score=topk_mode["ce_loss_score"], kl_score=topk_mode["kl_div_score"],
            delta_ce_gradient_mode=gradient_mode.get("delta_ce"),
            steer_kl_per_norm=steer["mean_kl_per_norm"],
            steer_logit_per_norm=steer["mean_logit_shift_per_norm"],
            ce_clean=spliced["ce_clean"], n_scored=spliced["n_tokens"],
            steps=args.steps, batch=args.batch, n_latents=args.n_latents,
        )  # fmt: skip

    claims.run_seeds(args.out, args.seeds, train, evaluate)


def report(args) -> None:
    rows, seeds, first = claims.finished_rows(args.out)
    tokens = first["steps"] * first["batch"]
    body = []
    for k in sorted({r["k"] for r in rows}):
        base = {r["seed"]: r for r in rows if r["k"] == k and r["beta"] == 0}
        for beta in sorted({r["beta"] for r in rows if r["k"] == k}):
            sel = [r for r in rows if r["k"] == k and r["beta"] == beta]
            # ΔCE minus TopK's of the same seed (same batches): the paired difference
            paired = [r["delta_ce"] - base[r["seed"]]["delta_ce"] for r in sel if r["seed"] in base]
            body.append([
                str(k), "TopK" if beta == 0 else f"g-SAE β={beta:g}", str(len(sel)),
                claims.ci_text((r["delta_ce"] for r in sel), ".4f"),
                "–" if beta == 0 else claims.ci_text(paired, "+.4f"),
                claims.ci_text((r["ce_score"] for r in sel), ".4f"),
                claims.ci_text((r["fvu"] for r in sel), ".4f"),
                claims.ci_text((r["frac_dead"] for r in sel), ".1f", 100) + "%",
                claims.ci_text((r["steer_logit_per_norm"] for r in sel), ".3f"),
                claims.ci_text((r["steer_kl_per_norm"] for r in sel), ".2e"),
                "–" if beta == 0 else claims.ci_text((r["delta_ce_gradient_mode"] for r in sel), ".4f"),
            ])  # fmt: skip
    table = claims.markdown(
        ["k", "SAE", "seeds", "ΔCE (TopK mode)", "ΔCE − TopK's, paired", "CE score", "FVU",
         "dead", "steer Δlogit/α", "steer KL/α", "ΔCE, gradient mode (label-informed)"],
        body,
    )  # fmt: skip
    series = {}
    for beta in sorted({r["beta"] for r in rows}):
        label = "TopK" if beta == 0 else f"g-SAE β={beta:g}"
        series[label] = [{**r, "point": r["k"]} for r in rows if r["beta"] == beta]
    figure = claims.DOCS / "claims_gsae.png"
    claims.pareto_plot(figure, [("delta_ce", "spliced ΔCE (nats, TopK mode)"), ("fvu", "held-out FVU")],
                series, f"g-SAE vs TopK, SmolLM2-135M layer 15, {tokens:,} training tokens, "
                f"{len(seeds)} seeds (95% intervals)")  # fmt: skip
    text = (
        f"Seeds {', '.join(map(str, seeds))}; {first['n_latents']:,} latents; {first['steps']} steps x "
        f"{first['batch']:,} tokens ({tokens:,} tokens) from a cache of 200k training tokens "
        f"with gradients; ΔCE on {first['n_scored']:,} scored held-out predictions (clean CE "
        f"{first['ce_clean']:.3f}). Mean ± 95% t-interval over seeds; the paired column is "
        f"g-SAE's ΔCE minus TopK's at the same k and seed.\n\n{table}\n\n"
        f"![g-SAE vs TopK](../docs/claims_gsae.png)\n"
    )
    claims.write_section(claims.RESULTS_MD, "claims-gsae", text)
    print(text)


def main() -> None:
    p = claims.parser(__doc__, ["run", "report"], "runs/bench/gsae-200k", 400, OUT)
    p.add_argument("--ks", type=claims.ints, default=[16, 32, 64])
    p.add_argument(
        "--betas", type=lambda s: [float(v) for v in s.split(",")], default=[0, 1, 3, 10]
    )
    p.add_argument("--steer-latents", type=int, default=24)
    claims.dispatch(p, {"run": run, "report": report})


if __name__ == "__main__":
    main()
