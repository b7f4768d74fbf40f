"""`saekit train`: train one SAE or a sweep of SAEs on one activation stream."""

from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from saekit.cli.common import UsageError, parse_options, set_threads

DEFAULTS: dict[str, Any] = {
    # The main job: the offline default model (SmolLM2-135M), its middle layer's output.
    "data": "model:default",
    # For model data: capture this many tokens to an on-disk cache once, then train epochs
    # from it (a 2-core CPU captures ~300-500 tokens/s; training reads ~10x faster). 0 =
    # stream straight from the model.
    "cache_tokens": 150_000,
    "architecture": "topk",
    "n_latents": None,  # default: 8 x d_in
    "k": 32,
    "steps": 1500,
    "batch_size": 1024,
    "lr": None,
    "seed": 0,
    "out": "runs/latest",
    "eval_tokens": 16384,
    "checkpoint_every": 0,
    "dead_window_tokens": 1_000_000,
    "option": [],
    "log": "jsonl",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train SAEs (one architecture or a sweep) on a data source",
        description=(
            "Train one or several SAEs on one activation stream, evaluate them on held-out data "
            "and write SAE directories, metrics.jsonl, checkpoints and a report into --out. "
            "Comma-separated values sweep: '-a topk,batchtopk --k 16,32' trains four SAEs."
        ),
    )
    p.add_argument("--config", type=Path, help="JSON or TOML file with any of these options")
    p.add_argument(
        "--data",
        help="synthetic:<recipe>[:k=v,...] | model:<name>[@hookpoint] | cache:<dir> "
        f"(default {DEFAULTS['data']})",
    )
    p.add_argument(
        "-a", "--architecture", help="architecture name(s), comma-separated (default topk)"
    )
    p.add_argument("--n-latents", type=int, help="dictionary size (default 8 x d_in)")
    p.add_argument(
        "--k", help="k for TopK-family architectures (default 32); comma-separated to sweep"
    )
    p.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE[,VALUE]",
        help="architecture option (e.g. l1_coeff=5, target_l0=32, or matryoshka.k=24 for one "
        "architecture only); repeat; comma lists sweep",
    )
    p.add_argument(
        "--cache-tokens",
        type=int,
        help="model data: tokens captured to a cache in "
        "the run dir before training (default 150000; 0 = stream from the model)",
    )
    p.add_argument("--steps", type=int, help="optimiser steps (default 1500)")
    p.add_argument("--batch-size", type=int, help="tokens per step (default 1024)")
    p.add_argument("--lr", type=float, help="learning rate (default 2e-4/sqrt(n_latents/2^14))")
    p.add_argument("--seed", type=int, help="seed for data, initialisation and sampling")
    p.add_argument("--out", help="run directory (default runs/latest)")
    p.add_argument("--eval-tokens", type=int, help="held-out tokens for the final evaluation")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0 = end only)")
    p.add_argument(
        "--dead-window-tokens",
        type=int,
        help="tokens without firing before a latent counts as dead",
    )
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run exactly"
    )
    p.add_argument(
        "--threads", type=int, help="torch threads (default: all cores when idle, else 1)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--log", help="metric sinks: jsonl,tensorboard,wandb (W&B offline; default jsonl)"
    )


def load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        cfg = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"config file {path}: {e}") from None
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"config file {path}: unknown keys {unknown}; valid: {sorted(DEFAULTS)}")
    return cfg


def resolve(args) -> dict[str, Any]:
    """Defaults < config file < flags."""
    settings = dict(DEFAULTS)
    if args.config:
        settings.update(load_config_file(args.config))
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None and value != []:
            settings[key] = value
    if isinstance(settings["option"], dict):
        settings["option"] = [f"{k}={v}" for k, v in settings["option"].items()]
    return settings


def sweep(settings: dict[str, Any], d_in: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (architecture, config fields) for every point of the sweep."""
    from saekit.sae import architectures, get_architecture

    archs = [a.strip() for a in str(settings["architecture"]).split(",") if a.strip()]
    for a in archs:
        get_architecture(a)  # unknown names fail here, listing the valid ones
    options = parse_options(list(settings["option"]))
    if settings["k"] is not None:
        options["k"] = [int(v) for v in str(settings["k"]).split(",")]
    n_latents = int(settings["n_latents"] or 8 * d_in)
    valid = {a: {f.name for f in fields(get_architecture(a).Config)} for a in archs}
    for key in options:
        arch, dot, field = key.rpartition(".")
        if dot and arch not in archs:
            raise UsageError(
                f"option {key!r} names architecture {arch!r}, not one of {', '.join(archs)}"
            )
        if dot and field not in valid[arch]:
            raise UsageError(f"architecture {arch!r} has no option {field!r}")
        if not dot and not any(key in v for v in valid.values()):
            raise UsageError(
                f"option {key!r} does not apply to {', '.join(archs)} "
                f"(known architectures: {', '.join(architectures())})"
            )
    runs: dict[str, tuple[str, dict[str, Any]]] = {}
    for arch in archs:
        # "ARCH.KEY" options apply to that architecture only and win over plain "KEY".
        mine = {k: v for k, v in options.items() if "." not in k and k in valid[arch]}
        mine |= {k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(arch + ".")}
        for combo in itertools.product(*mine.values()):
            chosen = dict(zip(mine, combo))
            label = "-".join([arch, *(f"{k}{v}" for k, v in chosen.items() if len(mine[k]) > 1)])
            runs[label] = (
                arch,
                {"d_in": d_in, "n_latents": n_latents, "seed": settings["seed"], **chosen},
            )
    return runs


def prepare_data(settings: dict[str, Any], out: Path) -> str:
    """The data spec to train on. Model data with cache_tokens > 0 is captured once into
    out/activations (reused when it already holds that model and hookpoint) and read back
    as a cache: train and eval splits come from disjoint documents."""
    spec = str(settings["data"])
    n = int(settings.get("cache_tokens") or 0)
    if not spec.startswith("model:") or n <= 0:
        return spec
    from saekit.data.cache import load_manifest, write_cache
    from saekit.data.model_stream import default_hookpoint
    from saekit.data.models import load_model_cached

    name, at, hookpoint = spec[len("model:") :].rpartition("@")
    if not at:
        name, hookpoint = spec[len("model:") :], ""
    name = name or "default"
    from saekit.sae import get_architecture

    # g-SAE trains on the downstream-loss gradient: store it beside x (full forward + backward).
    archs = [a.strip() for a in str(settings["architecture"]).split(",") if a.strip()]
    with_grad = any("grad" in get_architecture(a).needs_extras for a in archs)
    cache_dir = out / "activations"
    if (cache_dir / "manifest.json").is_file():
        manifest = load_manifest(cache_dir)
        hp = hookpoint or next(iter(manifest["hookpoints"]))
        entry = manifest["hookpoints"].get(hp)
        has_grad = entry is not None and "grad" in entry["arrays"]
        if (
            entry is not None
            and entry["splits"]["train"]["n_tokens"] >= n
            and (has_grad or not with_grad)
        ):
            print(f"reusing the activation cache in {cache_dir}")
            return f"cache:{cache_dir}@{hp}"
    print(f"loading model {name!r} ...")
    model, tokenizer = load_model_cached(name)
    hookpoint = hookpoint or default_hookpoint(model)
    print(
        f"capturing {n} tokens at {hookpoint}{' with gradients' if with_grad else ''} into {cache_dir} ..."
    )
    # max_norm_factor: SmolLM2's attention-sink tokens just after position 0 reach ~150x the
    # median norm (4 in 32k tokens) and would dominate every squared error.
    write_cache(
        cache_dir,
        model,
        tokenizer,
        "default",
        [hookpoint],
        n_tokens=n,
        eval_tokens=max(n // 10, 4096),
        seed=int(settings["seed"]),
        dtype="fp32",
        max_norm_factor=10.0,
        with_grad=with_grad,
        overwrite=True,
        progress=True,
    )
    return f"cache:{cache_dir}@{hookpoint}"


def run(args) -> int:
    from saekit.data import open_stream
    from saekit.sae import get_architecture, make_config
    from saekit.training.logsinks import parse_sinks
    from saekit.training.report import write_run_report
    from saekit.training.trainer import TrainConfig, Trainer

    threads = set_threads(args.threads)
    if args.resume:
        run_file = args.resume / "run.json"
        if not run_file.is_file():
            raise UsageError(f"{args.resume} is not a saekit run directory (no run.json)")
        settings = json.loads(run_file.read_text())["settings"]
        out = args.resume
    else:
        settings = resolve(args)
        out = Path(settings["out"])
    log_sinks = parse_sinks(settings.get("log"))  # a missing package fails before any work
    if not args.resume:
        settings["train_data"] = prepare_data(settings, out)
    stream = open_stream(
        settings["train_data"], batch_size=int(settings["batch_size"]), seed=int(settings["seed"])
    )
    print(
        f"saekit train: data {settings['data']} (d_in={stream.d_in}), {threads} thread(s), run dir {out}"
    )
    if args.resume:
        trainer = Trainer.resume(out, stream, progress_bar=not args.no_progress)
        print(f"resuming at step {trainer.step} of {trainer.cfg.steps}")
    else:
        runs = sweep(settings, stream.d_in)
        saes = {name: get_architecture(a)(make_config(a, **cfg)) for name, (a, cfg) in runs.items()}
        cfg = TrainConfig(
            steps=int(settings["steps"]),
            lr=settings["lr"],
            checkpoint_every=int(settings["checkpoint_every"]),
            dead_window_tokens=int(settings["dead_window_tokens"]),
            progress_bar=not args.no_progress,
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(
            json.dumps({"settings": settings, "saes": runs}, indent=2) + "\n"
        )
        trainer = Trainer(saes, stream, cfg, out, run_info={"data_spec": settings["train_data"]})
        print(
            f"training {len(saes)} SAE(s): {', '.join(saes)}; {cfg.steps} steps x {stream.batch_size} tokens"
        )
    trainer.log_sinks = log_sinks
    try:
        trainer.fit()
    except KeyboardInterrupt:
        print(
            f"\ninterrupted at step {trainer.step}; checkpoint written. Resume with: saekit train --resume {out}"
        )
        return 130
    report = write_run_report(out, settings, eval_tokens=int(settings["eval_tokens"]))
    print(report.summary)
    print(
        f"SAEs:    {out / 'saes'}\nmetrics: {out / 'metrics.jsonl'}\nreport:  {report.markdown} and {report.html}"
    )
    return 0
