"""`saekit hookpoints MODEL`: list the module paths of a model with their output widths."""

from __future__ import annotations

import json
import re

from saekit.cli.common import thread_count


def add_parser(sub) -> None:
    p = sub.add_parser(
        "hookpoints",
        help="list a model's hookpoints (module paths) with their widths",
        description="Load MODEL and list every module whose output is a [batch, seq, width] "
        "tensor, with the width, from one tiny forward pass. Use a path as --hookpoint of "
        "'saekit cache' or in a data spec model:MODEL@PATH. Note: Hugging Face "
        "hidden_states[L + 1] is the output of the decoder layer model.layers.L.",
    )
    p.add_argument(
        "model",
        help="'default' / 'smollm2-135m', a .gguf file, a local directory "
        "or a Hugging Face model name",
    )
    p.add_argument("--filter", metavar="REGEX", help="only paths matching this regex")
    p.add_argument("--json", action="store_true", help="print a JSON list of [path, width]")
    p.add_argument(
        "--threads", type=thread_count, help="torch threads (default: 1 on a busy machine)"
    )


def run(args) -> int:
    from saekit.cli.common import UsageError, set_threads

    try:
        pattern = re.compile(args.filter) if args.filter else None
    except re.error as e:
        raise UsageError(f"bad --filter regex {args.filter!r}: {e}") from None
    set_threads(args.threads)
    from saekit.data.hooks import list_hookpoints
    from saekit.data.models import load_model, quiet_transformers

    quiet_transformers()
    try:
        model, _ = load_model(args.model)
    except (OSError, ValueError, ModuleNotFoundError) as e:
        raise UsageError(f"cannot load model {args.model!r}: {str(e).splitlines()[0]}") from None
    rows = [(p, w) for p, w in list_hookpoints(model) if pattern is None or pattern.search(p)]
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max((len(p) for p, _ in rows), default=0)
    for path, d in rows:
        print(f"{path.ljust(width)}  {d}")
    return 0
