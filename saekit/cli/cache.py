"""`saekit cache`: capture activations of a model over a corpus into an activation cache.
Its capture flags are CaptureConfig's (saekit/training/capture.py), the same settings and
defaults `saekit train` uses for the run's own cache."""

from __future__ import annotations

import time
from dataclasses import fields

from saekit.cli.common import UsageError, nonneg_int, path_arg, positive_int, thread_count
from saekit.cli.flags import add_fields
from saekit.training.capture import CaptureConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="capture model activations into an on-disk cache (sharded safetensors)",
        description="Run MODEL over a corpus and store the activations of one or more "
        "hookpoints (masked: no padding, special tokens or first position) as sharded "
        "safetensors with a manifest. Train with --data cache:OUT[@HOOKPOINT]. A held-out "
        "split is written from held-out documents.",
    )
    p.add_argument(
        "--model",
        default="default",
        help="'default' / 'smollm2-135m', a .gguf file, a directory or a hub name",
    )
    p.add_argument(
        "--hookpoint",
        action="append",
        dest="hookpoints",
        metavar="PATH",
        help="module path (repeatable; see 'saekit hookpoints MODEL'), or a pair "
        "SOURCE->TARGET for transcoders, e.g. 'model.layers.6.mlp:in->out' (the MLP's input "
        "as x, its output as target, from one forward); default: the middle decoder layer",
    )
    p.add_argument(
        "--tokens", type=positive_int, required=True, help="training tokens per hookpoint"
    )
    p.add_argument("--out", type=path_arg, required=True, help="output directory")
    p.add_argument(
        "--eval-tokens",
        type=nonneg_int,
        help="held-out tokens (default: --eval-fraction of --tokens; 0: none)",
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="document order")
    p.add_argument(
        "--which",
        choices=["output", "input"],
        default="output",
        help="read the module's output (default) or its input (pairs say it per site)",
    )
    p.add_argument(
        "--with-grad",
        action="store_true",
        help="also store d(next-token CE)/dx per token (for g-SAE)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads", type=thread_count, help="torch threads (default: 1 on a busy machine)"
    )
    add_fields(
        p,
        CaptureConfig,
        "capture (shared with saekit train)",
        aliases={"cache_dtype": ["--dtype"], "contexts_per_forward": ["--batch-size"]},
    )


def run(args) -> int:
    from saekit.cli.common import set_threads
    from saekit.training.capture import capture

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {args.out} is not empty (pass --overwrite to replace it)")
    cfg = CaptureConfig(
        **{f.name: getattr(args, f.name) for f in fields(CaptureConfig) if hasattr(args, f.name)}
    )
    set_threads(args.threads)
    start = time.perf_counter()
    manifest = capture(
        args.out,
        args.model,
        args.hookpoints or [""],
        args.tokens,
        cfg,
        seed=args.seed,
        eval_tokens=args.eval_tokens,
        which=args.which,
        with_grad=args.with_grad,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(summary(manifest, args.out, time.perf_counter() - start))
    return 0


def summary(manifest: dict, out, seconds: float) -> str:
    lines = []
    for h, entry in manifest["hookpoints"].items():
        counts = ", ".join(
            f"{k} {v['n_tokens']} tokens in {len(v['shards'])} shard"
            + ("s" * (len(v["shards"]) != 1))
            for k, v in entry["splits"].items()
        )
        d = f"{entry['d_in']}->{entry['d_out']}" if "d_out" in entry else entry["d_in"]
        lines.append(f"{h} (d={d}): {counts}")
    total = sum(
        sh["bytes"]
        for e in manifest["hookpoints"].values()
        for s in e["splits"].values()
        for sh in s["shards"]
    )
    n = sum(manifest["n_tokens"].values())
    lines.append(
        f"wrote {out} ({total / 2**20:.1f} MiB, {manifest['dtype']}) in {seconds:.1f} s "
        f"({n / seconds:.0f} tokens/s); train with --data cache:{out}"
    )
    return "\n".join(lines)
