"""After a training run: evaluate every SAE on held-out data and write report.md,
report.html and the training-curve plot."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunReport:
    markdown: Path
    html: Path
    plot: Path | None
    summary: str
    results: dict[str, dict[str, Any]]


def table(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    from saekit.evaluation.tables import run_summary_table

    return run_summary_table(results)


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics_path.is_file():
        return None
    by_sae: dict[str, list[dict]] = {}
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        by_sae.setdefault(row["sae"], []).append(row)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, rows in by_sae.items():
        tokens = [r["tokens"] for r in rows]
        for ax, key in zip(axes, ("fvu", "l0", "dead_frac")):
            ax.plot(tokens, [r[key] for r in rows], label=name)
    for ax, title in zip(axes, ("FVU (training batch)", "L0", "dead fraction")):
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_run_report(out: Path, settings: dict[str, Any], eval_tokens: int) -> RunReport:
    from saekit.data import open_stream, parse_data_spec
    from saekit.evaluation.evaluate import EvalSettings, evaluate_sae, model_source
    from saekit.formats.native import load

    results: dict[str, dict[str, Any]] = {}
    for sae_dir in sorted(p for p in (out / "saes").iterdir() if p.is_dir()):
        sae = load(sae_dir)
        data = parse_data_spec(settings.get("train_data", settings["data"]))
        if len(data.hookpoints) > 1:  # module-parallel over several hookpoints: this SAE's own
            data = data.with_hookpoint(sae.metadata["data"]["hookpoint"])
        stream = open_stream(
            data,
            batch_size=int(settings["batch_size"]),
            seed=int(settings["seed"]),
            split="heldout",
        )
        # Model-derived SAEs also get the spliced-in CE/KL scores.
        groups = ("core", "synthetic", "spliced") if model_source(sae) else ("core", "synthetic")
        results[sae_dir.name] = evaluate_sae(
            sae, stream, EvalSettings(groups=groups, n_tokens=eval_tokens), name=sae_dir.name
        )
        (sae_dir / "eval.json").write_text(json.dumps(results[sae_dir.name], indent=2) + "\n")
    plot = plot_curves(out / "metrics.jsonl", out / "training_curves.png")
    header, rows = table(results)
    md_table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    md = [
        f"# saekit run: {out}",
        "",
        f"Data: `{settings['data']}`; {settings['steps']} steps x {settings['batch_size']} tokens; "
        f"evaluated on {eval_tokens} held-out tokens.",
        "",
        md_table,
        "",
    ]
    if plot:
        md += [f"![training curves]({plot.name})", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))
    html_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>saekit run</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>saekit run</h1><p>Data: <code>{html.escape(str(settings["data"]))}</code>;
{settings["steps"]} steps &times; {settings["batch_size"]} tokens; {eval_tokens} held-out tokens.</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>{html_rows}</table>
{f'<p><img src="{plot.name}" style="max-width:100%"></p>' if plot else ""}
</body></html>"""
    html_path = out / "report.html"
    html_path.write_text(page)
    summary = "\n".join(["  ".join(header)] + ["  ".join(r) for r in rows])
    return RunReport(md_path, html_path, plot, summary, results)
