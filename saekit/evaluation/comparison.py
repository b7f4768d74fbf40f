"""`saekit report`: one self-contained HTML page comparing SAEs from their eval JSONs.

Figures (written as PNGs beside the page and embedded in it as data URIs, so the page alone
can be mailed around): L0 vs FVU and L0 vs CE score Pareto plots, log-density histograms,
probing curves (test AUC vs k, with the raw-activation baselines), adaptive-sparsity curves
(FVU vs realised inference L0). A figure whose metric no SAE has is left out.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Doc = dict[str, Any]

# (label, group, key, format): the comparison table.
TABLE = [
    ("arch", "sae", "architecture", "s"),
    ("latents", "sae", "n_latents", "d"),
    ("L0", "core", "l0", ".3g"),
    ("FVU", "core", "fvu", ".4g"),
    ("cos", "core", "cosine", ".4f"),
    ("L2 ratio", "core", "l2_ratio", ".3f"),
    ("dead", "core", "frac_dead", ".1%"),
    (">1% freq", "core", "frac_dense_1pct", ".1%"),
    ("CE score", "spliced", "ce_loss_score", ".4f"),
    ("CE (mean abl.)", "spliced", "ce_loss_score_mean_ablation", ".4f"),
    ("ΔCE", "spliced", "delta_ce", ".4f"),
    ("KL score", "spliced", "kl_div_score", ".4f"),
    ("MCC", "synthetic", "hungarian_mcc", ".3f"),
    ("MMCS", "synthetic", "mmcs_gt_to_learned", ".3f"),
    ("AUC k=1", "probing", ("mean", "sae_top_1_test_auc"), ".3f"),
    ("AUC k=16", "probing", ("mean", "sae_top_16_test_auc"), ".3f"),
    ("lookup r", "interp", "mean_simulator_r", ".3f"),
    ("FVU @2×", "adaptive", None, ".4g"),
]
COLOURS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
]


def load_docs(paths: list[Path]) -> dict[str, Doc]:
    """Eval documents by SAE name from: eval JSON files, SAE directories (their eval.json),
    run directories (saes/*/eval.json) or an `saekit eval --out` file holding several."""
    docs: dict[str, Doc] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir() and (path / "eval.json").is_file():
            _add(docs, path.name, json.loads((path / "eval.json").read_text()))
        elif path.is_dir() and (path / "saes").is_dir():
            for sub in sorted((path / "saes").iterdir()):
                if (sub / "eval.json").is_file():
                    _add(docs, sub.name, json.loads((sub / "eval.json").read_text()))
        elif path.is_file():
            data = json.loads(path.read_text())
            if "core" in data or data.get("schema") == "saekit-eval":
                _add(docs, path.stem, data)
            else:  # {name: doc} from `saekit eval --out`
                for name, doc in data.items():
                    _add(docs, Path(name).name, doc)
        else:
            raise FileNotFoundError(
                f"{path}: not an eval JSON, an SAE directory with eval.json or a run directory"
            )
    if not docs:
        raise ValueError("no eval results found; run `saekit eval` first")
    return docs


def _add(docs: dict[str, Doc], name: str, doc: Doc) -> None:
    name = (doc.get("sae") or {}).get("name") or name
    base, i = name, 2
    while name in docs:  # two SAEs called "topk" from different runs stay apart
        name, i = f"{base} ({i})", i + 1
    docs[name] = doc


# ---- table ------------------------------------------------------------------------------------


def _value(doc: Doc, group: str, key: Any) -> Any:
    if group == "adaptive" and key is None:
        a = doc.get("adaptive") or {}
        pts = {p.get(a.get("knob")): p["fvu"] for p in a.get("points", [])}
        return pts.get(2 * a["train_value"]) if a.get("train_value") else None
    section = doc.get(group) or {}
    for k in key if isinstance(key, tuple) else (key,):
        section = section.get(k) if isinstance(section, dict) else None
    return section


def _format(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if spec in ("s", "d"):
        return str(v)
    return format(v, spec)


def table(docs: dict[str, Doc]) -> tuple[list[str], list[list[str]]]:
    """Header and rows; a column no SAE has is dropped."""
    cols = [c for c in TABLE if any(_value(d, c[1], c[2]) is not None for d in docs.values())]
    header = ["SAE", *(c[0] for c in cols)]
    rows = [
        [name, *(_format(_value(d, g, k), f) for _, g, k, f in cols)] for name, d in docs.items()
    ]
    return header, rows


# ---- figures ----------------------------------------------------------------------------------


@dataclass
class FigureSpec:
    name: str
    title: str
    caption: str
    draw: Callable[[Axes, dict[str, Doc]], bool]  # False = nothing to draw


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _arch(doc: Doc) -> str:
    return (doc.get("sae") or {}).get("architecture") or "?"


def _by_architecture(docs: dict[str, Doc]) -> dict[str, list[tuple[str, Doc]]]:
    groups: dict[str, list[tuple[str, Doc]]] = {}
    for name, d in docs.items():
        groups.setdefault(_arch(d), []).append((name, d))
    return groups


def _pareto(ax: Axes, docs: dict[str, Doc], group: str, key: str, ylabel: str) -> bool:
    drawn = False
    # An architecture's line takes the colour of its first SAE, as in the per-SAE figures.
    first = {}
    for n, name in enumerate(docs):
        first.setdefault(_arch(docs[name]), n)
    for arch, items in _by_architecture(docs).items():
        pts = sorted(
            (d["core"]["l0"], _value(d, group, key), name)
            for name, d in items
            if (d.get("core") or {}).get("l0") is not None and _value(d, group, key) is not None
        )
        if not pts:
            continue
        xs, ys, names = zip(*pts)
        ax.plot(xs, ys, "o-", color=_colour(first[arch]), label=arch, ms=6, lw=1.5)
        for x, y, n in pts:
            ax.annotate(
                n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color="#444"
            )
        drawn = True
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, title="architecture", title_fontsize=8)
    return drawn


def _draw_fvu(ax: Axes, docs: dict[str, Doc]) -> bool:
    drawn = _pareto(ax, docs, "core", "fvu", "FVU = 1 − explained variance (lower is better)")
    ys = [d["core"]["fvu"] for d in docs.values() if (d.get("core") or {}).get("fvu")]
    if ys and max(ys) / max(min(ys), 1e-12) > 20:
        ax.set_yscale("log")
    return drawn


def _draw_ce(ax: Axes, docs: dict[str, Doc]) -> bool:
    return _pareto(ax, docs, "spliced", "ce_loss_score", "CE loss score (higher is better)")


def _draw_density(ax: Axes, docs: dict[str, Doc]) -> bool:
    drawn = False
    for i, (name, d) in enumerate(docs.items()):
        h = d.get("density")
        if not h:
            continue
        alive = sum(h["counts"])
        label = f"{name} ({h['n_dead']} dead of {h['n_latents']})"
        ax.stairs(h["counts"], h["log10_edges"], color=_colour(i), lw=1.6, label=label, fill=False)
        drawn = drawn or alive > 0
    ax.set_xlabel("log10 firing density (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
        lo = min(
            e
            for d in docs.values()
            if d.get("density")
            for e, c in zip(d["density"]["log10_edges"], d["density"]["counts"])
            if c
        )
        ax.set_xlim(left=math.floor(lo) - 0.5, right=0.1)
    return drawn


def _curve(result: dict[str, Any]) -> tuple[list[int], list[float]]:
    ks = sorted(int(k) for k in result)
    return ks, [result[str(k)]["test_auc"] for k in ks]


def _mean_curve(datasets: dict[str, Any], source: str) -> tuple[list[int], list[float]]:
    per_k: dict[int, list[float]] = {}
    for d in datasets.values():
        for k, v in (d.get(source) or {}).items():
            if v.get("test_auc") is not None:
                per_k.setdefault(int(k), []).append(v["test_auc"])
    ks = sorted(per_k)
    return ks, [sum(per_k[k]) / len(per_k[k]) for k in ks]


def _draw_probing(ax: Axes, docs: dict[str, Doc]) -> bool:
    first: dict[str, Any] | None = None  # baselines: the same for every SAE on one hookpoint
    for i, (name, d) in enumerate(docs.items()):
        datasets = (d.get("probing") or {}).get("datasets")
        if not datasets:
            continue
        ks, aucs = _mean_curve(datasets, "sae")
        ax.plot(ks, aucs, "o-", color=_colour(i), label=name, ms=4)
        first = first or datasets
    if first is None:
        return False
    ks, aucs = _mean_curve(first, "raw")
    ax.plot(ks, aucs, "s--", color="#333", label="raw activations (top-k dims)", ms=3)
    dense = [v["raw_dense_l2"]["test_auc"] for v in first.values() if v.get("raw_dense_l2")]
    if dense:
        ax.axhline(sum(dense) / len(dense), color="#888", ls=":", label="raw, dense L2 probe")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (latents in the probe)")
    ax.set_ylabel("test AUC, mean over datasets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return True


def _draw_adaptive(ax: Axes, docs: dict[str, Doc]) -> bool:
    drawn = False
    for i, (name, d) in enumerate(docs.items()):
        a = d.get("adaptive") or {}
        pts = a.get("points")
        if not pts:
            continue
        knob = a.get("knob", "k")
        ax.plot(
            [p["l0"] for p in pts],
            [p["fvu"] for p in pts],
            "o-" if len(pts) <= 16 else "-",  # dense sweeps (every k) read better as a line
            color=_colour(i),
            ms=4,
            label=f"{name} ({knob})",
        )
        train = [p for p in pts if p.get(knob) == a.get("train_value")]
        if train:
            ax.plot(
                [train[0]["l0"]], [train[0]["fvu"]], "*", color=_colour(i), ms=14, mec="k", mew=0.6
            )
        drawn = True
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("realised inference L0")
    ax.set_ylabel("FVU")
    ax.grid(alpha=0.3, which="both")
    if drawn:
        ax.legend(fontsize=7)
    return drawn


FIGURES = [
    FigureSpec(
        "pareto_fvu",
        "Sparsity vs reconstruction",
        "Held-out FVU against L0; one line per architecture, sorted by L0. Down and left is better.",
        _draw_fvu,
    ),
    FigureSpec(
        "pareto_ce",
        "Sparsity vs downstream loss",
        "CE loss score with the SAE spliced in (1 = clean model, 0 = zero ablation). Up and left is better.",
        _draw_ce,
    ),
    FigureSpec(
        "density",
        "Latent firing densities",
        "Histogram of log10 firing density over alive latents; dead latents are counted in the legend.",
        _draw_density,
    ),
    FigureSpec(
        "probing",
        "k-sparse probing",
        "Test AUC of L1 probes on the top-k latents (sae-probes tasks, last token), against the same "
        "probe on raw activation dimensions and a dense L2 probe.",
        _draw_probing,
    ),
    FigureSpec(
        "adaptive",
        "Adaptive sparsity",
        "FVU when the inference budget (k or pursuit steps) differs from training; the star marks the "
        "training budget.",
        _draw_adaptive,
    ),
]


def render_figure(spec: FigureSpec, docs: dict[str, Doc], path: Path) -> Path | None:
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not spec.draw(ax, docs):
        return None
    ax.set_title(spec.title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---- page -------------------------------------------------------------------------------------


CSS = """
body{font:14px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2330;background:#f7f8fb;margin:0}
main{max-width:1320px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.muted{color:#6b7385}
.tablewrap{overflow-x:auto;background:#fff;border:1px solid #e3e6ee;border-radius:8px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 8px;border-bottom:1px solid #eceff5;text-align:right;white-space:nowrap;font-size:13px}
th{background:#f1f3f8;font-size:12px;color:#374151;position:sticky;top:0}
td:first-child,th:first-child{text-align:left;font-weight:600}
tr:hover td{background:#fafbff}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:18px}
figure{margin:0;background:#fff;border:1px solid #e3e6ee;border-radius:8px;padding:10px}
figure img{width:100%;height:auto}
figcaption{font-size:13px;color:#4b5263;padding:4px 6px}
ul.skips{font-size:13px;color:#4b5263}
"""


@dataclass
class Report:
    html: Path
    figures: list[Path]


def write_report(docs: dict[str, Doc], out: str | Path, title: str = "SAE comparison") -> Report:
    """Write `out` (an .html path) and its PNGs (`<stem>_<figure>.png` beside it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[FigureSpec, Path]] = []
    for spec in FIGURES:
        path = render_figure(spec, docs, out.with_name(f"{out.stem}_{spec.name}.png"))
        if path is not None:
            figures.append((spec, path))
    header, rows = table(docs)
    page = _page(title, docs, header, rows, figures)
    out.write_text(page, encoding="utf-8")
    return Report(out, [p for _, p in figures])


def _page(
    title: str,
    docs: dict[str, Doc],
    header: list[str],
    rows: list[list[str]],
    figures: list[tuple[FigureSpec, Path]],
) -> str:
    e = html.escape
    thead = "".join(f"<th>{e(h)}</th>" for h in header)
    tbody = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    figs = "".join(
        f'<figure id="fig-{spec.name}"><img alt="{e(spec.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption><b>{e(spec.title)}.</b> '
        f"{e(spec.caption)}</figcaption></figure>"
        for spec, path in figures
    )
    skips = sorted(
        {f"{g}: {why}" for d in docs.values() for g, why in (d.get("skipped") or {}).items()}
    )
    skip_html = (
        (
            "<h2>Not computed</h2><ul class=skips>"
            + "".join(f"<li>{e(s)}</li>" for s in skips)
            + "</ul>"
        )
        if skips
        else ""
    )
    sources = sorted({_data_label(d) for d in docs.values()})
    tokens = sorted(
        {int(d["core"]["n_tokens"]) for d in docs.values() if (d.get("core") or {}).get("n_tokens")}
    )
    created = sorted(
        {(d.get("environment") or {}).get("created", "") for d in docs.values()} - {""}
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{e(title)}</h1>
<p class="muted">{len(docs)} SAE(s) · data: {e(", ".join(sources))} · held-out tokens: {e(", ".join(map(str, tokens)) or "–")}
{" · evaluated " + e(created[-1]) if created else ""}</p>
<h2>Summary</h2>
<div class="tablewrap"><table id="summary"><thead><tr>{thead}</tr></thead><tbody>{tbody}</tbody></table></div>
<p class="muted">FVU = 1 − EV (centred); CE/KL scores use zero ablation unless marked; "AUC k": k-sparse
probe test AUC, mean over the sae-probes datasets evaluated;
"lookup r": the token/bigram-lookup simulator's Pearson r (LLM-free proxy); "FVU @2×": at twice the training
k / steps / threshold budget. Definitions: docs/eval-schema.md.</p>
<h2>Figures</h2>
<div class="figs">{figs or '<p class="muted">No metric to plot.</p>'}</div>
{skip_html}
</main></body></html>
"""


def _data_label(doc: Doc) -> str:
    data = doc.get("data") or {}
    src = data.get("model_source")
    if src:
        return f"{src.get('model')} @ {src.get('hookpoint')}"
    stream = data.get("stream") or {}
    recipe = stream.get("recipe")
    if recipe:
        return f"synthetic {recipe.get('name', '')}".strip()
    return stream.get("source", "?") if stream else "?"


__all__ = ["FIGURES", "Report", "load_docs", "table", "write_report"]
