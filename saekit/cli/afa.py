"""`saekit afa`: the AFA diagnostic of saved SAEs (ZF plot + ε_LBO summary, evaluation.md §8)."""

from __future__ import annotations

import json
from pathlib import Path

from saekit.cli.common import nonneg_int, path_arg, positive_int, thread_count


def add_parser(sub) -> None:
    p = sub.add_parser(
        "afa",
        help="AFA diagnostic: code norm vs input norm, ε_LBO, ZF plot",
        description="For each SAE directory, compare the decoder-norm-scaled code norm (with "
        "‖b_dec‖ as one extra atom) with the input norm on held-out tokens; write zf.png and "
        "afa.json into --out/<sae name> (default: the SAE directory) and print a summary.",
    )
    p.add_argument("sae_dirs", type=path_arg, nargs="+")
    p.add_argument("--data", help="data spec (default: the one recorded in the SAE's cfg.json)")
    p.add_argument(
        "--tokens", type=positive_int, default=8192, help="held-out tokens (default 8192)"
    )
    p.add_argument("--batch-size", type=positive_int, default=1024)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--mode", help="encode mode passed to the SAE (e.g. topk for g-SAE)")
    p.add_argument("--out", type=path_arg, help="output directory (default: each SAE directory)")
    p.add_argument("--threads", type=thread_count)


def run(args) -> int:
    from saekit.cli.common import UsageError, set_threads
    from saekit.data import open_stream
    from saekit.evaluation.afa import afa_diagnostic, zf_plot
    from saekit.formats.native import load
    from saekit.sae.selectors import TopK

    set_threads(args.threads)
    rows = []
    for sae_dir in args.sae_dirs:
        sae = load(sae_dir)
        spec = args.data or getattr(sae, "metadata", {}).get("training", {}).get("data_spec")
        if spec is None:
            raise UsageError(f"{sae_dir}: no data spec recorded; pass --data")
        if args.mode == "topk" and "k" in sae.knobs:
            sae = sae.with_selector(TopK())  # a g-SAE's TopK view
        needs_grad = "grad" in sae.needs_extras
        stream = open_stream(spec, args.batch_size, args.seed, "heldout", with_grad=needs_grad)
        if stream.d_in != sae.d_in:
            raise UsageError(f"{sae_dir}: SAE d_in={sae.d_in} but {spec} has d_in={stream.d_in}")
        q, summary = afa_diagnostic(sae, stream, args.tokens)
        out = (args.out / Path(sae_dir).name) if args.out else Path(sae_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary.update(sae=str(sae_dir), architecture=sae.architecture, data=spec)
        if args.mode:
            summary["mode"] = args.mode
        zf_plot(q, out / "zf.png", title=f"{Path(sae_dir).name} ({sae.architecture})")
        (out / "afa.json").write_text(json.dumps(summary, indent=2) + "\n")
        rows.append(summary)
    cols = ["median_eps_lbo_h", "median_eps_lbo_l1", "frac_over_activated",
            "frac_under_activated", "median_nmse", "mean_n_atoms"]  # fmt: skip
    print("sae  " + "  ".join(cols))
    for r in rows:
        print(Path(r["sae"]).name + "  " + "  ".join(f"{r[c]:.4g}" for c in cols))
    return 0
