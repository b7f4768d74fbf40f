"""`saekit info`: what an SAE directory holds."""

from __future__ import annotations

import json
from pathlib import Path

from saekit.cli.common import path_arg


def add_parser(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe a saved SAE (architecture, shapes, provenance)",
        description="Print an SAE directory's architecture, shapes, options and provenance.",
    )
    p.add_argument("sae_dir", type=path_arg)
    p.add_argument("--json", action="store_true", help="print cfg.json as JSON")


def run(args) -> int:
    from saekit.formats.native import load, read_config

    cfg = read_config(args.sae_dir)
    sae = load(args.sae_dir)  # validates weights against the config
    if args.json:
        print(json.dumps(cfg, indent=2))
        return 0
    n_params = sum(p.numel() for p in sae.parameters())
    meta = cfg.get("metadata", {})
    options = {k: v for k, v in sae.cfg.to_dict().items() if k not in {"d_in", "n_latents"}}
    print(f"{args.sae_dir}")
    print(f"  architecture  {cfg['architecture']}  (saekit {cfg.get('saekit_version', '?')})")
    print(f"  shapes        d_in={sae.d_in}  n_latents={sae.n_latents}  parameters={n_params:,}")
    print(f"  options       {json.dumps(options)}")
    if "data" in meta:
        print(f"  data          {json.dumps(meta['data'])}")
    training = meta.get("training", {})
    if training:
        print(f"  training      {training.get('steps')} steps, {training.get('tokens')} tokens")
    if "normalisation" in meta:
        print(f"  normalisation {json.dumps(meta['normalisation'])} (folded into the weights)")
    eval_file = Path(args.sae_dir) / "eval.json"
    if eval_file.is_file():
        from saekit.cli.report import read_eval_json

        core = read_eval_json(eval_file).get("core", {})
        print(
            "  eval          "
            + "  ".join(
                f"{k}={core[k]:.4g}"
                for k in ("fvu", "l0", "frac_dead")
                if isinstance(core.get(k), int | float)
            )
        )
    return 0
