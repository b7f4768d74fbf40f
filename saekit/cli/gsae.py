"""`saekit gsae`: compare g-SAEs with TopK (and any other SAE) in the model loop.

FVU, L0, dead %, spliced CE/KL scores (g-SAE in both inference modes) and the steering
effect of sampled latents, on held-out contexts of the model the SAEs were trained on.
Writes results.json, table.md and gsae.png into --out and prints the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saekit.cli.common import (
    context_length,
    nonneg_int,
    path_arg,
    positive_float,
    positive_int,
    thread_count,
)

COLUMNS = [
    ("k", "k", "{}"),
    ("beta", "β", "{}"),
    ("l0", "L0", "{:.1f}"),
    ("fvu", "FVU", "{:.3f}"),
    ("delta_ce", "ΔCE", "{:.3f}"),
    ("ce_loss_score", "CE score (zero)", "{:.3f}"),
    ("ce_loss_score_mean_ablation", "CE score (mean)", "{:.3f}"),
    ("kl_spliced", "KL", "{:.3f}"),
    ("kl_div_score_mean_ablation", "KL score (mean)", "{:.3f}"),
    ("frac_dead", "dead %", "{:.1%}"),
    ("steer_kl_per_norm", "steer KL/α", "{:.2e}"),
    ("steer_shift_per_norm", "steer Δlogit/α", "{:.4f}"),
]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "gsae",
        help="compare g-SAE and TopK SAEs in the model loop (CE/KL, FVU, dead, steering)",
        description=__doc__,
    )
    p.add_argument("sae_dirs", type=path_arg, nargs="+")
    p.add_argument("--model", help="model name (default: the one recorded in the SAE)")
    p.add_argument("--hookpoint", help="hookpoint (default: the one recorded in the SAE)")
    p.add_argument("--corpus", default="default")
    p.add_argument(
        "--contexts", type=positive_int, default=16, help="held-out contexts for CE/KL/FVU"
    )
    p.add_argument("--ctx-len", type=context_length, default=128)
    p.add_argument(
        "--steer-latents", type=nonneg_int, default=24, help="latents sampled per SAE (0: skip)"
    )
    p.add_argument("--steer-contexts", type=positive_int, default=12)
    p.add_argument("--kappa", type=positive_float, default=0.5, help="steering α = κ·median‖x‖")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", type=path_arg, required=True)
    p.add_argument("--threads", type=thread_count)


def _recorded(sae: Any, key: str) -> str | None:
    data = getattr(sae, "metadata", {}).get("data", {})
    value = data.get(key)
    return value.get("name") if isinstance(value, dict) else value


def run(args) -> int:
    from saekit.cli.common import UsageError, set_threads
    from saekit.data.corpora import tokenize_corpus
    from saekit.data.models import load_model
    from saekit.formats.native import load

    set_threads(args.threads)
    saes = {Path(d).name: load(d) for d in args.sae_dirs}
    first = next(iter(saes.values()))
    model_name = args.model or _recorded(first, "model") or "default"
    hookpoint = args.hookpoint or _recorded(first, "hookpoint")
    if hookpoint is None:
        raise UsageError("no hookpoint recorded in the SAE; pass --hookpoint")
    model, tok = load_model(model_name)
    n = args.contexts + max(args.contexts // 2, 4)  # the rest estimates the mean activation
    ctx = tokenize_corpus(tok, args.corpus, n, args.ctx_len, "heldout", args.seed)
    results = evaluate(saes, model, ctx, hookpoint, args.contexts, args.steer_latents,
                       args.steer_contexts, args.kappa, args.seed)  # fmt: skip
    results["_meta"] = {"model": model_name, "hookpoint": hookpoint, "corpus": args.corpus,
                        "contexts": args.contexts, "ctx_len": args.ctx_len, "kappa": args.kappa}  # fmt: skip
    write_report(results, args.out)
    print(table(results))
    return 0


def evaluate(
    saes: dict[str, Any],
    model: Any,
    contexts: Any,
    hookpoint: str,
    n_eval: int,
    steer_latents: int = 24,
    steer_contexts: int = 12,
    kappa: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Rows per variant; contexts [n_eval:] estimate the mean activation."""
    from saekit.evaluation.gsae_compare import alive_latents, compare_saes, compare_steering
    from saekit.evaluation.spliced import estimate_mean_activation

    ids, am, special = contexts.input_ids, contexts.attention_mask, contexts.special_ids
    mu = estimate_mean_activation(model, ids[n_eval:], am[n_eval:], hookpoint, special_ids=special)
    rows = compare_saes(saes, model, ids[:n_eval], am[:n_eval], hookpoint, mu, special_ids=special)
    if steer_latents > 0:
        from saekit.data.gradients import capture_gradients
        from saekit.data.masking import token_mask

        acts, grads = capture_gradients(model, ids[:4], am[:4], [hookpoint], special_ids=special)
        x, g = acts[hookpoint], grads[hookpoint]
        mask = token_mask(ids[:4], am[:4], special)
        alive = {name: alive_latents(sae, x[mask], g[mask]) for name, sae in saes.items()}
        steer = compare_steering(saes, model, ids[:steer_contexts], am[:steer_contexts],
                                 hookpoint, alive, steer_latents, kappa, special_ids=special,
                                 seed=seed)  # fmt: skip
        for name, row in rows.items():
            s = steer[name.split("[")[0]]
            row["steer_kl_per_norm"] = s["mean_kl_per_norm"]
            row["steer_shift_per_norm"] = s["mean_logit_shift_per_norm"]
            row["steer_alpha"] = s["alpha"]
    return rows


def table(results: dict[str, Any]) -> str:
    """Markdown table, one row per variant."""
    rows = {k: v for k, v in results.items() if not k.startswith("_")}
    present = [c for c in COLUMNS if any(c[0] in r for r in rows.values())]
    lines = ["| SAE | " + " | ".join(c[1] for c in present) + " |",
             "|---|" + "---:|" * len(present)]  # fmt: skip
    for name, r in rows.items():
        cells = [c[2].format(r[c[0]]) if r.get(c[0]) is not None else "–" for c in present]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """ΔCE, KL score and steering effect against L0; one line per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in results.items() if not k.startswith("_")}
    families: dict[str, list[tuple[str, dict]]] = {}
    for name, r in rows.items():
        family = r["architecture"] + (f"[{r['mode']}]" if r["mode"] else "")
        if r.get("beta") is not None:
            family += f" β={r['beta']:.3g}"
        families.setdefault(family, []).append((name, r))
    metrics = [("delta_ce", "ΔCE (lower is better)"),
               ("kl_div_score_mean_ablation", "KL score vs mean ablation"),
               ("steer_shift_per_norm", "steering Δlogit / α")]  # fmt: skip
    metrics = [m for m in metrics if any(m[0] in r for r in rows.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4))
    for ax, (key, label) in zip(list(axes) if len(metrics) > 1 else [axes], metrics):
        for family, members in sorted(families.items()):
            members = sorted(members, key=lambda m: m[1]["l0"])
            ax.plot([m[1]["l0"] for m in members], [m[1][key] for m in members], "o-",
                    label=family, ms=4)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("L0")
        ax.set_title(label, fontsize=9)
    axes_list = list(axes) if len(metrics) > 1 else [axes]
    axes_list[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(table(results) + "\n")
    plot(results, out / "gsae.png")
