"""`saekit train`: train one SAE or a sweep of SAEs on one activation stream.

Its flags are generated from the settings' dataclasses: RunConfig (saekit/training/run.py),
CaptureConfig (training/capture.py), TrainConfig (training/trainer.py) and every registered
architecture's options; the run itself is saekit.training.pipeline.train_run."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from saekit.cli.common import (
    UsageError,
    check_data_spec,
    check_output_dir,
    int_in,
    parse_options,
    path_arg,
    set_threads,
    text_arg,
    thread_count,
)
from saekit.cli.flags import add_fields, add_sweep_fields, load_config_file, sweep_values
from saekit.training.capture import CaptureConfig
from saekit.training.run import GROUPS, RunConfig, RunFiles, RunSettings, architecture_options
from saekit.training.trainer import TrainConfig

# Flags a resumed run takes from its command line; everything else comes from run.json.
RESUME_OVERRIDES = ("progress_bar", "device", "parallel", "dist_timeout")


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
    p.add_argument(
        "--config",
        type=path_arg,
        help="TOML or JSON file of settings: any flag below as a key (with underscores); a "
        "list sweeps an architecture option; an [ARCH] table holds options for one "
        "architecture only; flags override the file",
    )
    p.add_argument(
        "--resume", type=path_arg, metavar="RUN_DIR", help="continue an interrupted run exactly"
    )
    p.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE[,VALUE]",
        type=text_arg,
        help="architecture option (e.g. l1_coeff=5, or matryoshka.k=24 for one architecture "
        "only); repeat; comma lists sweep",
    )
    p.add_argument(
        "--find-lr",
        nargs="?",
        const=100,
        type=int_in(2),
        metavar="STEPS",
        help="instead of training: the learning-rate range test (default 100 steps from 1e-6 "
        "to 1) for the first SAE on the run's data; prints a suggested --lr, plots loss vs "
        "lr into --out",
    )
    p.add_argument(
        "--threads", type=thread_count, help="torch threads (default: all cores when idle, else 1)"
    )
    p.add_argument(
        "--nproc",
        type=int_in(1),
        help="train on N processes: re-launches this command under torchrun (CPU: gloo)",
    )
    add_fields(p, RunConfig, "run", aliases={"architecture": ["-a"]})
    add_fields(p, CaptureConfig, "capture (model data: the run's activation cache)")
    add_fields(p, TrainConfig, "training")
    add_sweep_fields(
        p,
        architecture_options(),
        "architecture options (each applies to the architectures listed; a comma list sweeps)",
    )


def run(args) -> int:
    from saekit.training.pipeline import train_run

    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args.nproc)
    if args.resume:
        check_output_dir(args.resume, "--resume")
        files = RunFiles.read(args.resume)
        check_data_spec(files.train_data)
        given = {k: getattr(args, k) for k in RESUME_OVERRIDES if hasattr(args, k)}
        settings = _replace_fields(files.settings, given)
        set_threads(args.threads)
        return train_run(settings, resume=args.resume)
    settings = resolve(args)
    check_output_dir(Path(settings.run.out))
    check_data_spec(settings.run.data)
    set_threads(args.threads)
    if args.find_lr:
        from saekit.training.pipeline import lr_range_run

        return lr_range_run(settings, args.find_lr)
    return train_run(settings)


def resolve(args) -> RunSettings:
    """Defaults < config file < flags."""
    flat: dict[str, Any] = {}
    options: dict[str, list[Any]] = {}
    where = f"config file {args.config}" if args.config else ""
    if args.config:
        _read_config(args.config, flat, options)
    names = {f.name for group in GROUPS for f in fields(group)}
    flat.update({k: v for k, v in vars(args).items() if k in names})
    options.update(
        {k[len("option:") :]: v for k, v in vars(args).items() if k.startswith("option:")}
    )
    options.update(parse_options(args.option or []))
    try:
        return RunSettings.from_flat({**flat, "options": options}, where=where)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _read_config(path: Path, flat: dict[str, Any], options: dict[str, list[Any]]) -> None:
    """A config file's settings into `flat`, its architecture options into `options`."""
    import argparse

    from saekit.options import type_hints
    from saekit.sae import architectures, get_architecture

    doc = load_config_file(path)
    names = {f.name for group in GROUPS for f in fields(group)}
    arch_options = architecture_options()
    unknown = []
    for key, value in doc.items():
        if key in names:
            flat[key] = value
        elif key == "option":
            options.update(_option_table(path, value))
        elif key in arch_options:
            arch, f = arch_options[key][0]
            tp = type_hints(get_architecture(arch).Config)[key]
            try:
                options[key] = sweep_values(f, tp, value)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"config file {path}: option {key!r} {e}") from None
        elif key in architectures() and isinstance(value, dict):
            table = _option_table(path, value)
            options.update({f"{key}.{k}": v for k, v in table.items()})
        else:
            unknown.append(key)
    if unknown:
        raise UsageError(
            f"config file {path}: unknown keys {sorted(unknown)}; valid: the flags of "
            "'saekit train --help' with underscores, 'option', and [ARCHITECTURE] tables"
        )


def _option_table(path: Path, value: Any) -> dict[str, list[Any]]:
    """`option = ["k=16,32"]` or a table {k = [16, 32]} -> {"k": [16, 32]}."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return parse_options(value)
    if isinstance(value, dict):
        return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
    raise UsageError(
        f"config file {path}: --option must be a list of KEY=VALUE strings or a table, got {value!r}"
    )


def _replace_fields(settings: RunSettings, given: dict[str, Any]) -> RunSettings:
    run = {k: v for k, v in given.items() if k in {f.name for f in fields(RunConfig)}}
    train = {k: v for k, v in given.items() if k in {f.name for f in fields(TrainConfig)}}
    return replace(
        settings, run=replace(settings.run, **run), train=replace(settings.train, **train)
    )


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
