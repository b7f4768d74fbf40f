"""`saekit report`: one self-contained HTML page (+ PNGs) comparing evaluated SAEs."""

from __future__ import annotations

from pathlib import Path

from saekit.cli.common import UsageError, path_arg


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


# Sections of an eval document (docs/eval-schema.md) that must be objects when present.
EVAL_SECTIONS = ("sae", "data", "core", "synthetic", "spliced", "adaptive", "probing", "afa",
                 "interp", "skipped", "saebench")  # fmt: skip


def read_eval_json(path: Path) -> dict:
    """An eval.json checked by schema: one line naming the file on any damage."""
    from saekit.cli.common import UsageError
    from saekit.formats.jsonfile import read_json

    doc = read_json(path, "an eval result", UsageError)
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a JSON object")
    for key in EVAL_SECTIONS:
        if key in doc and not isinstance(doc[key], dict):
            raise UsageError(f"{path}: '{key}' must be an object")
    for key, value in doc.get("core", {}).items():
        if value is not None and not isinstance(value, int | float | list | dict):
            raise UsageError(f"{path}: core.{key} must be a number, got {value!r}")
    return doc


def _eval_files(inputs: list[Path]) -> list[Path]:
    files = []
    for path in inputs:
        if path.is_dir() and (path / "eval.json").is_file():
            files.append(path / "eval.json")
        elif path.is_dir() and (path / "saes").is_dir():
            files += sorted(
                p / "eval.json" for p in (path / "saes").iterdir() if (p / "eval.json").is_file()
            )
        elif path.is_file():
            files.append(path)
    return files


def run(args) -> int:
    from saekit.evaluation.comparison import load_docs, write_report

    for path in _eval_files(args.inputs):
        doc = read_eval_json(path)
        if "core" not in doc and doc.get("schema") != "saekit-eval":  # {name: doc} (eval --out)
            for name, sub in doc.items():
                if not isinstance(sub, dict):
                    raise UsageError(f"{path}: entry {name!r} must be an eval object")
    docs = load_docs(args.inputs)
    report = write_report(docs, args.out, args.title)
    print(f"report: {report.html} ({len(docs)} SAEs, {len(report.figures)} figures)")
    for fig in report.figures:
        print(f"  {fig}")
    return 0
