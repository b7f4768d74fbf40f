"""`saekit train`: train one SAE or a sweep of SAEs on one activation stream."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from saekit.cli.common import (
    UsageError,
    check_data_spec,
    check_output_dir,
    int_in,
    nonneg_int,
    parse_options,
    path_arg,
    positive_float,
    positive_int,
    set_threads,
    text_arg,
    thread_count,
)

# Far beyond any SAE trained today (2^16 = 65,536 latents per d_in... 2^26 in all), and a
# clear line instead of an allocation that swaps or dies.
MAX_LATENTS = 2**26
MAX_SEED = 2**63 - 1

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
    p.add_argument("--config", type=path_arg, help="JSON or TOML file with any of these options")
    p.add_argument(
        "--data",
        type=text_arg,
        help="synthetic:<recipe>[:k=v,...] | model:<name>[@hookpoint] | cache:<dir> "
        "| model:<name>@SOURCE->TARGET for transcoders, e.g. "
        f"model:default@model.layers.6.mlp:in->out (default {DEFAULTS['data']})",
    )
    p.add_argument(
        "-a",
        "--architecture",
        type=text_arg,
        help="architecture name(s), comma-separated (default topk)",
    )
    p.add_argument(
        "--n-latents", type=int_in(1, MAX_LATENTS), help="dictionary size (default 8 x d_in)"
    )
    p.add_argument(
        "--k",
        type=text_arg,
        help="k for TopK-family architectures (default 32); comma-separated to sweep",
    )
    p.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE[,VALUE]",
        type=text_arg,
        help="architecture option (e.g. l1_coeff=5, target_l0=32, or matryoshka.k=24 for one "
        "architecture only); repeat; comma lists sweep",
    )
    p.add_argument(
        "--cache-tokens",
        type=nonneg_int,
        help="model data: tokens captured to a cache in "
        "the run dir before training (default 150000; 0 = stream from the model)",
    )
    p.add_argument("--steps", type=positive_int, help="optimiser steps (default 1500)")
    p.add_argument("--batch-size", type=positive_int, help="tokens per step (default 1024)")
    p.add_argument(
        "--lr", type=positive_float, help="learning rate (default 2e-4/sqrt(n_latents/2^14))"
    )
    p.add_argument(
        "--seed", type=int_in(0, MAX_SEED), help="seed for data, initialisation and sampling"
    )
    p.add_argument("--out", type=text_arg, help="run directory (default runs/latest)")
    p.add_argument(
        "--eval-tokens", type=positive_int, help="held-out tokens for the final evaluation"
    )
    p.add_argument(
        "--checkpoint-every", type=nonneg_int, help="steps between checkpoints (0 = end only)"
    )
    p.add_argument(
        "--dead-window-tokens",
        type=positive_int,
        help="tokens without firing before a latent counts as dead",
    )
    p.add_argument(
        "--resume", type=path_arg, metavar="RUN_DIR", help="continue an interrupted run exactly"
    )
    p.add_argument(
        "--threads", type=thread_count, help="torch threads (default: all cores when idle, else 1)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        help="train on N processes: re-launches this command under torchrun (CPU: gloo)",
    )
    p.add_argument(
        "--parallel",
        choices=["data", "modules"],
        default="data",
        help="with several processes: 'data' splits every batch's tokens over ranks and "
        "all-reduces gradients; 'modules' spreads the sweep's SAEs over ranks, fed by one "
        "reader (default data)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda or cuda:N (default auto: CUDA when present; one GPU per rank under "
        "torchrun)",
    )
    p.add_argument(
        "--autocast",
        choices=["bf16"],
        help="matmuls in bfloat16 under autocast; weights, thresholds and Adam stay fp32",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=300.0,
        help="seconds a rank waits on its peers before failing with a message (default 300)",
    )
    p.add_argument(
        "--log", help="metric sinks: jsonl,tensorboard,wandb (W&B offline; default jsonl)"
    )


def load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    if path.stat().st_size > 2**20:
        raise UsageError(f"config file {path}: larger than 1 MiB")
    try:
        text = path.read_text(encoding="utf-8")
        cfg = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {path}: {e}") from None
    except RecursionError:
        raise UsageError(f"config file {path}: nested too deeply") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"config file {path}: expected a table of options")
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
    check_settings(settings, where=f"config file {args.config}" if args.config else "")
    return settings


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# key -> (check, what it must be); a config file's values pass the same checks as flags.
_SETTING_CHECKS: dict[str, tuple[Any, str]] = {
    "data": (lambda v: isinstance(v, str) and v != "", "a data spec string"),
    "cache_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "architecture": (lambda v: isinstance(v, str) and v.strip(",") != "", "architecture names"),
    "n_latents": (
        lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_LATENTS),
        f"an integer in [1, {MAX_LATENTS}]",
    ),
    "k": (
        lambda v: (
            v is None
            or (_is_int(v) and v >= 1)
            or (
                isinstance(v, str)
                and all(p.strip().isdigit() and int(p) >= 1 for p in v.split(","))
            )
        ),
        "a positive integer or a comma-separated list of them",
    ),
    "steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "lr": (
        lambda v: (
            v is None
            or (isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < float("inf"))
        ),
        "a positive finite number",
    ),
    "seed": (lambda v: _is_int(v) and 0 <= v <= MAX_SEED, "an integer >= 0"),
    "out": (lambda v: isinstance(v, str) and v != "", "a directory name"),
    "eval_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "checkpoint_every": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = at the end)"),
    "dead_window_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "option": (
        lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v),
        "a list of KEY=VALUE strings or a table",
    ),
}


def check_settings(settings: dict[str, Any], where: str = "") -> None:
    """Every setting by type and range, before any work starts."""
    for key, (ok, what) in _SETTING_CHECKS.items():
        value = settings.get(key)
        if not ok(value):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{where + ': ' if where else ''}{flag} must be {what}, got {value!r}")
        if isinstance(value, str):
            text_arg_or_fail(value, key)


def text_arg_or_fail(value: str, key: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--{key.replace('_', '-')} is not valid UTF-8") from None


def absolute_data_spec(spec: str) -> str:
    """cache:DIR with DIR made absolute, so a run resumes from any working directory."""
    from saekit.data.spec import parse_data_spec

    data = parse_data_spec(spec)
    if data.kind != "cache":
        return spec
    return str(replace(data, source=str(Path(data.source).resolve())))


def check_memory(runs: dict[str, tuple[str, dict[str, Any]]], d_in: int) -> None:
    """Refuse a sweep whose weights and optimiser state cannot fit in this machine's memory
    (W_enc, W_dec, their gradients and two Adam moments: ~6 x n_latents x d_in floats each)."""
    need = sum(6 * 4 * int(cfg["n_latents"]) * d_in for _, cfg in runs.values())
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        n = max(int(cfg["n_latents"]) for _, cfg in runs.values())
        raise UsageError(
            f"n_latents={n} x d_in={d_in} needs ~{need / 2**30:.1f} GiB to train "
            f"{len(runs)} SAE(s); this machine has {have / 2**30:.1f} GiB (lower --n-latents)"
        )


def sweep(
    settings: dict[str, Any], d_in: int, d_out: int | None = None
) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (architecture, config fields) for every point of the sweep. With ``d_out``
    (paired data: the stream carries a target) every SAE is built with transcode=True and
    that d_out."""
    from saekit.formats.native import check_config_values
    from saekit.sae import architectures, get_architecture

    archs = [a.strip() for a in str(settings["architecture"]).split(",") if a.strip()]
    for a in archs:
        get_architecture(a)  # unknown names fail here, listing the valid ones
    options = parse_options(list(settings["option"]))
    valid = {a: {f.name for f in fields(get_architecture(a).Config)} for a in archs}
    # The default k only concerns architectures that have one: `-a jumprelu` (or a JumpReLU
    # transcoder, -o transcode=true) must not fail on it; an explicit -o k=... wins.
    has_k = any("k" in v for v in valid.values())
    explicit = settings["k"] != DEFAULTS["k"]
    if settings["k"] is not None and "k" not in options and (has_k or explicit):
        options["k"] = [int(v) for v in str(settings["k"]).split(",")]
    n_latents = int(settings["n_latents"] or 8 * d_in)
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
    target = _transcode_fields(archs, valid, options, d_out)
    runs: dict[str, tuple[str, dict[str, Any]]] = {}
    for arch in archs:
        # "ARCH.KEY" options apply to that architecture only and win over plain "KEY".
        mine = {k: v for k, v in options.items() if "." not in k and k in valid[arch]}
        mine |= {k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(arch + ".")}
        for combo in itertools.product(*mine.values()):
            chosen = dict(zip(mine, combo))
            try:
                check_config_values(get_architecture(arch).Config, chosen)
            except ValueError as e:
                raise UsageError(f"-o for {arch}: {e}") from None
            label = "-".join([arch, *(f"{k}{v}" for k, v in chosen.items() if len(mine[k]) > 1)])
            runs[label] = (
                arch,
                {
                    "d_in": d_in,
                    "n_latents": n_latents,
                    "seed": settings["seed"],
                    **chosen,
                    **target,
                },
            )
    return runs


def _transcode_fields(
    archs: list[str], valid: dict[str, set[str]], options: dict[str, list[Any]], d_out: int | None
) -> dict[str, Any]:
    """Config fields that make every SAE of the run predict the stream's target, or {}."""
    from saekit.sae import get_architecture

    asked = [v for k, vals in options.items() if k.rpartition(".")[2] == "transcode" for v in vals]
    if d_out is None:
        defaults = [
            f.default
            for a in archs
            for f in fields(get_architecture(a).Config)
            if f.name == "transcode"
        ]
        if any(v is True for v in asked + defaults):
            raise UsageError(
                "a transcoder needs paired data (an input and a target): e.g. "
                "--data model:default@model.layers.6.mlp:in->out"
            )
        return {}
    if any(v is not True for v in asked):
        raise UsageError(
            "paired data (SOURCE->TARGET) trains transcoders only: drop transcode=false"
        )
    unable = [a for a in archs if not {"transcode", "d_out"} <= valid[a]]
    if unable:
        raise UsageError(
            f"architecture(s) {', '.join(unable)} cannot predict a target (no transcode option); "
            "paired data (SOURCE->TARGET) needs transcoders"
        )
    return {"transcode": True, "d_out": d_out}


def prepare_data(settings: dict[str, Any], out: Path) -> str:
    """The data spec to train on. Model data with cache_tokens > 0 is captured once into
    out/activations (reused when it already holds that model and hookpoint) and read back
    as a cache: train and eval splits come from disjoint documents."""
    spec = str(settings["data"])
    n = int(settings.get("cache_tokens") or 0)
    if not spec.startswith("model:") or n <= 0:
        return spec
    from saekit.data.cache import load_manifest, write_cache
    from saekit.data.hooks import canonical_hookpoint
    from saekit.data.masking import Masking
    from saekit.data.model_stream import default_hookpoint
    from saekit.data.models import load_model_cached
    from saekit.data.spec import parse_data_spec

    data = parse_data_spec(spec)  # a malformed pair fails here, before any load
    name = data.source
    # Several hookpoints (module parallelism) are captured in the same forward.
    hookpoints = [canonical_hookpoint(h) for h in data.hookpoints] or [""]
    hookpoint = hookpoints[0]
    from saekit.sae import get_architecture

    # g-SAE trains on the downstream-loss gradient: store it beside x (full forward + backward).
    archs = [a.strip() for a in str(settings["architecture"]).split(",") if a.strip()]
    with_grad = any("grad" in get_architecture(a).needs_extras for a in archs)
    cache_dir = out / "activations"
    if len(hookpoints) == 1 and (cache_dir / "manifest.json").is_file():
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
            return f"cache:{cache_dir.resolve()}@{hp}"
    print(f"loading model {name!r} ...")
    model, tokenizer = load_model_cached(name)
    hookpoint = hookpoint or default_hookpoint(model)
    hookpoints = [h or hookpoint for h in hookpoints]
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
        hookpoints,
        n_tokens=n,
        heldout_tokens=max(n // 10, 4096),
        seed=int(settings["seed"]),
        dtype="fp32",
        masking=Masking(max_norm_factor=10.0),
        with_grad=with_grad,
        overwrite=True,
        progress=True,
    )
    return f"cache:{cache_dir.resolve()}@{','.join(hookpoints)}"


def _in_run(spec: str, out: Path) -> str | None:
    """The cache path of `spec` relative to the run directory when it lies inside it."""
    from saekit.data.spec import parse_data_spec

    data = parse_data_spec(spec)
    if data.kind != "cache":
        return None
    try:
        rel = Path(data.source).resolve().relative_to(out.resolve())
    except ValueError:
        return None
    return str(replace(data, source=str(rel))).removeprefix("cache:")


def read_run_file(run_dir: Path) -> dict[str, Any]:
    """run.json's settings, checked like a config file."""
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: not a directory")
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        if (run_dir / "activations").is_dir():
            raise UsageError(
                f"--resume {run_dir}: no run.json: the run stopped while capturing activations, before "
                "training began; re-run the same 'saekit train' command to continue"
            )
        raise UsageError(f"--resume {run_dir}: not a saekit run directory (no run.json)")
    try:
        doc = json.loads(run_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UsageError(f"{run_file}: not valid JSON ({e})") from None
    settings = doc.get("settings") if isinstance(doc, dict) else None
    if not isinstance(settings, dict):
        raise UsageError(f"{run_file}: no 'settings' object")
    settings = {**DEFAULTS, **settings}
    check_settings(settings, where=str(run_file))
    if not isinstance(settings.get("train_data"), str):
        raise UsageError(f"{run_file}: 'train_data' must be a data spec string")
    rel = settings.get("train_data_in_run")
    if rel is not None:
        # The run's own activation cache, relative to the run directory (runs move).
        if not isinstance(rel, str):
            raise UsageError(f"{run_file}: 'train_data_in_run' must be a string")
        settings["train_data"] = f"cache:{run_dir.resolve() / rel}"
    return settings


def run(args) -> int:
    if args.nproc is not None and args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args.nproc)
    from saekit.training.distributed import from_environment

    device = resolve_device(args.device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    group = from_environment(args.parallel, args.dist_timeout, backend)
    args.device = device
    try:
        return _run(args, group)
    finally:
        if group is not None:
            group.close()


def own_hookpoint(source: str, hookpoints: list[str], group) -> tuple[str, tuple[int, int]]:
    """(this rank's hookpoint, (start, step) of its share of the sweep): rank r trains
    hookpoint r mod H, and the W/H ranks of one hookpoint split its sweep."""
    if group is None or group.mode != "modules":
        raise UsageError(
            f"{len(hookpoints)} hookpoints: train them together with --nproc N --parallel "
            "modules (one capture, a set of SAEs per hookpoint), or one run per hookpoint"
        )
    if not source.startswith("cache:"):
        raise UsageError("several hookpoints train from a cache: keep --cache-tokens above 0")
    n_hooks, world = len(hookpoints), group.world_size
    if world % n_hooks:
        raise UsageError(f"{n_hooks} hookpoints on {world} ranks: use a multiple of {n_hooks}")
    return hookpoints[group.rank % n_hooks], (group.rank // n_hooks, world // n_hooks)


def resolve_device(name: str) -> str:
    """auto -> cuda (this rank's GPU under torchrun) when available, else cpu."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    elif name != "cpu":
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def launch_torchrun(nproc: int) -> int:
    """Re-run this very command on `nproc` local processes under torchrun."""
    argv = sys.argv[1:]
    for i, a in enumerate(argv):  # drop --nproc N / --nproc=N
        if a == "--nproc":
            argv = argv[:i] + argv[i + 2 :]
            break
        if a.startswith("--nproc="):
            argv = argv[:i] + argv[i + 1 :]
            break
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "saekit", *argv]
    print("saekit train: launching " + " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd)


def _run(args, group) -> int:
    from saekit.data import open_stream, parse_data_spec
    from saekit.sae import get_architecture, make_config
    from saekit.training.distributed import BroadcastStream, split_stream
    from saekit.training.logsinks import parse_sinks
    from saekit.training.report import write_run_report
    from saekit.training.trainer import TrainConfig, Trainer

    main = group is None or group.is_main
    if args.resume:
        settings = read_run_file(args.resume)
        out = args.resume
        check_output_dir(out, "--resume")
    else:
        settings = resolve(args)
        out = Path(settings["out"])
        check_output_dir(out)
        settings["data"] = absolute_data_spec(str(settings["data"]))
        # Architecture names and options fail now, before a capture of many minutes (with
        # placeholder widths; a SOURCE->TARGET spec means transcoders).
        sweep(settings, 1, 1 if "->" in str(settings["data"]) else None)
    threads = set_threads(args.threads)
    log_sinks = parse_sinks(settings.get("log"))  # a missing package fails before any work
    if not args.resume:
        if main:  # one capture; the other ranks wait for it
            settings["train_data"] = prepare_data(settings, out)
            settings["train_data_in_run"] = _in_run(settings["train_data"], out)
        if group is not None:
            settings = group.broadcast_object(settings if main else None)
    batch_size = int(settings["batch_size"])
    modules = group is not None and group.mode == "modules"
    data = parse_data_spec(settings["train_data"])
    hookpoints = list(data.hookpoints) if len(data.hookpoints) > 1 else []
    if hookpoints:  # several hookpoints: each rank reads its own from the shared cache
        hookpoint, share = own_hookpoint(str(data), hookpoints, group)
        stream = open_stream(data.with_hookpoint(hookpoint), batch_size, seed=int(settings["seed"]))
    elif modules:  # one reader, batches broadcast to every rank
        check_data_spec(settings["train_data"])
        source = (
            open_stream(settings["train_data"], batch_size, seed=int(settings["seed"]))
            if main
            else None
        )
        d_in = group.broadcast_object(source.d_in if main else None)
        stream = BroadcastStream(source, group, d_in, batch_size)
    else:
        check_data_spec(settings["train_data"])
        stream = open_stream(settings["train_data"], batch_size, seed=int(settings["seed"]))
        if group is not None:
            stream = split_stream(stream, group)
    ranks = f", rank {group.rank} of {group.world_size} ({group.mode})" if group else ""
    print(
        f"saekit train: data {settings['data']} (d_in={stream.d_in}), {threads} thread(s), "
        f"run dir {out}{ranks}"
    )
    run_dir = out / f"rank{group.rank}" if modules else out
    show_progress = not args.no_progress and main
    if args.resume:
        trainer = Trainer.resume(
            run_dir, stream, group, progress_bar=show_progress, device=args.device
        )
        print(f"resuming at step {trainer.step} of {trainer.cfg.steps}")
    else:
        # Paired data (model:NAME@SOURCE->TARGET) carry a target: every SAE is a transcoder.
        pair = stream.describe().get("pair")  # passed on by the distributed wrappers too
        runs = all_runs = sweep(settings, stream.d_in, pair["d_out"] if pair else None)
        check_memory(runs, stream.d_in)
        if hookpoints:  # this rank's share of the sweep, named by its hookpoint
            mine = list(runs)[share[0] :: share[1]]
            runs = {f"{name}-{hookpoint}": runs[name] for name in mine}
            all_runs = {f"{n}-{h}": r for h in hookpoints for n, r in all_runs.items()}
        elif modules:
            mine = list(runs)[group.rank :: group.world_size]
            if not mine:
                raise UsageError(
                    f"--parallel modules: {len(runs)} SAE(s) for {group.world_size} ranks; "
                    "use at most as many processes as SAEs"
                )
            runs = {name: runs[name] for name in mine}
        saes = {name: get_architecture(a)(make_config(a, **cfg)) for name, (a, cfg) in runs.items()}
        cfg = TrainConfig(
            steps=int(settings["steps"]),
            lr=settings["lr"],
            checkpoint_every=int(settings["checkpoint_every"]),
            dead_window_tokens=int(settings["dead_window_tokens"]),
            progress_bar=show_progress,
            device=args.device,
            autocast=args.autocast,
        )
        out.mkdir(parents=True, exist_ok=True)
        if main:
            # A new run in this directory: checkpoints of an earlier run there are not
            # resumable with the new run.json, and a fallback must never pick one up.
            if (out / "checkpoints").is_dir():
                import shutil

                shutil.rmtree(out / "checkpoints")
            from saekit.formats.atomic import atomic_write_text

            record: dict[str, Any] = {"settings": settings, "saes": all_runs}
            if pair:
                record["pair"] = pair  # source and target of the transcoders
            atomic_write_text(out / "run.json", json.dumps(record, indent=2) + "\n")
        if group is not None:
            group.barrier()  # rank directories are cleared before any rank writes
        info = {"data_spec": settings["train_data"]}
        trainer = Trainer(saes, stream, cfg, run_dir, run_info=info, group=group)
        per_step = stream.batch_size * (group.world_size if group and not modules else 1)
        print(
            f"training {len(saes)} SAE(s): {', '.join(saes)}; {cfg.steps} steps x {per_step} tokens"
        )
    trainer.log_sinks = log_sinks
    if modules:
        trainer.saes_dir = out / "saes"
    try:
        trainer.fit()
    except KeyboardInterrupt:
        from saekit.training.checkpoint import latest_checkpoint

        if latest_checkpoint(out / "checkpoints") is None:
            print(
                "\ninterrupted before the first checkpoint; run the same command again to start over"
            )
        else:
            print(
                f"\ninterrupted at step {trainer.step}; checkpoint written. Resume with: saekit train --resume {out}"
            )
        return 130
    if group is not None:
        group.barrier()  # every rank's SAEs are on disk
    if not main:
        return 0
    report = write_run_report(out, settings, eval_tokens=int(settings["eval_tokens"]))
    print(report.summary)
    print(
        f"SAEs:    {out / 'saes'}\nmetrics: {out / 'metrics.jsonl'}\nreport:  {report.markdown} and {report.html}"
    )
    return 0
