"""`saekit eval`: evaluate one or many SAE directories, choosing metric groups."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from saekit.cli.common import context_length, nonneg_int, path_arg, positive_int, thread_count

GROUP_HELP = (
    "comma-separated metric groups: core, synthetic, spliced, adaptive, probing, afa, interp, "
    "or 'all' (default: core,synthetic,spliced,adaptive; groups that do not apply are skipped "
    "with a reason)"
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate SAE directories (reconstruction, sparsity, CE/KL, probing, proxies...)",
        description="Evaluate SAEs and write one eval JSON per SAE (schema: docs/eval-schema.md) "
        "into each SAE directory as eval.json (or all into --out), then print a side-by-side "
        "table. Model-based groups load the SAE's model once for all SAEs.",
    )
    p.add_argument("sae_dirs", type=path_arg, nargs="+")
    p.add_argument("-g", "--groups", default=None, help=GROUP_HELP)
    p.add_argument(
        "--data",
        help="data spec for the core group (default: the SAE's training spec, held-out split)",
    )
    p.add_argument(
        "--tokens",
        type=positive_int,
        default=16384,
        help="held-out tokens for core (default 16384)",
    )
    p.add_argument("--batch-size", type=positive_int, default=1024)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument(
        "--corpus",
        default="default",
        help="text for spliced/interp: 'default' "
        "(sae-probes text), a .txt/.jsonl/.parquet path, or hf:NAME",
    )
    p.add_argument(
        "--contexts", type=positive_int, default=16, help="contexts for spliced CE/KL (default 16)"
    )
    p.add_argument(
        "--ctx-len", type=context_length, default=128, help="tokens per context (default 128)"
    )
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
    p.add_argument("--interp-contexts", type=positive_int, default=64)
    p.add_argument(
        "--interp-latents", type=positive_int, default=64, help="latents sampled for proxies"
    )
    p.add_argument("--out", type=path_arg, help="write all results into this JSON file instead")
    p.add_argument("--threads", type=thread_count)


def parse_groups(text: str | None) -> tuple[str, ...]:
    from saekit.cli.common import UsageError
    from saekit.evaluation.evaluate import DEFAULT_GROUPS, GROUPS

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


def run(args) -> int:
    from saekit.cli.common import UsageError, check_data_spec, set_threads
    from saekit.data import open_stream
    from saekit.evaluation.comparison import table
    from saekit.evaluation.evaluate import EvalSettings, evaluate_sae, model_source
    from saekit.formats.native import load

    set_threads(args.threads)
    groups = parse_groups(args.groups)
    settings = EvalSettings(
        groups=groups,
        n_tokens=args.tokens,
        spliced_contexts=args.contexts,
        ctx_len=args.ctx_len,
        corpus=args.corpus,
        interp_contexts=args.interp_contexts,
        interp_latents=args.interp_latents,
        seed=args.seed,
        probe=probe_settings(args),
    )
    shared: dict = {}  # contexts, mean activations and probing baselines, across SAEs
    results: dict[str, dict] = {}
    for sae_dir in args.sae_dirs:
        sae = load(sae_dir)
        meta = getattr(sae, "metadata", {})
        spec = args.data or meta.get("training", {}).get("data_spec")
        stream = None
        if "core" in groups or "synthetic" in groups:
            if spec is None:
                raise UsageError(f"{sae_dir}: no data spec recorded; pass --data")
            check_data_spec(spec)
            stream = open_stream(spec, batch_size=args.batch_size, seed=args.seed, split="heldout")
            if stream.d_in != sae.d_in:
                raise UsageError(
                    f"{sae_dir}: SAE d_in={sae.d_in} but {spec} has d_in={stream.d_in}"
                )
        name = Path(sae_dir).name
        print(
            f"saekit eval: {sae_dir} ({sae.architecture}, {sae.n_latents} latents)", file=sys.stderr
        )
        doc = evaluate_sae(
            sae,
            stream,
            settings,
            source=model_source(sae, spec),
            shared=shared,
            name=name,
            progress=lambda g: print(f"  {g}...", file=sys.stderr),
        )
        doc["sae"]["path"] = str(Path(sae_dir).resolve())
        doc["data"]["spec"] = spec
        for group, why in doc["skipped"].items():
            print(f"  skipped {group}: {why}", file=sys.stderr)
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
    header, rows = table(labelled)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0
