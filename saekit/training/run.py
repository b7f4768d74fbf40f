"""A training run as `saekit train` makes one: settings (RunConfig, CaptureConfig,
TrainConfig and the architecture options), the run directory (run.json, the run's own
activation cache, checkpoints, SAEs, metrics, report) and the steps from data spec to report.

Settings are stored flat in run.json (every field name is unique across the groups), so a
run resumes from any directory with `saekit train --resume RUN_DIR`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from saekit.options import check_config_values, option
from saekit.training.capture import CaptureConfig
from saekit.training.sweep import MAX_LATENTS
from saekit.training.trainer import TrainConfig

MAX_SEED = 2**63 - 1


@dataclass
class RunConfig:
    """What a run trains on, how much, and where it writes."""

    # The main job: the offline default model (SmolLM2-135M), its middle layer's output.
    data: str = option(
        "model:default",
        "synthetic:RECIPE[:k=v,...] | model:NAME[@HOOKPOINT] | cache:DIR[@HOOKPOINT] | "
        "model:NAME@SOURCE->TARGET for transcoders, e.g. model:default@model.layers.6.mlp:in->out",
    )
    architecture: str = option("topk", "architecture name(s), comma-separated: each is trained")
    n_latents: int | None = option(None, "dictionary size (default 8 x d_in)", lo=1, hi=MAX_LATENTS)
    batch_size: int = option(1024, "tokens per step", lo=1)
    seed: int = option(0, "seed for data, initialisation and sampling", lo=0, hi=MAX_SEED)
    # Model data are captured once to an on-disk cache, then trained on for several passes
    # (README, "Why these defaults": 400,000 tokens and 3,000 steps make 7.7 passes).
    cache_tokens: int = option(
        400_000,
        "model data: tokens captured once into the run's cache before training "
        "(0 = stream straight from the model)",
        lo=0,
    )
    out: str = option("runs/latest", "run directory")
    eval_tokens: int = option(
        16384, "held-out tokens for the final evaluation (at most one pass over them)", lo=1
    )
    heldout_tokens: int = option(
        2048,
        "held-out tokens scored at every metric row, beside the training batch (0 = none)",
        lo=0,
    )
    browser_contexts: int = option(
        256,
        "model data: contexts the feature browser (and the report's top latents) is built "
        "from after training (0 = no browser build)",
        lo=0,
    )
    log: str = option("jsonl", "metric sinks: jsonl,tensorboard,wandb (W&B offline)")
    parallel: Literal["data", "modules"] = option(
        "data",
        "with several processes: 'data' splits every batch's tokens over ranks and all-reduces "
        "gradients; 'modules' spreads the sweep's SAEs over ranks, fed by one reader",
    )
    dist_timeout: float = option(
        300.0, "seconds a rank waits on its peers before failing with a message", lo=0, above=True
    )


GROUPS = (RunConfig, CaptureConfig, TrainConfig)


def architecture_options() -> dict[str, list[tuple[str, Any]]]:
    """Every option of every registered architecture: name -> [(architecture, field)], for
    the fields a user sets (d_in, d_out, n_latents and seed come from the data and the run)."""
    from saekit.sae import architectures, get_architecture

    found: dict[str, list[tuple[str, Any]]] = {}
    for arch in architectures():
        for f in fields(get_architecture(arch).Config):
            if f.name not in ("d_in", "d_out", "n_latents", "seed"):
                found.setdefault(f.name, []).append((arch, f))
    return found


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class RunSettings:
    """Everything a run was asked for. `options`: architecture option name ("k") or
    "ARCH.name" -> values; several values sweep."""

    run: RunConfig = field(default_factory=RunConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    options: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_flat(cls, values: dict[str, Any], where: str = "") -> RunSettings:
        """From {field name: value} (run.json, a config file, flags): every value checked by
        its field's declaration; `options` holds the architecture options."""
        prefix = f"{where}: " if where else ""
        known = {f.name: group for group in GROUPS for f in fields(group)}
        unknown = sorted(set(values) - set(known) - {"options"})
        if unknown:
            raise ValueError(f"{prefix}unknown setting(s) {unknown}")
        options = values.get("options", {})
        if not isinstance(options, dict) or not all(isinstance(v, list) for v in options.values()):
            raise ValueError(f"{prefix}options must map option names to lists of values")
        built = {}
        for group in GROUPS:
            mine = {k: v for k, v in values.items() if known.get(k) is group}
            try:
                check_config_values(group, mine, label=flag)
                built[group] = group(**mine)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{prefix}{e}") from None
        return cls(built[RunConfig], built[CaptureConfig], built[TrainConfig], dict(options))

    def to_flat(self) -> dict[str, Any]:
        return {
            **asdict(self.run),
            **asdict(self.capture),
            **asdict(self.train),
            "options": self.options,
        }


@dataclass
class RunFiles:
    """run.json: the settings, the data spec training reads (the run's own cache lies in the
    run directory and is recorded relative to it: runs move), and the SAEs of the sweep."""

    settings: RunSettings
    train_data: str
    saes: dict[str, Any] = field(default_factory=dict)
    pair: dict[str, Any] | None = None

    def write(self, run_dir: Path) -> None:
        from saekit.formats.atomic import atomic_write_text

        record: dict[str, Any] = {
            "settings": self.settings.to_flat(),
            "train_data": self.train_data,
            "train_data_in_run": _in_run(self.train_data, run_dir),
            "saes": self.saes,
        }
        if self.pair:
            record["pair"] = self.pair  # source and target of the transcoders
        atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> RunFiles:
        """run.json's contents, checked like a config file."""
        if not run_dir.is_dir():
            raise ValueError(f"--resume {run_dir}: not a directory")
        path = run_dir / "run.json"
        if not path.is_file():
            if (run_dir / "activations").is_dir():
                raise ValueError(
                    f"--resume {run_dir}: no run.json: the run stopped while capturing "
                    "activations, before training began; re-run the same 'saekit train' command "
                    "to continue"
                )
            raise ValueError(f"--resume {run_dir}: not a saekit run directory (no run.json)")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        settings = doc.get("settings") if isinstance(doc, dict) else None
        if not isinstance(settings, dict):
            raise ValueError(f"{path}: no 'settings' object")
        parsed = RunSettings.from_flat(settings, where=str(path))
        train_data, rel = doc.get("train_data"), doc.get("train_data_in_run")
        if not isinstance(train_data, str):
            raise ValueError(f"{path}: 'train_data' must be a data spec string")
        if rel is not None:
            if not isinstance(rel, str):
                raise ValueError(f"{path}: 'train_data_in_run' must be a string")
            train_data = f"cache:{run_dir.resolve() / rel}"
        return cls(parsed, train_data, doc.get("saes") or {}, doc.get("pair"))


def absolute_data_spec(spec: str) -> str:
    """cache:DIR with DIR made absolute, so a run resumes from any working directory."""
    from saekit.data.spec import parse_data_spec

    parsed = parse_data_spec(spec)
    if parsed.kind != "cache":
        return spec
    return str(replace(parsed, source=str(Path(parsed.source).resolve())))


def _in_run(spec: str, run_dir: Path) -> str | None:
    """The cache path of `spec` relative to the run directory when it lies inside it."""
    from saekit.data.spec import parse_data_spec

    parsed = parse_data_spec(spec)
    if parsed.kind != "cache":
        return None
    try:
        rel = Path(parsed.source).resolve().relative_to(run_dir.resolve())
    except ValueError:
        return None
    return str(replace(parsed, source=str(rel))).removeprefix("cache:")


def clear_checkpoints(run_dir: Path) -> None:
    """A new run in this directory: checkpoints of an earlier run there are not resumable
    with the new run.json, and a fallback must never pick one up."""
    if (run_dir / "checkpoints").is_dir():
        shutil.rmtree(run_dir / "checkpoints")
