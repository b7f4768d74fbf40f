"""The learning-rate range test behind `saekit train --find-lr`.

One short run of the real trainer (same scaling, b_dec initialisation, losses and optimiser)
whose learning rate grows geometrically from lr_min to lr_max, one step each; the loss is
recorded against the rate until it diverges (Smith 2017, "Cyclical Learning Rates for
Training Neural Networks", arXiv:1506.01186, §3.3). The suggestion is the rate at the lowest
smoothed loss divided by 10: the loss is still falling fast there and far from the edge where
it blows up. It is a starting point for a budget, not a tuned value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from saekit.sae.base import SAE
from saekit.training.trainer import NonFiniteTrainingError, TrainConfig, Trainer

SMOOTHING = 0.9  # exponential moving average of the loss: one batch is noisy
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum


@dataclass
class LRRangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed (bias-corrected EMA)
    suggested: float

    def summary(self) -> str:
        best = min(range(len(self.losses)), key=self.losses.__getitem__)
        text = (
            f"lr range test: {len(self.lrs)} steps from {self.lrs[0]:.1e} to {self.lrs[-1]:.1e}; "
            f"lowest smoothed loss {self.losses[best]:.4g} at lr {self.lrs[best]:.2e}; "
            f"suggested --lr {self.suggested:.1e}"
        )
        if best == len(self.losses) - 1:
            text += " (the loss was still falling at the largest rate: the suggestion is a floor)"
        return text

    def figure(self):
        """Smoothed loss against lr (log-log), the suggestion as a dashed line."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.plot(self.lrs, self.losses, label="smoothed training loss")
        ax.axvline(self.suggested, color="C3", ls="--", label=f"suggested {self.suggested:.1e}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title("learning-rate range test")
        ax.legend()
        fig.tight_layout()
        return fig

    def plot(self, path: str | Path) -> Path:
        self.figure().savefig(path, dpi=110)
        return Path(path)


def find_lr(
    sae: SAE,
    stream,
    cfg: TrainConfig | None = None,
    *,
    lr_min: float = 1e-6,
    lr_max: float = 1.0,
    steps: int = 100,
) -> LRRangeTest:
    """Train `sae` (in place) for up to `steps` batches at geometrically growing rates."""
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got {lr_min} and {lr_max}")
    if steps < 2:
        raise ValueError("the range test needs at least 2 steps")
    if not sae.learns_by_gradient:
        raise ValueError(f"{sae.architecture} has no learning rate (it learns without gradients)")
    cfg = replace(
        cfg or TrainConfig(),
        steps=steps,
        lr=lr_min,
        warmup_steps=0,
        decay_fraction=0.0,
        log_every=1,
        checkpoint_every=0,
        progress_bar=False,
    )
    trainer = Trainer({"lr-range-test": sae}, stream, cfg)
    member = trainer.members[0]
    growth = (lr_max / lr_min) ** (1 / (steps - 1))
    member.scheduler = torch.optim.lr_scheduler.LambdaLR(member.optimizer, lambda s: growth**s)
    trainer._initialise()
    lrs: list[float] = []
    losses: list[float] = []
    average = 0.0
    for step in range(steps):
        lr = member.optimizer.param_groups[0]["lr"]
        try:
            trainer.train_step(trainer._next_batch())
        except NonFiniteTrainingError:
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * member.last["loss"]
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        if not math.isfinite(smoothed):
            break
        lrs.append(lr)
        losses.append(smoothed)
        if smoothed > DIVERGED * min(losses):
            break
    if len(lrs) < 2:
        raise ValueError("the loss diverged at once: lower --lr-min")
    best = min(range(len(losses)), key=losses.__getitem__)
    return LRRangeTest(lrs, losses, suggested=lrs[best] / 10)
