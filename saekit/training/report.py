"""After a training run: evaluate every SAE on held-out data and write the run's report.

report.html is the page `saekit report` writes (Pareto plots, densities, the comparison
table) with the run's own sections added: how much training saw (steps, tokens, passes over
the cache), the training curves (held-out FVU beside the training batch's), each SAE's most
frequent latents with their top contexts (from the feature browser's data, built here) and
the command that opens the browser. report.md says the same in text, and the console
summary is its table."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from saekit.training.run import RunSettings

TOP_LATENTS = 8  # latents shown per SAE
TOP_CONTEXTS = 3  # contexts shown per latent


@dataclass
class RunReport:
    markdown: Path
    html: Path
    curves: Path | None
    summary: str
    results: dict[str, dict[str, Any]]


def table(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    from saekit.evaluation.tables import run_summary_table

    return run_summary_table(results)


# ---- what training saw ------------------------------------------------------------------------


def read_metrics(path: Path) -> dict[str, list[dict[str, Any]]]:
    """metrics.jsonl rows by SAE name."""
    by_sae: dict[str, list[dict[str, Any]]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            by_sae.setdefault(row["sae"], []).append(row)
    return by_sae


def data_passes(metadata: dict[str, Any]) -> str:
    """How much of its data an SAE's training saw, from its saved metadata."""
    data, training = metadata.get("data", {}), metadata.get("training", {})
    seen = int(training.get("tokens", 0))
    if data.get("source") == "cache" and data.get("tokens"):
        cached = int(data["tokens"])
        return (
            f"{seen:,} training tokens = {seen / cached:.1f} passes over the "
            f"{cached:,}-token activation cache"
        )
    if data.get("source") == "synthetic":
        return f"{seen:,} training tokens, fresh synthetic samples (no repeats)"
    return f"{seen:,} training tokens streamed from the model (each seen once)"


def training_curves(by_sae: dict[str, list[dict[str, Any]]]) -> Figure | None:
    """FVU over training: the training batch (dashed) and the fixed held-out batch (solid),
    one colour per SAE; L0 and the dead fraction get a panel only when they change."""
    if not by_sae:
        return None
    panels = ["fvu"] + [
        key
        for key in ("l0", "dead_frac")
        if any(len({round(r[key], 6) for r in rows}) > 1 for rows in by_sae.values())
    ]
    fig = Figure(figsize=(5.2 * len(panels), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    for i, (name, rows) in enumerate(by_sae.items()):
        colour = f"C{i % 10}"
        tokens = [r["tokens"] for r in rows]
        axes[0].plot(
            tokens, [r["fvu"] for r in rows], "--", color=colour, label=f"{name} (training batch)"
        )
        held = [(r["tokens"], r["heldout_fvu"]) for r in rows if "heldout_fvu" in r]
        if held:
            axes[0].plot(*zip(*held), "-", color=colour, label=f"{name} (held-out)")
        for ax, key in zip(axes[1:], panels[1:]):
            ax.plot(tokens, [r[key] for r in rows], "-", color=colour, label=name)
    titles = {"fvu": "FVU", "l0": "L0 (training batch)", "dead_frac": "dead fraction"}
    for ax, key in zip(axes, panels):
        ax.set_title(titles[key])
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---- top latents ------------------------------------------------------------------------------


def build_browser(sae_dir: Path, n_contexts: int, corpus: str) -> Path:
    """The feature browser's data for an SAE on model data (what `saekit browse` serves),
    from held-out documents of the run's corpus."""
    from saekit.evaluation.sources import model_source
    from saekit.formats.native import load
    from saekit.viewer.build import BuildSettings, build

    sae = load(sae_dir)
    print(f"building the feature browser for {sae_dir.name} ({n_contexts} contexts) ...")
    settings = BuildSettings(corpus=corpus, n_contexts=n_contexts)
    return build(sae, model_source(sae), sae_dir / "browser", settings, sae_dir)


def top_latents(browser_dir: Path) -> list[dict[str, Any]]:
    """The most frequent latents: [{"id", "density", "contexts": [(text before, token, text
    after, activation)]}], from the browser's data."""
    from saekit.viewer.store import BrowserData

    data = BrowserData(browser_dir)
    rows = data.list_latents({"sort": "density", "per_page": str(TOP_LATENTS)})["rows"]
    out = []
    for row in rows:
        contexts = []
        for example in data.latent(row["id"])["top"][:TOP_CONTEXTS]:
            tokens, c = example["tokens"], example["center"]
            contexts.append(
                ("".join(tokens[:c]), tokens[c], "".join(tokens[c + 1 :]), example["acts"][c])
            )
        out.append({"id": row["id"], "density": row["density"], "contexts": contexts})
    return out


# ---- the report -------------------------------------------------------------------------------


def write_run_report(out: Path, settings: RunSettings, train_data: str) -> RunReport:
    """Evaluate every SAE in out/saes (eval.json beside each) and write report.html,
    report.md and training_curves.png."""
    from saekit.evaluation.comparison import write_report

    results = evaluate_run(out, settings, train_data)
    by_sae = read_metrics(out / "metrics.jsonl")
    curves = training_curves(by_sae)
    curves_path = out / "training_curves.png" if curves is not None else None
    if curves is not None:
        curves.savefig(curves_path)
    sections = [_run_section(out, settings, by_sae)]
    for name in results:
        section = _latents_section(
            out / "saes" / name, settings.run.browser_contexts, settings.capture.corpus
        )
        sections += [section] if section is not None else []
    page = write_report(
        {n: json.loads((out / "saes" / n / "eval.json").read_text()) for n in results},
        out / "report.html",
        title=f"saekit run: {out}",
    )
    _add_sections(page.html, curves_path, sections)
    header, rows = table(results)
    md = _markdown(out, header, rows, curves_path, sections)
    (out / "report.md").write_text(md)
    summary = "\n".join(
        ["  ".join(header), *("  ".join(r) for r in rows), *(s["text"] for s in sections)]
    )
    summary += f"\nreport:  {out / 'report.html'} and {out / 'report.md'}"
    return RunReport(out / "report.md", page.html, curves_path, summary, results)


def evaluate_run(out: Path, settings: RunSettings, train_data: str) -> dict[str, dict[str, Any]]:
    from saekit.data import open_stream, parse_data_spec
    from saekit.data.splits import HELDOUT
    from saekit.evaluation.evaluate import EvalSettings, evaluate_sae
    from saekit.evaluation.sources import model_source
    from saekit.formats.native import load

    results: dict[str, dict[str, Any]] = {}
    capture = settings.capture
    for sae_dir in sorted(p for p in (out / "saes").iterdir() if p.is_dir()):
        sae = load(sae_dir)
        data = parse_data_spec(train_data)
        if len(data.hookpoints) > 1:  # module-parallel over several hookpoints: this SAE's own
            data = data.with_hookpoint(sae.metadata["data"]["hookpoint"])
        kwargs = (
            {"corpus": capture.corpus, "ctx_len": capture.ctx_len} if data.kind == "model" else {}
        )
        stream = open_stream(
            data, settings.run.batch_size, seed=settings.run.seed, split=HELDOUT, **kwargs
        )
        # Model-derived SAEs also get the spliced-in CE/KL scores, on the run's own text.
        groups = ("core", "synthetic", "spliced") if model_source(sae) else ("core", "synthetic")
        eval_settings = EvalSettings(
            groups=groups,
            n_tokens=settings.run.eval_tokens,
            corpus=capture.corpus,
            ctx_len=capture.ctx_len,
        )
        results[sae_dir.name] = evaluate_sae(sae, stream, eval_settings, name=sae_dir.name)
        (sae_dir / "eval.json").write_text(json.dumps(results[sae_dir.name], indent=2) + "\n")
    return results


def _run_section(out: Path, settings: RunSettings, by_sae: dict[str, list[dict]]) -> dict:
    from saekit.formats.native import read_config

    lines = [
        f"Data: {settings.run.data}; {settings.train.steps} steps x {settings.run.batch_size} tokens."
    ]
    for name, rows in by_sae.items():
        meta = read_config(out / "saes" / name).get("metadata", {})
        model = (meta.get("data") or {}).get("model")
        if isinstance(model, dict) and model.get("weights"):
            line = f"Model: {model.get('name')} = {model['weights']}."
            lines += [line] if line not in lines else []
        last = rows[-1]
        held = f", held-out {last['heldout_fvu']:.4g}" if "heldout_fvu" in last else ""
        lines.append(
            f"{name}: {data_passes(meta)}; final FVU on the training batch {last['fvu']:.4g}{held}."
        )
    return {"title": "Training", "text": "\n".join(lines), "latents": None}


def _latents_section(sae_dir: Path, n_contexts: int, corpus: str) -> dict | None:
    """The SAE's most frequent latents and how to browse them all; None without a language
    model behind the SAE (synthetic data: no text to show)."""
    from saekit.evaluation.sources import model_source
    from saekit.formats.native import load

    if model_source(load(sae_dir)) is None:
        return None
    browse = f"saekit browse {sae_dir}"
    if n_contexts <= 0:
        text = f"Open the feature browser: {browse} (it builds its data on the first start)"
        return {"title": f"{sae_dir.name}: latents", "text": text, "latents": None}
    try:
        browser = build_browser(sae_dir, n_contexts, corpus)
    except OSError as e:  # the model is not here (no hub access, moved): say so, go on
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        text = f"No feature browser: its model cannot be loaded here ({why})"
        return {"title": f"{sae_dir.name}: latents", "text": text, "latents": None}
    return {
        "title": f"{sae_dir.name}: most frequent latents",
        "text": f"Open the feature browser: {browse} (its data is built: it starts at once)",
        "latents": top_latents(browser),
    }


def _context_html(before: str, token: str, after: str) -> str:
    e = html.escape
    return f"<code class=ctx>{e(before)}<mark>{e(token)}</mark>{e(after)}</code>"


def _section_html(section: dict) -> str:
    e = html.escape
    body = "".join(f"<p>{e(line)}</p>" for line in section["text"].splitlines())
    for latent in section["latents"] or []:
        contexts = "".join(
            f"<li>{_context_html(b, t, a)} <span class=muted>{v:.3g}</span></li>"
            for b, t, a, v in latent["contexts"]
        )
        body += (
            f"<h3>latent {latent['id']} <span class=muted>fires on "
            f"{latent['density']:.2%} of tokens</span></h3><ul>{contexts}</ul>"
        )
    return f"<h2>{e(section['title'])}</h2>{body}"


STYLE = (
    "<style>code.ctx{white-space:pre-wrap;background:#fff;border:1px solid #e3e6ee;"
    "padding:1px 4px}mark{background:#ffd76a}h3{font-size:14px;margin:14px 0 4px}</style>"
)


def _add_sections(page: Path, curves: Path | None, sections: list[dict]) -> None:
    """The run's sections, inserted at the end of the comparison page's main column."""
    text = page.read_text(encoding="utf-8")
    added = [_section_html(sections[0])]
    if curves is not None:
        png = base64.b64encode(curves.read_bytes()).decode()
        added.append(
            f'<figure id="fig-training"><img alt="training curves" src="data:image/png;base64,{png}">'
            "<figcaption><b>Training curves.</b> FVU on each training batch (dashed) and on a "
            "fixed held-out batch (solid); L0 and dead fraction when they change.</figcaption></figure>"
        )
    added += [_section_html(s) for s in sections[1:]]
    page.write_text(
        text.replace("</main>", STYLE + "".join(added) + "</main>", 1), encoding="utf-8"
    )


def _markdown(out, header, rows, curves, sections) -> str:
    md = [f"# saekit run: {out}", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    if curves is not None:
        md += [f"![training curves]({curves.name})", ""]
    for section in sections:
        md += [f"## {section['title']}", "", *section["text"].splitlines(), ""]
        for latent in section["latents"] or []:
            md.append(f"- latent {latent['id']} ({latent['density']:.2%} of tokens):")
            md += [
                f"  - `{(b + '⟦' + t + '⟧' + a).replace(chr(10), '⏎')}` ({v:.3g})"
                for b, t, a, v in latent["contexts"]
            ]
        md.append("")
    return "\n".join(md)
