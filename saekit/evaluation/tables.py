"""Every results table: its columns, the rows it reads from eval documents, and one renderer
(Markdown, or aligned plain text for a terminal).

A table is a list of `Column`s over named rows (dicts: an eval document, or a row derived
from one, such as one spliced variant or one adaptive setting); a column no row has is
dropped, a missing or non-finite cell shows "–". Definitions of every number:
docs/eval-schema.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]
Table = tuple[list[str], list[list[str]]]  # header, rows of cells


@dataclass(frozen=True)
class Column:
    """label: the header. key: a path into the row (("core", "fvu")) or a function of the
    row. fmt: a format spec (".4g", ".1%") or "s" for the value as text."""

    label: str
    key: tuple[str, ...] | Callable[[Row], Any]
    fmt: str = "s"

    def value(self, row: Row) -> Any:
        if callable(self.key):
            return self.key(row)
        value: Any = row
        for part in self.key:
            value = value.get(part) if isinstance(value, Mapping) else None
        return value


def cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return str(value) if fmt == "s" else format(value, fmt)


def build(rows: Mapping[str, Row], columns: Sequence[Column], first: str = "SAE") -> Table:
    """Header and cells; the first column is the row's name."""
    present = [c for c in columns if any(c.value(r) is not None for r in rows.values())]
    header = [first, *(c.label for c in present)]
    return header, [[name, *(cell(c.value(r), c.fmt) for c in present)] for name, r in rows.items()]


def markdown(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def text(table: Table) -> str:
    header, rows = table
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]
    )


# ---- one row per SAE --------------------------------------------------------------------------


SUMMARY = [
    Column("arch", ("sae", "architecture")),
    Column("latents", ("sae", "n_latents")),
    Column("L0", ("core", "l0"), ".3g"),
    Column("FVU", ("core", "fvu"), ".4g"),
    Column("cos", ("core", "cosine"), ".4f"),
    Column("L2 ratio", ("core", "l2_ratio"), ".3f"),
    Column("dead", ("core", "frac_dead"), ".1%"),
    Column(">1% freq", ("core", "frac_dense_1pct"), ".1%"),
    Column("capped", ("core", "selection", "cap_frac"), ".1%"),
    Column("CE score", ("spliced", "ce_loss_score"), ".4f"),
    Column("CE (mean abl.)", ("spliced", "ce_loss_score_mean_ablation"), ".4f"),
    Column("ΔCE", ("spliced", "delta_ce"), ".4f"),
    Column("KL score", ("spliced", "kl_div_score"), ".4f"),
    Column("CE/KL convention", ("spliced", "convention")),
    Column("MCC", ("synthetic", "hungarian_mcc"), ".3f"),
    Column("MMCS", ("synthetic", "mmcs_gt_to_learned"), ".3f"),
    Column("AUC k=1", ("probing", "mean", "sae_top_1_test_auc"), ".3f"),
    Column("AUC k=16", ("probing", "mean", "sae_top_16_test_auc"), ".3f"),
    Column("lookup r", ("interp", "mean_simulator_r"), ".3f"),
    Column("FVU @2×", ("adaptive", "fvu_at_2x"), ".4g"),
]

# The training run's headline (report.md / report.html of `saekit train`).
RUN_SUMMARY = [
    Column("FVU", ("core", "fvu"), ".4g"),
    Column("L0", ("core", "l0"), ".4g"),
    Column("dead frac", ("core", "frac_dead"), ".4g"),
    Column("cos(x, x̂)", ("core", "cosine"), ".4g"),
    Column("capped", ("core", "selection", "cap_frac"), ".4g"),
    Column("MMCS", ("synthetic", "mmcs_gt_to_learned"), ".4g"),
    Column("MCC", ("synthetic", "hungarian_mcc"), ".4g"),
    Column("FRR@0.9", ("synthetic", "frr_0.9"), ".4g"),
    Column("CE score", ("spliced", "ce_loss_score"), ".4g"),
    Column("KL score", ("spliced", "kl_div_score"), ".4g"),
    Column("CE/KL convention", ("spliced", "convention")),
]

AFA = [
    Column("ε_LBO width (median)", ("afa", "median_eps_lbo_width"), ".3g"),
    Column("ε_LBO active (median)", ("afa", "median_eps_lbo_active"), ".3g"),
    Column("ε_LBO ℓ1 (median)", ("afa", "median_eps_lbo_l1"), ".3g"),
    Column("over", ("afa", "frac_over_activated"), ".1%"),
    Column("under", ("afa", "frac_under_activated"), ".1%"),
    Column("NMSE (median)", ("afa", "median_nmse"), ".4g"),
    Column("mean h", ("afa", "mean_n_atoms"), ".1f"),
    Column("capped", ("afa", "selection", "cap_frac"), ".1%"),
    Column("mode", ("afa", "inference_mode")),
]

STEERING = [
    Column("latents", ("steering", "n_atoms"), "d"),
    Column("α", ("steering", "alpha"), ".3g"),
    Column("KL/α (mean)", ("steering", "mean_kl_per_norm"), ".3e"),
    Column("Δlogit/α (mean)", ("steering", "mean_logit_shift_per_norm"), ".4f"),
    Column("Δlogit/α (median)", ("steering", "median_logit_shift_per_norm"), ".4f"),
]

ABSORPTION = [
    Column("letters kept", ("absorption", "n_letters_kept"), "d"),
    Column("words", ("absorption", "n_words"), "d"),
    Column("probe acc.", ("absorption", "probe_test_accuracy"), ".3f"),
    Column("absorption", ("absorption", "mean_absorption_fraction_score"), ".3f"),
    Column("full absorption", ("absorption", "mean_full_absorption_score"), ".3f"),
    Column("split features", ("absorption", "mean_num_split_features"), ".2f"),
]


# ---- one row per spliced variant --------------------------------------------------------------


def spliced_rows(docs: Mapping[str, Row]) -> dict[str, Row]:
    """One row per (SAE, inference variant), named "SAE" or "SAE[variant]" when the SAE has
    several; a label-informed variant always comes with its label-free sibling."""
    rows: dict[str, Row] = {}
    for name, doc in docs.items():
        sp = doc.get("spliced") or {}
        variants = sp.get("variants") or {}
        for variant, scores in variants.items():
            label = name if len(variants) == 1 else f"{name}[{variant}]"
            mode = variant + (" (label-informed)" if scores.get("label_informed") else "")
            rows[label] = {**scores, "mode": mode if len(variants) > 1 else None,
                           "convention": sp.get("convention")}  # fmt: skip
    return rows


SPLICED = [
    Column("mode", ("mode",)),
    Column("L0", ("l0",), ".1f"),
    Column("FVU", ("fvu",), ".3f"),
    Column("ΔCE", ("delta_ce",), ".3f"),
    Column("CE score (zero)", ("ce_loss_score",), ".3f"),
    Column("CE score (mean)", ("ce_loss_score_mean_ablation",), ".3f"),
    Column("KL", ("kl_spliced",), ".3f"),
    Column("KL score (mean)", ("kl_div_score_mean_ablation",), ".3f"),
    Column("dead", ("frac_dead",), ".1%"),
    Column("capped", ("selection", "cap_frac"), ".1%"),
    Column("convention", ("convention",)),
]


# ---- one row per adaptive-sparsity setting ----------------------------------------------------

_KNOB_PREFIX = {"n_steps": "T", "k": "k", "threshold_divisor": "θ/"}


def adaptive_rows(docs: Mapping[str, Row]) -> dict[str, Row]:
    """One row per (SAE, setting) of the adaptive group, named "SAE: setting"."""
    rows: dict[str, Row] = {}
    for name, doc in docs.items():
        for s in ((doc.get("adaptive") or {}).get("curves") or {}).values():
            tau = s.get("relative_threshold")
            rows[f"{name}: {s['setting']}"] = {
                **s,
                "budget": f"{_KNOB_PREFIX.get(s['knob'], s['knob'])}{s['train_value']:g}",
                "stop": f"τ_rel={tau:.3g}" if tau else None,
            }
    return rows


ADAPTIVE = [
    Column("train", ("budget",)),
    Column("stop", ("stop",)),
    Column("L0 @train", ("l0_at_train",), ".1f"),
    Column("FVU @train", ("fvu_at_train",), ".4f"),
    Column("EV @train", ("ev_at_train",), ".4f"),
    Column("FVU @2×", ("fvu_at_2x",), ".4f"),
    Column("FVU @4×", ("fvu_at_4x",), ".4f"),
    Column("L0 @4×", ("l0_at_4x",), ".1f"),
    Column("gain FVU(1×)−FVU(2×)", ("extrapolation_gain",), "+.4f"),
    Column("violations", ("monotonicity_violations",), "d"),
]


# ---- what `saekit eval` prints ----------------------------------------------------------------


def summary_table(docs: Mapping[str, Row]) -> Table:
    return build(docs, SUMMARY)


def run_summary_table(docs: Mapping[str, Row]) -> Table:
    return build(docs, RUN_SUMMARY)


def eval_tables(docs: Mapping[str, Row]) -> list[tuple[str, Table]]:
    """(title, table) for every table some document has rows for, summary first."""
    tables = [("summary", summary_table(docs))]
    variants = spliced_rows(docs)
    if any(r.get("mode") for r in variants.values()):
        tables.append(("spliced variants", build(variants, SPLICED)))
    for title, section, columns in (
        ("absorption", "absorption", ABSORPTION),
        ("afa", "afa", AFA),
        ("steering", "steering", STEERING),
    ):
        have = {n: d for n, d in docs.items() if d.get(section)}
        if have:
            tables.append((title, build(have, columns)))
    settings = adaptive_rows(docs)
    if settings:
        tables.append(("adaptive sparsity", build(settings, ADAPTIVE, first="SAE: setting")))
    return tables


__all__ = [
    "ABSORPTION",
    "ADAPTIVE",
    "AFA",
    "RUN_SUMMARY",
    "SPLICED",
    "STEERING",
    "SUMMARY",
    "Column",
    "adaptive_rows",
    "build",
    "cell",
    "eval_tables",
    "markdown",
    "run_summary_table",
    "spliced_rows",
    "summary_table",
    "text",
]
