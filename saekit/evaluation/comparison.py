"""`saekit report`: one self-contained HTML page comparing SAEs from their eval JSONs.

Figures (written as PNGs beside the page and embedded in it as data URIs, so the page alone
can be mailed around): L0 vs FVU and L0 vs CE score Pareto plots, log-density histograms,
probing curves (test AUC vs k, with the raw-activation baselines), adaptive-sparsity curves
(FVU vs realised inference L0 and vs budget), ΔCE per inference mode, the steering effect
and the ZF plot. A figure whose metric no SAE has is left out. Each figure is a `FigureSpec`
whose `draw(ax, docs)` fills one matplotlib Axes; its table is tables.SUMMARY.
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

from saekit.evaluation.afa import BANDS as AFA_BANDS
from saekit.evaluation.base import CONVENTIONS
from saekit.evaluation.tables import summary_table

Doc = dict[str, Any]

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


def _get(doc: Doc, group: str, key: str) -> Any:
    return (doc.get(group) or {}).get(key)


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


def _lines(ax: Axes, families: dict[str, list[tuple[float, float, str]]]) -> bool:
    """One line per family through its (x, y, point label) triples sorted by x, each point
    annotated; False when there is nothing to draw."""
    drawn = False
    for i, (family, pts) in enumerate(families.items()):
        if not pts:
            continue
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=_colour(i), label=family,
                ms=6, lw=1.5)  # fmt: skip
        for x, y, n in pts:
            ax.annotate(
                n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color="#444"
            )
        drawn = True
    ax.margins(x=0.15, y=0.12)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def _pareto(ax: Axes, docs: dict[str, Doc], group: str, key: str, ylabel: str) -> bool:
    """`group.key` against the core L0, one line per architecture."""
    families: dict[str, list[tuple[float, float, str]]] = {}
    for name, d in docs.items():
        x, y = _get(d, "core", "l0"), _get(d, group, key)
        families.setdefault(_arch(d), [])
        if x is not None and y is not None:
            families[_arch(d)].append((x, y, name))
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(ylabel)
    return _lines(ax, families)


def _conventions(docs: dict[str, Doc]) -> list[str]:
    """The spliced conventions the documents used (docs/eval-schema.md)."""
    return sorted({str(c) for d in docs.values() if (c := _get(d, "spliced", "convention"))})


def _draw_fvu(ax: Axes, docs: dict[str, Doc]) -> bool:
    drawn = _pareto(ax, docs, "core", "fvu", "FVU = 1 − explained variance (lower is better)")
    ys = [d["core"]["fvu"] for d in docs.values() if (d.get("core") or {}).get("fvu")]
    if ys and max(ys) / max(min(ys), 1e-12) > 20:
        ax.set_yscale("log")
    return drawn


def _draw_ce(ax: Axes, docs: dict[str, Doc]) -> bool:
    label = f"CE loss score, {', '.join(_conventions(docs))} convention (higher is better)"
    return _pareto(ax, docs, "spliced", "ce_loss_score", label)


def _draw_spliced_variants(ax: Axes, docs: dict[str, Doc]) -> bool:
    """ΔCE against L0 on the spliced tokens, one line per (architecture, inference mode),
    when some SAE has several modes (g-SAE: label-free "topk" beside label-informed
    "gradient")."""
    if not any(len(_get(d, "spliced", "variants") or {}) > 1 for d in docs.values()):
        return False
    families: dict[str, list[tuple[float, float, str]]] = {}
    for name, d in docs.items():
        for variant, v in (_get(d, "spliced", "variants") or {}).items():
            family = _arch(d) if variant == "sae" else f"{_arch(d)} {variant}"
            family += " (label-informed)" if v.get("label_informed") else ""
            if v.get("l0") is not None and v.get("delta_ce") is not None:
                families.setdefault(family, []).append((v["l0"], v["delta_ce"], name))
    ax.set_xlabel("L0 on the spliced tokens")
    ax.set_ylabel(f"ΔCE = CE_spliced − CE_clean, {', '.join(_conventions(docs))} convention")
    return _lines(ax, families)


def _draw_steering(ax: Axes, docs: dict[str, Doc]) -> bool:
    return _pareto(ax, docs, "steering", "mean_logit_shift_per_norm", "steering Δlogit / α (mean)")


def _draw_zf(ax: Axes, docs: dict[str, Doc]) -> bool:
    """‖f̃‖ against ‖x‖ per token (afa's sample), with y = x and the ε(h−1) bands."""
    hi = 0.0
    for i, (name, d) in enumerate(docs.items()):
        z = _get(d, "afa", "zf_sample")
        if not z or not z["input_norm"]:
            continue
        ax.scatter(z["input_norm"], z["code_norm"], s=3, alpha=0.4, color=_colour(i), label=name)
        hi = max(hi, *z["input_norm"], *z["code_norm"])
    if hi == 0:
        return False
    grid = [hi * 1.05 * t / 50 for t in range(51)]
    ax.plot(grid, grid, color="black", lw=1, label="‖f̃‖ = ‖x‖")
    for c, colour in zip(AFA_BANDS, ("tab:green", "tab:orange", "tab:red")):
        ax.plot(grid, [g / math.sqrt(1 + c) for g in grid], color=colour, lw=0.8, ls="--",
                label=f"ε(h−1) = {c:g}")  # fmt: skip
        if c < 1:
            ax.plot(grid, [g / math.sqrt(1 - c) for g in grid], color=colour, lw=0.8, ls="--")
    ax.set_xlim(0, hi * 1.05)
    ax.set_ylim(0, hi * 1.05)
    ax.set_xlabel("input norm ‖x‖")
    ax.set_ylabel("code norm ‖f̃‖ (decoder-norm scaled, with ‖b_dec‖)")
    ax.legend(fontsize=7, loc="upper left")
    return True


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


def _adaptive_curves(ax: Axes, docs: dict[str, Doc], relative: bool) -> bool:
    """Every setting's FVU curve of every SAE against realised L0 (relative=False) or the
    budget as a multiple of the training one; the star marks the training budget."""
    drawn = False
    for i, (name, d) in enumerate(docs.items()):
        for curve in (_get(d, "adaptive", "curves") or {}).values():
            pts = sorted(curve["points"], key=lambda p: p["value"])
            train = curve["train_value"]
            xs = [p["value"] / train if relative else p["l0"] for p in pts]
            style = "--" if curve["setting"] == "mp_threshold" else "-"
            ax.plot(xs, [p["fvu"] for p in pts], style, color=_colour(i),
                    label=f"{name}: {curve['setting']}")  # fmt: skip
            star = 1.0 if relative else curve["l0_at_train"]
            if star is not None and curve["fvu_at_train"] is not None:
                ax.plot([star], [curve["fvu_at_train"]], "*", color=_colour(i), ms=12, mec="k",
                        mew=0.5)  # fmt: skip
            drawn = True
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(
        "inference budget / training budget (T, k, or θ divisor)"
        if relative
        else "realised inference L0 (distinct active latents per token)"
    )
    ax.set_ylabel("FVU (held-out)")
    ax.grid(alpha=0.3, which="both")
    if drawn:
        ax.legend(fontsize=7)
    return drawn


def _draw_adaptive(ax: Axes, docs: dict[str, Doc]) -> bool:
    return _adaptive_curves(ax, docs, relative=False)


def _draw_adaptive_budget(ax: Axes, docs: dict[str, Doc]) -> bool:
    return _adaptive_curves(ax, docs, relative=True)


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
        "FVU against the realised L0 when the inference budget (k, pursuit steps, threshold) differs "
        "from training; dashed: MP with a residual stop; the star marks the training budget.",
        _draw_adaptive,
    ),
    FigureSpec(
        "adaptive_budget",
        "Adaptive sparsity by budget",
        "The same curves against the inference budget as a multiple of the training budget.",
        _draw_adaptive_budget,
    ),
    FigureSpec(
        "spliced_variants",
        "Inference modes in the model loop",
        "ΔCE with the SAE spliced in, per inference mode. A g-SAE's gradient mode reads ∂CE/∂x of "
        "the very tokens it is scored on, so it sees the labels (label-informed); its topk mode "
        "does not.",
        _draw_spliced_variants,
    ),
    FigureSpec(
        "steering",
        "Steering effect",
        "Mean centred logit change per unit steering norm when one decoder atom is added at one "
        "position (α = κ · median ‖x‖, the same for every SAE).",
        _draw_steering,
    ),
    FigureSpec(
        "zf",
        "Code norm vs input norm (ZF plot)",
        "Per token, ‖f̃‖ (codes on unit atoms, with ‖b_dec‖ as one more atom) against ‖x‖; above "
        "the diagonal is over-activation, below under-activation; dashed: y = x/√(1 ± ε(h−1)).",
        _draw_zf,
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
    header, rows = summary_table(docs)
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
    conventions = "".join(
        f"CE/KL positions, {c} convention: {CONVENTIONS[c]}. "
        for c in _conventions(docs)
        if c in CONVENTIONS
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
<p class="muted">FVU = 1 − EV (centred); CE/KL scores use zero ablation unless marked;
{e(conventions)}"capped": share of tokens where top-AFA's k_max cap bound; "AUC k": k-sparse
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


__all__ = ["FIGURES", "FigureSpec", "Report", "load_docs", "write_report"]
