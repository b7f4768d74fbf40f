"""`saekit report`: one self-contained HTML page (+ PNGs) comparing evaluated SAEs."""

from __future__ import annotations

from pathlib import Path

from saekit.cli.common import path_arg


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write an HTML page comparing SAEs (Pareto plots, densities, probing, table)",
        description="Compare SAEs from their eval results (run 'saekit eval' first): Pareto plots "
        "of L0 vs FVU and vs CE score, density histograms, probing and adaptive-sparsity curves, "
        "and a table, in one self-contained HTML page with its PNGs beside it.",
    )
    p.add_argument(
        "inputs",
        type=path_arg,
        nargs="+",
        help="SAE directories (with eval.json), run directories (saes/*/eval.json) or "
        "eval JSON files (including 'saekit eval --out' files)",
    )
    p.add_argument(
        "-o",
        "--out",
        type=path_arg,
        default=Path("report.html"),
        help="HTML file to write (default report.html); PNGs go beside it",
    )
    p.add_argument("--title", default="SAE comparison")


def run(args) -> int:
    from saekit.evaluation.comparison import load_docs, write_report

    docs = load_docs(args.inputs)
    report = write_report(docs, args.out, args.title)
    print(f"report: {report.html} ({len(docs)} SAEs, {len(report.figures)} figures)")
    for fig in report.figures:
        print(f"  {fig}")
    return 0
