"""The steps of a training run, as `saekit train` takes them: the data (model data captured
once into the run's own cache), the sweep's SAEs, training (on several processes under
torchrun), then evaluation and the report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from saekit.data.spec import DataSpec, parse_data_spec
from saekit.data.splits import HELDOUT
from saekit.data.stream import ActivationStream, Batch
from saekit.training.run import RunFiles, RunSettings, absolute_data_spec, clear_checkpoints
from saekit.training.sweep import architecture_names, check_memory, expand


def train_run(settings: RunSettings, resume: Path | None = None) -> int:
    """Run (or with `resume`, continue) the run `settings` describe; returns the exit status
    (130: interrupted, with a checkpoint to resume from)."""
    from saekit.training.distributed import from_environment, resolve_device

    device = resolve_device(settings.train.device)
    settings = replace(settings, train=replace(settings.train, device=device))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    group = from_environment(settings.run.parallel, settings.run.dist_timeout, backend)
    try:
        return _train(settings, resume, group)
    finally:
        if group is not None:
            group.close()


def check_before_work(settings: RunSettings) -> None:
    """Names and options fail now, before a capture of many minutes (with placeholder widths;
    a SOURCE->TARGET spec means transcoders)."""
    from saekit.training.logsinks import parse_sinks

    archs = architecture_names(settings.run.architecture)
    expand(archs, settings.options, 1, 1, d_out=1 if "->" in settings.run.data else None)
    parse_sinks(settings.run.log)  # a missing package fails before any work


def _train(settings: RunSettings, resume: Path | None, group) -> int:
    from saekit.training.logsinks import parse_sinks
    from saekit.training.report import write_run_report
    from saekit.training.trainer import Trainer

    main = group is None or group.is_main
    modules = group is not None and group.mode == "modules"
    if resume:
        files = RunFiles.read(resume)
        out = resume
    else:
        out = Path(settings.run.out)
        settings.run.data = absolute_data_spec(settings.run.data)
        check_before_work(settings)
        files = _prepare_data(settings, out) if main else None
        if group is not None:  # one capture; the other ranks wait for it
            files = group.broadcast_object(files)
    log_sinks = parse_sinks(settings.run.log)
    stream, hookpoint, share = _open_stream(files.train_data, settings, group)
    ranks = f", rank {group.rank} of {group.world_size} ({group.mode})" if group else ""
    print(f"saekit train: data {settings.run.data} (d_in={stream.d_in}), run dir {out}{ranks}")
    run_dir = out / f"rank{group.rank}" if modules else out
    heldout = _heldout_batch(files.train_data, settings, hookpoint)
    progress = settings.train.progress_bar and main
    if resume:
        trainer = Trainer.resume(
            run_dir,
            stream,
            group,
            heldout=heldout,
            progress_bar=progress,
            device=settings.train.device,
        )
        print(f"resuming at step {trainer.step} of {trainer.cfg.steps}")
    else:
        saes, files = _build_saes(settings, files, stream, group, hookpoint, share)
        out.mkdir(parents=True, exist_ok=True)
        if main:
            clear_checkpoints(out)
            files.write(out)
        if group is not None:
            group.barrier()  # rank directories are cleared before any rank writes
        cfg = replace(settings.train, progress_bar=progress)
        info = {"data_spec": files.train_data}
        trainer = Trainer(saes, stream, cfg, run_dir, info, group, heldout)
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
        print(_interrupted(out, trainer.step))
        return 130
    if group is not None:
        group.barrier()  # every rank's SAEs are on disk
    if not main:
        return 0
    report = write_run_report(out, settings, files.train_data)
    print(report.summary)
    return 0


def lr_range_run(settings: RunSettings, steps: int) -> int:
    """`saekit train --find-lr`: the learning-rate range test (`saekit.training.lr_finder`) for
    the run's first SAE on the run's own data, a plot in --out, and a suggested --lr. A model
    capture is written where the run puts it, so the training run after it reuses it."""
    from saekit.training.lr_finder import find_lr
    from saekit.training.trainer import default_lr

    out = Path(settings.run.out)
    settings.run.data = absolute_data_spec(settings.run.data)
    check_before_work(settings)
    files = _prepare_data(settings, out)
    stream, _, _ = _open_stream(files.train_data, settings, None)
    saes, _ = _build_saes(settings, files, stream, None, None, (0, 1))
    name, sae = next(iter(saes.items()))
    result = find_lr(sae, stream, settings.train, steps=steps)
    out.mkdir(parents=True, exist_ok=True)
    plot = result.plot(out / "lr_range_test.png")
    # The test sees 100 steps, not the latents that die over a long run at a high rate: on
    # SmolLM2 and Gemma its suggestion was 0.6-3.5x the rate a full sweep chose, the most at
    # the widest SAEs (benchmarks/RESULTS.md, "Learning rate"), so the default is printed too.
    default = default_lr(sae.n_latents, sae.architecture)
    print(
        f"{name}: {result.summary()}\nsaekit's default --lr for this SAE: {default:.1e} "
        f"(from a sweep of full runs; the range test cannot see latents dying)\nplot: {plot}"
    )
    return 0


def _interrupted(out: Path, step: int) -> str:
    from saekit.training.checkpoint import latest_checkpoint

    if latest_checkpoint(out / "checkpoints") is None:
        return "\ninterrupted before the first checkpoint; run the same command again to start over"
    return (
        f"\ninterrupted at step {step}; checkpoint written. "
        f"Resume with: saekit train --resume {out}"
    )


def _prepare_data(settings: RunSettings, out: Path) -> RunFiles:
    from saekit.sae import get_architecture
    from saekit.training.capture import run_cache

    archs = architecture_names(settings.run.architecture)
    # g-SAE trains on the downstream-loss gradient: store it beside x (forward + backward).
    with_grad = any("grad" in get_architecture(a).needs_extras for a in archs)
    spec = run_cache(
        settings.run.data,
        settings.run.cache_tokens,
        settings.capture,
        out,
        settings.run.seed,
        with_grad,
    )
    return RunFiles(settings, spec)


def _stream_kwargs(spec: str, settings: RunSettings) -> dict[str, Any]:
    """A model stream (no cache) reads the run's corpus in contexts of its length."""
    if not spec.startswith("model:"):
        return {}
    return {"corpus": settings.capture.corpus, "ctx_len": settings.capture.ctx_len}


def _open_stream(
    spec: str, settings: RunSettings, group
) -> tuple[ActivationStream, str | None, tuple[int, int]]:
    """(this process's stream, its hookpoint when the run has several, (start, step) of its
    share of the sweep)."""
    from saekit.data import open_stream
    from saekit.training.distributed import BroadcastStream, split_stream

    batch, seed = settings.run.batch_size, settings.run.seed
    data = parse_data_spec(spec)
    if len(data.hookpoints) > 1:  # several hookpoints: each rank reads its own from the cache
        hookpoint, share = _own_hookpoint(data, group)
        return open_stream(data.with_hookpoint(hookpoint), batch, seed=seed), hookpoint, share
    kwargs = _stream_kwargs(spec, settings)
    if group is not None and group.mode == "modules":  # one reader, batches broadcast
        main = group.is_main
        reader = open_stream(spec, batch, seed=seed, **kwargs) if main else None
        d_in = group.broadcast_object(reader.d_in if main else None)
        return BroadcastStream(reader, group, d_in, batch), None, (0, 1)
    stream = open_stream(spec, batch, seed=seed, **kwargs)
    return (split_stream(stream, group) if group is not None else stream), None, (0, 1)


def _own_hookpoint(data: DataSpec, group) -> tuple[str, tuple[int, int]]:
    """(this rank's hookpoint, (start, step) of its share of the sweep): rank r trains
    hookpoint r mod H, and the W/H ranks of one hookpoint split its sweep."""
    hookpoints = data.hookpoints
    if group is None or group.mode != "modules":
        raise ValueError(
            f"{len(hookpoints)} hookpoints: train them together with --nproc N --parallel "
            "modules (one capture, a set of SAEs per hookpoint), or one run per hookpoint"
        )
    if data.kind != "cache":
        raise ValueError("several hookpoints train from a cache: keep --cache-tokens above 0")
    n_hooks, world = len(hookpoints), group.world_size
    if world % n_hooks:
        raise ValueError(f"{n_hooks} hookpoints on {world} ranks: use a multiple of {n_hooks}")
    return hookpoints[group.rank % n_hooks], (group.rank // n_hooks, world // n_hooks)


def _heldout_batch(spec: str, settings: RunSettings, hookpoint: str | None) -> Batch | None:
    """The fixed held-out batch scored at every metric row: the first heldout_tokens of the
    held-out split (model data without a cache: of the held-out documents)."""
    from saekit.data import open_stream

    n = settings.run.heldout_tokens
    if n <= 0:
        return None
    data = parse_data_spec(spec)
    if hookpoint is not None:
        data = data.with_hookpoint(hookpoint)
    kwargs = _stream_kwargs(spec, settings)
    stream = open_stream(data, n, seed=settings.run.seed, split=HELDOUT, **kwargs)
    return next(iter(stream), None)


def _build_saes(settings: RunSettings, files: RunFiles, stream, group, hookpoint, share):
    """The SAEs this process trains, and the run files naming every SAE of the run."""
    from saekit.sae import get_architecture, make_config

    modules = group is not None and group.mode == "modules"
    # Paired data (model:NAME@SOURCE->TARGET) carry a target: every SAE is a transcoder.
    pair = stream.describe().get("pair")  # passed on by the distributed wrappers too
    archs = architecture_names(settings.run.architecture)
    runs = all_runs = expand(
        archs,
        settings.options,
        stream.d_in,
        settings.run.n_latents,
        settings.run.seed,
        pair["d_out"] if pair else None,
    )
    check_memory(runs, stream.d_in)
    if hookpoint is not None:  # this rank's share of the sweep, named by its hookpoint
        mine = list(runs)[share[0] :: share[1]]
        runs = {f"{name}-{hookpoint}": runs[name] for name in mine}
        hookpoints = parse_data_spec(files.train_data).hookpoints
        all_runs = {f"{n}-{h}": r for h in hookpoints for n, r in all_runs.items()}
    elif modules:
        mine = list(runs)[group.rank :: group.world_size]
        if not mine:
            raise ValueError(
                f"--parallel modules: {len(runs)} SAE(s) for {group.world_size} ranks; "
                "use at most as many processes as SAEs"
            )
        runs = {name: runs[name] for name in mine}
    saes = {name: get_architecture(a)(make_config(a, **cfg)) for name, (a, cfg) in runs.items()}
    return saes, replace(files, settings=settings, saes=all_runs, pair=pair)
