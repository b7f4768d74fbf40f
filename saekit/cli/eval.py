"""`saekit eval`: evaluate one or many SAE directories on held-out data."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate SAE directories (reconstruction, sparsity, ground truth)",
        description="Evaluate SAEs on held-out activations; writes eval.json into each SAE "
        "directory (or --out) and prints a side-by-side table.",
    )
    p.add_argument("sae_dirs", type=Path, nargs="+")
    p.add_argument("--data", help="data spec (default: the one recorded in the SAE's cfg.json)")
    p.add_argument("--tokens", type=int, default=16384, help="held-out tokens (default 16384)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write all results into this JSON file instead")
    p.add_argument("--threads", type=int)


def run(args) -> int:
    from saekit.cli.common import UsageError, set_threads
    from saekit.data import open_stream
    from saekit.evaluation.evaluate import evaluate
    from saekit.formats.native import load
    from saekit.training.report import table

    set_threads(args.threads)
    results = {}
    for sae_dir in args.sae_dirs:
        sae = load(sae_dir)
        meta = getattr(sae, "metadata", {})
        spec = args.data or meta.get("training", {}).get("data_spec")
        if spec is None:
            raise UsageError(f"{sae_dir}: no data spec recorded; pass --data")
        stream = open_stream(spec, batch_size=args.batch_size, seed=args.seed, split="eval")
        if stream.d_in != sae.d_in:
            raise UsageError(f"{sae_dir}: SAE d_in={sae.d_in} but {spec} has d_in={stream.d_in}")
        results[str(sae_dir)] = evaluate(sae, stream, args.tokens)
        if args.out is None:
            (Path(sae_dir) / "eval.json").write_text(json.dumps(results[str(sae_dir)], indent=2) + "\n")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    header, rows = table(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0
