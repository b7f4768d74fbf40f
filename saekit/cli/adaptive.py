"""`saekit adaptive`: reconstruction error against inference sparsity (evaluation.md §7)."""

from __future__ import annotations

import json
import shlex
import sys

from saekit.cli.common import float_in, nonneg_int, path_arg, positive_int, thread_count


def add_parser(sub) -> None:
    p = sub.add_parser(
        "adaptive",
        help="adaptive-sparsity curves: error vs inference steps / k / threshold",
        description="Evaluate SAEs at inference sparsities other than their training one: MP-SAE "
        "at 1..4x its pursuit steps (with and without a relative residual stop), TopK at "
        "1..4x its k, BatchTopK/JumpReLU with the threshold divided by 1/4..16. Writes "
        "adaptive.json (every point), adaptive.md (the table) and adaptive.png (FVU vs L0) "
        "into --out and prints the table.",
    )
    p.add_argument("sae_dirs", type=path_arg, nargs="+", metavar="SAE_DIR")
    p.add_argument("--data", help="held-out data spec (default: the first SAE's training spec, "
                   "eval split)")  # fmt: skip
    p.add_argument(
        "--tokens", type=positive_int, default=8192, help="held-out tokens (default 8192)"
    )
    p.add_argument("--out", type=path_arg, required=True, help="output directory")
    p.add_argument("--max-factor", type=float_in(1.0, 1024.0), default=4.0,
                   help="largest budget as a multiple of the training one (default 4)")  # fmt: skip
    p.add_argument("--relative-threshold", type=float_in(0.0, 1.0, open_lo=True),
                   help="MP stop ‖r‖²/‖x − b_pre‖² < τ (default: the SAE's, else the median "
                   "at the training T on these tokens)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=1024)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--title", default="", help="plot title")
    p.add_argument("--threads", type=thread_count)


def read_tokens(spec: str, n: int, batch_size: int, seed: int):
    """The first n tokens [n, d_in] of the eval split of `spec`."""
    import torch

    from saekit.data import open_stream

    stream = open_stream(spec, batch_size=batch_size, seed=seed, split="heldout")
    available = getattr(stream, "n_tokens", None)  # a cache's split: do not wrap around it
    if isinstance(available, int) and available < n:
        print(f"saekit adaptive: {spec} holds {available} held-out tokens; using all of them",
              file=sys.stderr)  # fmt: skip
        n = available
    parts, have = [], 0
    for batch in stream:
        parts.append(batch.x.float())
        have += len(batch)
        if have >= n:
            break
    if not parts:
        raise ValueError(f"{spec}: the eval split yielded no tokens")
    return torch.cat(parts)[:n]


def run(args) -> int:
    from saekit.cli.common import UsageError, set_threads
    from saekit.evaluation.adaptive import adaptive_report, markdown_table, plot_curves
    from saekit.evaluation.evaluate import Skip
    from saekit.formats.native import load

    set_threads(args.threads)
    saes = {}
    for d in args.sae_dirs:
        name = d.name if d.name not in saes else str(d)
        saes[name] = load(d)
    first = next(iter(saes.values()))
    spec = args.data or getattr(first, "metadata", {}).get("training", {}).get("data_spec")
    if spec is None:
        raise UsageError(f"{args.sae_dirs[0]}: no data spec recorded; pass --data")
    x = read_tokens(spec, args.tokens, args.batch_size, args.seed)
    reports, skipped = {}, {}
    for name, sae in saes.items():
        if sae.d_in != x.shape[1]:
            raise UsageError(f"{name}: SAE d_in={sae.d_in} but {spec} has d_in={x.shape[1]}")
        print(f"saekit adaptive: {name} ({sae.architecture})", file=sys.stderr)
        try:
            reports[name] = adaptive_report(sae, x, max_factor=args.max_factor,
                                            relative_threshold=args.relative_threshold)  # fmt: skip
        except Skip as e:  # no inference sparsity knob (e.g. ReLU)
            skipped[name] = str(e)
            print(f"  skipped: {e}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "saekit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc = {"command": command, "data": spec, "n_tokens": int(x.shape[0]), "reports": reports,
           "skipped": skipped}  # fmt: skip
    (args.out / "adaptive.json").write_text(json.dumps(_finite(doc), indent=1) + "\n")
    if reports:
        table = markdown_table(reports)
        (args.out / "adaptive.md").write_text(table)
        title = args.title or f"{spec}, {x.shape[0]} held-out tokens"
        plot_curves(reports, args.out / "adaptive.png", title)
        print(table)
    print(f"wrote {args.out / 'adaptive.json'}" + (" (+ .md, .png)" if reports else ""))
    return 0


def _finite(value):
    """NaN/inf -> None (strict JSON)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":  # `python -m saekit.cli.adaptive …`, same as `saekit adaptive …`
    from saekit.cli.common import Parser

    sys.argv[1:1] = ["adaptive"]  # recorded in adaptive.json as `saekit adaptive …`
    _parser = Parser(prog="saekit")
    add_parser(_parser.add_subparsers(dest="command", parser_class=Parser))
    raise SystemExit(run(_parser.parse_args(sys.argv[1:])))
