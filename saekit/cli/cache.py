"""`saekit cache`: capture activations of a model over a corpus into an activation cache."""

from __future__ import annotations

import time

from saekit.cli.common import (
    context_length,
    nonneg_int,
    path_arg,
    positive_float,
    positive_int,
    thread_count,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="capture model activations into an on-disk cache (sharded safetensors)",
        description="Run MODEL over a corpus and store the activations of one or more "
        "hookpoints (masked: no padding, special tokens or first position) as sharded "
        "safetensors with a manifest. Train with --data cache:OUT[@HOOKPOINT]. A held-out "
        "split (--eval-tokens) is written from held-out documents.",
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
    p.add_argument("--tokens", type=int, required=True, help="training tokens per hookpoint")
    p.add_argument("--out", type=path_arg, required=True, help="output directory")
    p.add_argument(
        "--corpus",
        default="default",
        help="'default' (sae-probes text), a .txt/.jsonl/.parquet file or "
        "directory, or hf:NAME[:CONFIG]",
    )
    p.add_argument("--text-field", default="text", help="text field of .jsonl/.parquet/hf rows")
    p.add_argument(
        "--eval-tokens", type=nonneg_int, help="held-out tokens (default tokens/20; 0: none)"
    )
    p.add_argument(
        "--dtype",
        choices=["fp16", "bf16", "fp32"],
        default="fp32",
        help="storage precision (default fp32)",
    )
    p.add_argument(
        "--shard-tokens", type=positive_int, default=32_768, help="tokens per shard file"
    )
    p.add_argument("--ctx-len", type=context_length, default=128, help="tokens per context")
    p.add_argument("--batch-size", type=positive_int, default=8, help="contexts per forward pass")
    p.add_argument("--seed", type=nonneg_int, default=0, help="document order")
    p.add_argument(
        "--which",
        choices=["output", "input"],
        default="output",
        help="read the module's output (default) or its input (pairs say it per site)",
    )
    p.add_argument(
        "--max-norm-factor",
        type=positive_float,
        help="also drop tokens with norm > factor x the batch median norm",
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


def _check_args(args) -> None:
    from saekit.cli.common import fail

    for name in ("tokens", "shard_tokens", "ctx_len", "batch_size"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.ctx_len < 2:
        fail("--ctx-len must be at least 2")
    if args.eval_tokens is not None and args.eval_tokens < 0:
        fail(f"--eval-tokens must be >= 0, got {args.eval_tokens}")
    if args.out.exists() and not args.out.is_dir():
        fail(f"--out {args.out} is a file")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        fail(f"--out {args.out} is not empty (pass --overwrite to replace it)")


def run(args) -> int:
    from saekit.cli.common import fail, set_threads

    _check_args(args)
    from saekit.data.cache import CacheError, write_cache
    from saekit.data.corpora import open_corpus
    from saekit.data.hooks import HookPair, get_module, is_pair
    from saekit.data.masking import Masking
    from saekit.data.model_stream import default_hookpoint
    from saekit.data.models import load_model, quiet_transformers

    try:
        corpus = open_corpus(args.corpus, text_field=args.text_field)
    except (ValueError, FileNotFoundError, ImportError) as e:
        fail(f"--corpus: {e}")
    set_threads(args.threads)
    quiet_transformers()
    if not args.quiet:
        print(f"loading {args.model} (a first GGUF load de-quantises and caches it: ~20-30 s)")
    try:
        model, tokenizer = load_model(args.model)
    except (OSError, ValueError, ModuleNotFoundError) as e:
        fail(f"cannot load model {args.model!r}: {str(e).splitlines()[0]}")
    hookpoints = args.hookpoints or [default_hookpoint(model)]
    for h in hookpoints:
        try:
            for site in HookPair.parse(h).sites if is_pair(h) else [h]:
                get_module(model, site)
        except (KeyError, ValueError) as e:
            fail(str(e.args[0]))
    start = time.perf_counter()
    try:
        manifest = write_cache(
            args.out,
            model,
            tokenizer,
            corpus,
            hookpoints,
            args.tokens,
            dtype=args.dtype,
            shard_tokens=args.shard_tokens,
            heldout_tokens=args.eval_tokens,
            ctx_len=args.ctx_len,
            batch_size=args.batch_size,
            seed=args.seed,
            which=args.which,
            masking=Masking(max_norm_factor=args.max_norm_factor),
            with_grad=args.with_grad,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (CacheError, FileExistsError, FloatingPointError, ImportError, KeyError) as e:
        fail(str(e.args[0]) if e.args else repr(e))
    seconds = time.perf_counter() - start
    total = sum(
        sh["bytes"]
        for e in manifest["hookpoints"].values()
        for s in e["splits"].values()
        for sh in s["shards"]
    )
    for h, entry in manifest["hookpoints"].items():
        counts = ", ".join(
            f"{k} {v['n_tokens']} tokens in {len(v['shards'])} shard"
            + ("s" * (len(v["shards"]) != 1))
            for k, v in entry["splits"].items()
        )
        d = f"{entry['d_in']}->{entry['d_out']}" if "d_out" in entry else entry["d_in"]
        print(f"{h} (d={d}): {counts}")
    n = sum(manifest["n_tokens"].values())
    print(
        f"wrote {args.out} ({total / 2**20:.1f} MiB, {manifest['dtype']}) in {seconds:.1f} s "
        f"({n / seconds:.0f} tokens/s); train with --data cache:{args.out}"
    )
    return 0
