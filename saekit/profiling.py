"""Named phases of a training step, seen by torch.profiler (and ignored without one): the
step breakdown of `benchmarks/train_step.py --breakdown` reads them. A few microseconds each."""

from __future__ import annotations

import torch

PREFIX = "phase: "


def phase(name: str) -> torch.profiler.record_function:
    return torch.profiler.record_function(PREFIX + name)
