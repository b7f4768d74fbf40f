"""`saekit eval`: evaluate one or many SAE directories with the metric groups chosen by -g."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from saekit.cli.common import (
    context_length,
    float_in,
    nonneg_int,
    path_arg,
    positive_float,
    positive_int,
    thread_count,
)
from saekit.data.splits import SPLITS

GROUP_HELP = (
    "comma-separated metric groups: core, synthetic, spliced, adaptive, probing, absorption, "
    "afa, steering, interp, or 'all' (default: core,synthetic,spliced,adaptive; groups that do "
    "not apply are skipped with a reason)"
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate SAE directories (reconstruction, CE/KL, adaptive sparsity, AFA, "
        "steering, probing, absorption, proxies)",
        description="Evaluate SAEs and write one eval JSON per SAE (schema: docs/eval-schema.md) "
        "into each SAE directory as eval.json (or all into --out), then print the tables. "
        "Model-based groups load the SAE's model once for all SAEs. A g-SAE is evaluated in "
        "its label-free topk mode; spliced also reports its gradient mode, which reads the "
        "labels (label-informed).",
    )
    p.add_argument("sae_dirs", type=path_arg, nargs="+")
    p.add_argument("-g", "--groups", default=None, help=GROUP_HELP)
    p.add_argument(
        "--data", help="data spec for core (default: the SAE's training spec, held-out split)"
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        help="split of --data for core (default: heldout; a cache without one falls back to "
        "train with a warning); the same as --data ...#SPLIT",
    )
    p.add_argument(
        "--tokens",
        type=positive_int,
        default=16384,
        help="held-out tokens for core, at most one pass over the split (default 16384)",
    )
    p.add_argument(
        "--sample-tokens",
        type=positive_int,
        default=4096,
        help="of those, tokens kept for adaptive and afa (default 4096)",
    )
    p.add_argument("--batch-size", type=positive_int, default=1024)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument(
        "--corpus",
        default="default",
        help="text for spliced/steering/interp: 'default' (sae-probes text), a "
        ".txt/.jsonl/.parquet path, or hf:NAME",
    )
    p.add_argument(
        "--contexts", type=positive_int, default=16, help="contexts for spliced CE/KL (default 16)"
    )
    p.add_argument(
        "--ctx-len", type=context_length, default=128, help="tokens per context (default 128)"
    )
    p.add_argument(
        "--convention",
        choices=("saekit", "saebench"),
        default="saekit",
        help="spliced positions: saekit replaces and scores kept tokens only (no special "
        "tokens, not position 0); saebench every position, and only then are SAEBench's "
        "CE/KL field names filled (default saekit)",
    )
    p.add_argument(
        "--max-factor",
        type=float_in(1.0, 1024.0),
        default=4.0,
        help="adaptive: largest inference budget as a multiple of the training one (default 4)",
    )
    p.add_argument(
        "--relative-threshold",
        type=float_in(0.0, 1.0, open_lo=True),
        help="adaptive: MP stop ‖r‖²/‖x − b_pre‖² < τ (default: the SAE's, else the median at "
        "the training T on the sample)",
    )
    p.add_argument(
        "--steer-latents", type=positive_int, default=24, help="steering: latents per SAE"
    )
    p.add_argument("--steer-contexts", type=positive_int, default=12)
    p.add_argument("--kappa", type=positive_float, default=0.5, help="steering: α = κ · median ‖x‖")
    p.add_argument(
        "--probe-datasets",
        default="default",
        help="'default' (4 short tasks, minutes on a CPU), 'all' (113 binary tasks) "
        "or comma-separated sae-probes dataset names",
    )
    p.add_argument("--probe-ks", default="1,2,4,8,16,32,64", help="k values (default 1,2,...,64)")
    p.add_argument(
        "--probe-test",
        type=positive_int,
        default=1024,
        help="max test prompts per task (sae-probes uses 5000; default 1024)",
    )
    p.add_argument(
        "--absorption-words",
        type=positive_int,
        default=2000,
        help="absorption: letter-only tokens drawn for the first-letter task; the LM reads one "
        "prompt of ~10 lines per word (default 2000, ~4 min for SmolLM2 layer 15 on one CPU "
        "thread)",
    )
    p.add_argument("--interp-contexts", type=positive_int, default=64)
    p.add_argument(
        "--interp-latents", type=positive_int, default=64, help="latents sampled for proxies"
    )
    p.add_argument("--out", type=path_arg, help="write all results into this JSON file instead")
    p.add_argument(
        "--report", type=path_arg, help="also write the HTML comparison page (with figures) here"
    )
    p.add_argument("--threads", type=thread_count)


def parse_groups(text: str | None) -> tuple[str, ...]:
    from saekit.cli.common import UsageError
    from saekit.evaluation.base import DEFAULT_GROUPS, GROUPS

    if text is None:
        return DEFAULT_GROUPS
    if text.strip() == "all":
        return GROUPS
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise UsageError(
            f"unknown metric group(s) {unknown or [text]}; valid: {', '.join(GROUPS)}, all"
        )
    return groups


def probe_settings(args):
    from saekit.cli.common import UsageError
    from saekit.evaluation.probing import DEFAULT_DATASETS, ProbeSettings, binary_datasets

    if args.probe_datasets == "default":
        datasets = DEFAULT_DATASETS
    elif args.probe_datasets == "all":
        datasets = tuple(binary_datasets())
    else:
        datasets = tuple(d.strip() for d in args.probe_datasets.split(",") if d.strip())
    try:
        ks = tuple(int(k) for k in args.probe_ks.split(","))
    except ValueError:
        raise UsageError(
            f"--probe-ks must be comma-separated integers, got {args.probe_ks!r}"
        ) from None
    return ProbeSettings(datasets=datasets, ks=ks, n_test_max=args.probe_test)


def eval_settings(args):
    from saekit.evaluation.base import EvalSettings

    return EvalSettings(
        groups=parse_groups(args.groups),
        n_tokens=args.tokens,
        sample_tokens=args.sample_tokens,
        spliced_contexts=args.contexts,
        convention=args.convention,
        ctx_len=args.ctx_len,
        corpus=args.corpus,
        adaptive_max_factor=args.max_factor,
        adaptive_relative_threshold=args.relative_threshold,
        steer_latents=args.steer_latents,
        steer_contexts=args.steer_contexts,
        kappa=args.kappa,
        interp_contexts=args.interp_contexts,
        interp_latents=args.interp_latents,
        absorption_words=args.absorption_words,
        seed=args.seed,
        probe=probe_settings(args),
    )


def open_core_stream(args, sae, sae_dir: Path, spec: str | None):
    """(stream, split) for core/synthetic, or (None, None) when neither runs."""
    from saekit.cli.common import UsageError, check_data_spec
    from saekit.evaluation.sources import open_heldout_stream

    if spec is None:
        raise UsageError(f"{sae_dir}: no data spec recorded; pass --data")
    check_data_spec(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream, split = open_heldout_stream(spec, args.batch_size, args.seed, args.split)
    for w in caught:
        print(f"saekit eval: warning: {w.message}", file=sys.stderr)
    if stream.d_in != sae.d_in:
        raise UsageError(f"{sae_dir}: SAE d_in={sae.d_in} but {spec} has d_in={stream.d_in}")
    return stream, split


def run(args) -> int:
    from saekit.cli.common import set_threads
    from saekit.evaluation import tables
    from saekit.evaluation.comparison import write_report
    from saekit.evaluation.evaluate import evaluate_sae, model_source
    from saekit.formats.native import load
    from saekit.sae.provenance import Provenance

    set_threads(args.threads)
    settings = eval_settings(args)
    shared: dict = {}  # contexts, mean activations, probing baselines, steering α, across SAEs
    results: dict[str, dict] = {}
    for sae_dir in args.sae_dirs:
        sae = load(sae_dir)
        spec = args.data or Provenance.of(sae).data_spec
        stream, split = None, None
        if {"core", "synthetic"} & set(settings.groups):
            stream, split = open_core_stream(args, sae, sae_dir, spec)
        print(
            f"saekit eval: {sae_dir} ({sae.architecture}, {sae.n_latents} latents)", file=sys.stderr
        )
        doc = evaluate_sae(
            sae,
            stream,
            settings,
            source=model_source(sae, spec),
            shared=shared,
            name=Path(sae_dir).name,
            progress=lambda g: print(f"  {g}...", file=sys.stderr),
        )
        doc["sae"]["path"] = str(Path(sae_dir).resolve())
        doc["data"].update(spec=spec, split=split)
        for group, why in doc["skipped"].items():
            print(f"  skipped {group}: {why}", file=sys.stderr)
        seen = (doc.get("core") or {}).get("n_tokens")
        if seen is not None and seen < settings.n_tokens:
            print(f"  core: the split holds {seen} tokens, each evaluated once", file=sys.stderr)
        results[str(sae_dir)] = doc
        if args.out is None:
            (Path(sae_dir) / "eval.json").write_text(
                json.dumps(doc, indent=2, allow_nan=False) + "\n"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    names = [Path(k).name for k in results]
    # Short names unless two SAEs share one (e.g. run1/saes/topk and run2/saes/topk).
    labelled = {(n if names.count(n) == 1 else k): v for n, (k, v) in zip(names, results.items())}
    for i, (title, table) in enumerate(tables.eval_tables(labelled)):
        print(("" if i == 0 else "\n") + f"{title}:\n{tables.text(table)}")
    if args.report is not None:
        page = write_report(labelled, args.report, "saekit eval")
        print(f"\nreport: {page.html} ({len(page.figures)} figures)")
    return 0
