"""Where training metrics go: metrics.jsonl (always available), TensorBoard event files and
Weights & Biases in offline mode. Chosen with `saekit train --log jsonl,tensorboard,wandb`.

TensorBoard and W&B are optional packages (extras `saekit[tensorboard]`, `saekit[wandb]`):
asking for one that is not installed is a one-line error before training starts. W&B always
runs offline here (no network, no account); `wandb sync <run dir>/wandb/offline-run-*`
uploads a run later.

Every sink receives the same rows: {"step", "tokens", "sae", metric: value, ...}, one per SAE
per logging step. On resume a sink drops what was logged after the checkpoint it resumes from.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SINKS = ("jsonl", "tensorboard", "wandb")
# sink -> (module that must import, extra that installs it)
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class LogSinkError(ValueError):
    """An unknown sink name, or a sink whose package is not installed."""


def parse_sinks(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """'jsonl,tensorboard' -> ('jsonl', 'tensorboard'), checking names and packages now so a
    missing package fails before any data is read."""
    if spec is None:
        return ("jsonl",)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    if not names:
        return ("jsonl",)
    for name in names:
        if name not in SINKS:
            raise LogSinkError(f"unknown log sink {name!r}; choose from {', '.join(SINKS)}")
        if name in _NEEDS:
            module, extra = _NEEDS[name]
            if importlib.util.find_spec(module) is None:
                raise LogSinkError(
                    f"--log {name} needs the '{module}' package: pip install 'saekit[{extra}]'"
                )
    return tuple(names)


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    skip = {"step", "tokens", "sae"}
    return {
        k: float(v)
        for k, v in row.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class JsonlSink:
    """metrics.jsonl: one JSON object per SAE per logging step (the original format)."""

    def __init__(self, out_dir: Path, step: int):
        path = out_dir / "metrics.jsonl"
        if path.exists():  # resumed: drop lines written after the checkpoint we resumed from
            keep = [
                ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
            ]
            path.write_text("".join(k + "\n" for k in keep))
        self._fh = open(path, "a")

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class TensorBoardSink:
    """Event files under <run>/tensorboard, one scalar tag per SAE and metric
    ("<sae>/<metric>"), x axis = optimiser step."""

    def __init__(self, out_dir: Path, step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides events at or after it that an earlier (interrupted)
        # run of this directory wrote, so a resumed curve has no doubled segment.
        self._writer = SummaryWriter(
            log_dir=str(out_dir / "tensorboard"), purge_step=step if step > 0 else None
        )

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            for key, value in _numeric(row).items():
                self._writer.add_scalar(f"{row['sae']}/{key}", value, row["step"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """A W&B run in offline mode under <run>/wandb; metrics as "<sae>/<metric>"."""

    def __init__(self, out_dir: Path, step: int):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        # A resumed training run opens a new offline W&B run in the same folder; its steps
        # continue after the checkpoint's.
        self._run = wandb.init(
            mode="offline",
            dir=str(out_dir),
            project=os.environ.get("WANDB_PROJECT", "saekit"),
            name=out_dir.name,
        )

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        payload: dict[str, float] = {"tokens": float(rows[0]["tokens"])}
        for row in rows:
            payload.update({f"{row['sae']}/{k}": v for k, v in _numeric(row).items()})
        self._run.log(payload, step=int(rows[0]["step"]))

    def close(self) -> None:
        self._run.finish()


_CLASSES = {"jsonl": JsonlSink, "tensorboard": TensorBoardSink, "wandb": WandbSink}


class LogSinks:
    """Several sinks behind one write/close."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        for sink in self.sinks:
            sink.write(rows)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_sinks(out_dir: str | Path, names: str | Sequence[str] | None, step: int = 0) -> LogSinks:
    """Open the named sinks for a run directory, resuming at `step`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return LogSinks([_CLASSES[name](out_dir, step) for name in parse_sinks(names)])
