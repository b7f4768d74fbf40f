"""One trainer for every architecture, and for several SAEs on one activation stream.

Per step and per SAE: training_forward -> summed loss -> backward -> radial decoder
gradient removed (unit-norm architectures) -> clip -> Adam -> LR schedule -> constraints
(unit atoms, thresholds) -> inference calibration -> dead-latent counters. Coders built
without gradients (ITDA) learn inside training_forward and skip the optimiser. Inputs are scaled so that
E||x|| = sqrt(d_in); the scale is folded into the weights when saving.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from saekit.data.hooks import all_finite
from saekit.data.stream import ActivationStream, Batch
from saekit.formats import native
from saekit.options import check_config_values, option
from saekit.profiling import phase
from saekit.sae.base import SAE, TrainContext
from saekit.sae.registry import get_architecture, make_config
from saekit.sae.standardise import standardise
from saekit.training import checkpoint as ckpt
from saekit.training import logsinks
from saekit.training.distributed import Distributed, resolve_device
from saekit.training.init import geometric_median, input_scale
from saekit.training.optimizers import OPTIMIZERS, ScheduleFreeSignSGD, make_optimizer


class NonFiniteActivationsError(ValueError):
    pass


class NonFiniteTrainingError(ValueError):
    """The loss or the parameters became NaN/Inf: training stops at that step and nothing
    from it is saved (the last checkpoint stays the last good one)."""


@dataclass
class TrainConfig:
    """Hyperparameters shared by every SAE trained on the stream."""

    # The main job's budget (README, "Why these defaults"): 1,500 steps of 1,024 tokens.
    steps: int = option(1500, "optimiser steps", lo=1)
    lr: float | None = option(
        None,
        "learning rate (default c / sqrt(n_latents / 2^14) per SAE: c = 5.3e-4 for the TopK "
        "family and JumpReLU, 7.5e-4 for ReLU and Gated, 1.5e-3 for MP-SAE, 2e-4 for the others)",
        lo=0,
        above=True,
    )
    betas: tuple[float, float] = option((0.9, 0.999), "Adam's beta1 and beta2", lo=0, hi=1)
    warmup_steps: int = option(50, "steps of linear learning-rate warm-up from 0", lo=0)
    decay_fraction: float = option(
        0.2, "final fraction of the steps over which the learning rate decays linearly to 0",
        lo=0, hi=1,
    )  # fmt: skip
    grad_clip: float = option(1.0, "clip the gradient norm at this value (0 = no clipping)", lo=0)
    dead_window_tokens: int = option(
        1_000_000, "tokens without firing before a latent counts as dead", lo=1
    )
    normalise_inputs: bool = option(
        True,
        "dataset-wide input scale: inputs scaled so that E‖x‖ = √d_in, folded into the "
        "weights on save (for per-token standardisation see --standardise-tokens)",
    )
    init_b_dec: Literal["geometric_median", "mean", "zero"] = option(
        "geometric_median", "initial b_dec: a sample's geometric median or mean, or zero"
    )
    init_batches: int = option(
        2, "batches read before step 0 to set the input scale and b_dec", lo=1
    )
    log_every: int = option(
        25, "steps between metric rows (metrics.jsonl, progress bar, held-out FVU)", lo=1
    )
    checkpoint_every: int = option(
        0, "steps between checkpoints (0 = only at the end and on interruption)", lo=0
    )
    progress_bar: bool = option(True, "show a progress bar", flag="progress")
    device: str = option(
        "auto",
        "cpu, cuda or cuda:N: where the SAEs and batches live (auto: CUDA when present, one GPU "
        "per rank under torchrun)",
    )
    autocast: Literal["bf16"] | None = option(
        None, "bf16: matmuls in bfloat16 under autocast; weights, thresholds and Adam stay fp32"
    )
    optimizer: str = option(
        "adam",
        "adam, signsgd-sf (sign descent, schedule-free) or muon (saekit/training/optimizers.py)",
        choices=OPTIMIZERS,
    )

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        # What the trainer cannot run without; every declared range is checked where values
        # come in (flags, config files, run.json), while the library leaves an extreme lr to
        # the divergence guard.
        structural = ("steps", "init_b_dec", "autocast", "optimizer")
        check_config_values(TrainConfig, {k: getattr(self, k) for k in structural})


# The default learning rate is c / sqrt(n_latents / 2^14), c per architecture, chosen by
# benchmarks/lr_sweep.py (benchmarks/RESULTS.md, "Learning rate": SmolLM2 layers 6 and 15,
# Gemma-3 layer 12, 1,152-5,120 latents, 300-1,500 steps of 1,024 tokens, 2 seeds on the
# main cells). TopK's lowest held-out FVU with at most 1% dead latents came at the same rate
# at every budget, so there is no budget term: 1e-3 at 4,608-5,120 latents, which sets c.
# Narrower SAEs want more than the -1/2 law gives (4e-3 at 1,152 latents, not 2e-3), but a
# steeper law carried outside the measured widths would give 0.07 at 64 latents. Higher
# rates kill 1-5% of the latents, which neither a 10x shorter dead window nor an 8x AuxK
# weight revives. The previous c, 2e-4, was fitted to long GPU runs and cost 5-25% FVU here.
# Matryoshka, AbsTopK and the choice coders agreed (g-SAE selects as TopK does). MP-SAE
# kills no latents and wants ~3x more: FVU fell at every step up to 4e-3 at 2,304 and 4,608
# latents (0.181 -> 0.164 and 0.166 -> 0.144 from TopK's rate), 8e-3 bought 1.5% more.
# Where the L0 is learned, c was chosen at L0 = 32 between sparsity coefficients: ReLU+L1
# and Gated want a higher rate (FVU 0.45 -> 0.26 and 0.26 -> 0.22 from 5e-4 to 2e-3 at 2,304
# latents), and JumpReLU's L0 only approaches its target in these budgets at TopK's rate.
_AT_TOPK_RATE = ("topk", "batchtopk", "matryoshka", "abstopk", "gsae", "mutual_choice",
                 "feature_choice", "jumprelu")  # fmt: skip
LR_AT_16K = {
    **dict.fromkeys(_AT_TOPK_RATE, 5.3e-4),
    "relu": 7.5e-4,
    "gated": 7.5e-4,
    "mpsae": 1.5e-3,
}
PREVIOUS_LR_AT_16K = 2e-4


def default_lr(n_latents: int, architecture: str) -> float:
    return LR_AT_16K.get(architecture, PREVIOUS_LR_AT_16K) / math.sqrt(n_latents / 2**14)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, constant, linear decay to 0 over the last decay_fraction."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    decay_start = cfg.steps * (1 - cfg.decay_fraction)
    if cfg.decay_fraction > 0 and step >= decay_start:
        return warm * max(0.0, (cfg.steps - step) / (cfg.steps - decay_start))
    return warm


@dataclass
class Member:
    """One SAE being trained, with its own optimiser, schedule and dead-latent counters."""

    name: str
    sae: SAE
    # None for coders built without gradients (ITDA grows its dictionary from the data).
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    tokens_since_fired: torch.Tensor
    last: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Train `saes` (name -> SAE) on `stream`, writing logs, checkpoints and SAEs to `out_dir`.

    Resume with `Trainer.resume(out_dir, stream)`: the stream must be rebuilt the same way
    (the CLI stores its spec in run.json); the result is bit-identical to an uninterrupted run.

    `heldout`: a fixed batch of held-out activations (raw units); every metric row then also
    records each SAE's FVU on it (`heldout_fvu`), beside the training batch's `fvu`: the gap
    between the two is what repeated passes over a cache cost.
    """

    def __init__(
        self,
        saes: dict[str, SAE],
        stream: ActivationStream,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        run_info: dict[str, Any] | None = None,
        group: Distributed | None = None,
        heldout: Batch | None = None,
    ):
        if not saes:
            raise ValueError("nothing to train: no SAEs given")
        for name, sae in saes.items():
            if sae.d_in != stream.d_in:
                raise ValueError(
                    f"SAE {name!r} has d_in={sae.d_in} but the stream has d_in={stream.d_in}"
                )
        self.cfg = cfg
        self.device = torch.device(resolve_device(cfg.device))
        for sae in saes.values():
            sae.to(self.device)
        self.stream = stream
        # Data parallelism (training/distributed.py): gradients, dead counters and tracked
        # buffers are reduced across ranks, and only rank 0 writes.
        # `group`: the peers this process moves in lockstep with (both layouts); `dp`: the
        # same group when it splits the data, else None.
        self.group = group
        self.dp = group if group is not None and group.mode == "data" else None
        if self.dp is not None:
            for name, sae in saes.items():
                if not sae.learns_by_gradient:
                    raise ValueError(f"{name} ({sae.architecture}) cannot train data-parallel")
        writes = self.dp is None or self.dp.is_main
        self.out_dir = Path(out_dir) if out_dir is not None and writes else None
        # Where SAE directories go (module-parallel ranks share one saes/ folder).
        self.saes_dir = self.out_dir / "saes" if self.out_dir is not None else None
        self.run_info = run_info or {}
        self.heldout = heldout
        self.members = [self._member(name, sae) for name, sae in saes.items()]
        self.step = 0
        self.scale = 1.0
        # A transcoder's target gets its own scale (E||y|| = sqrt(d_out)): an MLP's output can
        # be ~10x its input, and one shared scale left its loss ~100x the usual size.
        self.target_scale = 1.0
        self.initialised = False
        self._batches: Iterator[Batch] | None = None
        # Stream position after the last batch fetched whole (and so trained on, since
        # interruptions are only honoured between steps): what a checkpoint must record.
        self._stream_position: dict[str, Any] | None = None

    # ---- construction ------------------------------------------------------------------------
    def _member(self, name: str, sae: SAE) -> Member:
        counters = torch.zeros(sae.n_latents, dtype=torch.int64, device=self.device)
        if not sae.learns_by_gradient:
            return Member(name, sae, None, None, counters)
        lr = self.cfg.lr if self.cfg.lr is not None else default_lr(sae.n_latents, sae.architecture)
        opt = make_optimizer(self.cfg.optimizer, sae.parameters(), lr=lr, betas=self.cfg.betas)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, self.cfg))
        return Member(name, sae, opt, sched, counters)

    def _next_batch(self) -> Batch:
        if self._batches is None:
            self._batches = iter(self.stream)
        try:
            batch = next(self._batches)
        except StopIteration:
            raise RuntimeError(f"the activation stream ran out after {self.step} steps") from None
        self._stream_position = self.stream.state_dict()
        if not all_finite(batch.x):
            bad = (~torch.isfinite(batch.x)).any(-1).nonzero().flatten()[:5].tolist()
            raise NonFiniteActivationsError(
                f"NaN/Inf activations in the batch for step {self.step} (rows {bad}); "
                "nothing was trained on it — check the data source"
            )
        return self._scaled(batch)

    def _scaled(self, batch: Batch) -> Batch:
        """The batch on the training device, in the training units (input scale applied)."""
        x = batch.x.to(self.device).float() * self.scale
        extras = {k: v.to(self.device) for k, v in batch.extras.items()}
        if "target" in extras:  # transcoders: the target's own scale, folded on save
            extras["target"] = extras["target"].float() * self.target_scale
        if "grad" in extras:
            # d loss / d(s·x) = (d loss / dx) / s: keep the gradient in the scaled coordinates.
            extras["grad"] = extras["grad"].float() / self.scale
        return Batch(x, extras)

    @torch.no_grad()
    def _initialise(self) -> None:
        batches = [self._next_batch() for _ in range(max(1, self.cfg.init_batches))]
        if self.dp is not None:  # every rank sets the scale and b_dec from the same sample
            batches = [
                Batch(
                    self.dp.gather_cat(b.x),
                    {k: self.dp.gather_cat(v) for k, v in b.extras.items()},
                )
                for b in batches
            ]
        sample = torch.cat([b.x for b in batches])
        targets = (
            torch.cat([b.extras["target"] for b in batches])
            if "target" in batches[0].extras
            else None
        )
        if self.cfg.normalise_inputs:
            self.scale = input_scale(sample)
            if targets is not None:
                self.target_scale = input_scale(targets.float())
        spaces = {  # b_dec lives where the SAE reconstructs
            "x": lambda: sample.float() * self.scale,
            "target": lambda: targets.float() * self.target_scale,  # a transcoder's target
            "standardised": lambda: standardise(sample.float())[0],  # standardise_tokens
        }
        biases: dict[str, torch.Tensor] = {}  # computed once per space, shared by members
        for m in self.members:
            # A bias kept at 0 (MP-SAE without b_pre) is left alone.
            if not m.sae.dictionary.bias_from_data:
                continue
            space = "target" if m.sae.is_transcoder else "x"
            space = "standardised" if m.sae.cfg.standardise_tokens else space
            if space not in biases:
                biases[space] = self._initial_bias(spaces[space]())
            m.sae.b_dec.copy_(biases[space])
        self.initialised = True

    def _initial_bias(self, sample: torch.Tensor) -> torch.Tensor:
        if self.cfg.init_b_dec == "geometric_median":
            return geometric_median(sample)
        if self.cfg.init_b_dec == "mean":
            return sample.mean(0)
        return torch.zeros(sample.shape[1], device=sample.device)

    # ---- the loop ----------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> None:
        progress = self.step / self.cfg.steps
        window = self.cfg.dead_window_tokens
        log_now = (self.step + 1) % self.cfg.log_every == 0 or self.step + 1 == self.cfg.steps
        for m in self.members:
            dead = m.tokens_since_fired >= window
            ctx = TrainContext(dead_mask=dead, progress=progress, extras=batch.extras)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=bool(self.cfg.autocast)):
                out = m.sae.training_forward(batch.x, ctx)
            loss = sum(out.losses.values())
            if not bool(torch.isfinite(loss.detach())):
                self._diverged(m, f"its loss is {float(loss.detach())}")
            if m.optimizer is not None:
                self._update(m, loss)
            with phase("bookkeeping"):
                if m.sae.calibrates:
                    m.sae.calibrate(out.codes)
                fired = out.fired()
                if self.dp is not None:
                    fired = self.dp.any(fired)
                    self.dp.average_buffers(m.sae)
                m.tokens_since_fired += len(batch) * (self.dp.world_size if self.dp else 1)
                m.tokens_since_fired[fired] = 0
            if log_now:
                m.last = self._step_metrics(_scored(m.sae, batch), out, loss, dead, m)
                if self.heldout is not None:
                    m.last["heldout_fvu"] = self._heldout_fvu(m.sae)
        self.step += 1

    @torch.no_grad()
    def _heldout_fvu(self, sae: SAE) -> float:
        """FVU on the fixed held-out batch under the training selection, as the training
        batch's FVU is measured (BatchTopK's inference threshold, say, is only a running
        estimate until training ends). On a copy in eval mode: what a selection tracks
        (thresholds, densities, ITDA's atoms, JumpReLU's λ) must not learn from held-out data."""
        batch = self._scaled(self.heldout)
        probe = copy.deepcopy(sae).eval()
        ctx = TrainContext(progress=self.step / self.cfg.steps, extras=batch.extras)
        return fvu(probe.training_forward(batch.x, ctx).x_hat, _scored(sae, batch))

    def _update(self, m: Member, loss: torch.Tensor) -> None:
        """Backward, radial decoder gradient removed, clip, Adam, schedule, constraints; a
        parameter that became NaN/Inf stops the run before anything is saved."""
        m.optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            loss.backward()
        if self.dp is not None:
            self.dp.average_gradients(list(m.sae.parameters()))
        with phase("radial projection"):
            m.sae.remove_parallel_decoder_grad()
        if self.cfg.grad_clip > 0:
            with phase("gradient clipping"):
                # torch's clip_grad_norm_ rescales every gradient even when the norm is below
                # the limit (by 1.0, to avoid a device sync): a pass over all of them for nothing.
                params = [p for p in m.sae.parameters() if p.grad is not None]
                norm = torch.nn.utils.get_total_norm([p.grad for p in params])
                if norm > self.cfg.grad_clip:
                    torch.nn.utils.clip_grads_with_norm_(params, self.cfg.grad_clip, norm)
        with phase("optimiser"):
            m.optimizer.step()
            m.scheduler.step()
        with phase("unit norm"):
            if isinstance(m.optimizer, ScheduleFreeSignSGD):
                m.optimizer.constrain(m.sae.after_optimizer_step)
            else:
                m.sae.after_optimizer_step()
        with phase("finite check"):
            bad = next(
                (
                    n
                    for n, p in m.sae.named_parameters()
                    if p.is_floating_point() and not all_finite(p)
                ),
                None,
            )
        if bad is not None:
            self._diverged(m, f"{bad} became NaN/Inf after the update")

    def _diverged(self, m: Member, what: str) -> None:
        raise NonFiniteTrainingError(
            f"training diverged at step {self.step}: SAE {m.name!r}: {what}; stopped without "
            "saving this step (the last checkpoint is kept). Lower --lr or check the data "
            "for extreme values"
        )

    @staticmethod
    @torch.no_grad()
    def _step_metrics(y, out, loss, dead, m: Member) -> dict[str, float]:
        row = {
            "loss": float(loss),
            "fvu": fvu(out.x_hat, y),
            "l0": float((out.codes != 0).sum(-1).float().mean()),
            "dead_frac": float(dead.float().mean()),
            "lr": m.scheduler.get_last_lr()[0] if m.scheduler is not None else 0.0,
        }
        row.update({f"loss_{k}": float(v) for k, v in out.losses.items()})
        row.update(out.stats)
        return row

    def fit(self) -> dict[str, dict[str, float]]:
        """Run to cfg.steps (from wherever a resumed run stands); save the SAEs."""
        if not self.initialised:
            self._initialise()
        log = self._open_log()
        bar = tqdm(
            total=self.cfg.steps,
            initial=self.step,
            disable=not self.cfg.progress_bar,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        with _DeferredInterrupts() as interrupts:
            try:
                while self.step < self.cfg.steps:
                    self.train_step(self._next_batch())
                    bar.update(1)
                    if self.members[0].last and (
                        self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps
                    ):
                        self._log(log)
                        bar.set_postfix_str(self._postfix())
                    every = self.cfg.checkpoint_every
                    if every and self.step % every == 0:
                        self.save_checkpoint()
                    if self._stop_requested(interrupts.requested):
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                if self.out_dir is not None or self.dp is not None:
                    self.save_checkpoint()
                raise
            finally:
                bar.close()
                if log is not None:
                    log.close()
        if self.out_dir is not None or self.dp is not None:
            self.save_checkpoint()
        self._use_final_weights()
        self._finalise()
        if self.out_dir is not None:
            self.save_saes()
        return {m.name: dict(m.last) for m in self.members}

    def _stop_requested(self, local: bool) -> bool:
        """A stop (Ctrl-C, SIGTERM) on any rank stops every rank after the same step."""
        if self.group is None:
            return local
        return bool(self.group.any(torch.tensor([local]))[0])

    def _use_final_weights(self) -> None:
        """Schedule-free training takes gradients at y but keeps the average x: after the last
        step (and its checkpoint) the SAEs hold x, for calibration, export and evaluation."""
        for m in self.members:
            if isinstance(m.optimizer, ScheduleFreeSignSGD):
                m.optimizer.use_average()

    @torch.no_grad()
    def _finalise(self, tokens: int = 16384) -> None:
        """Inference calibration on fresh batches with the final weights (after the last
        checkpoint, so a resumed run reads the same batches)."""
        members = [m for m in self.members if m.sae.needs_finalise]
        if not members and self.group is None:  # ranks in lockstep read the batches anyway
            return
        n_batches = max(1, tokens // self.stream.batch_size)
        sample = torch.cat([self._next_batch().x for _ in range(n_batches)])
        for m in members:
            m.sae.finalise(sample)
            if self.dp is not None:
                self.dp.average_buffers(m.sae)

    def _postfix(self) -> str:
        m = self.members[0]
        more = f" (+{len(self.members) - 1} SAEs)" if len(self.members) > 1 else ""
        return f"{m.name}: FVU {m.last['fvu']:.3f} L0 {m.last['l0']:.1f} dead {100 * m.last['dead_frac']:.1f}%{more}"

    # ---- logging -----------------------------------------------------------------------------
    def _open_log(self):
        if self.out_dir is None:
            return None
        # Sinks: metrics.jsonl by default; `log_sinks` (set by `saekit train --log`) adds
        # TensorBoard / W&B offline (saekit/training/logsinks.py).
        return logsinks.open_sinks(self.out_dir, getattr(self, "log_sinks", None), self.step)

    def _log(self, sinks) -> None:
        if sinks is None:
            return
        tokens = self.step * self.stream.batch_size
        sinks.write(
            {"step": self.step, "tokens": tokens, "sae": m.name, **m.last} for m in self.members
        )

    # ---- files -------------------------------------------------------------------------------
    def export(self, member: Member) -> SAE:
        """A copy of the SAE that acts on raw activations (scale and free norms folded)."""
        sae = copy.deepcopy(member.sae).eval().cpu()
        sae.fold_input_scale(self.scale, self.target_scale if sae.is_transcoder else None)
        sae.fold_decoder_norms()
        sae.compact()
        return sae

    def save_saes(self) -> dict[str, Path]:
        assert self.out_dir is not None
        paths = {}
        for m in self.members:
            meta = {
                "normalisation": self._normalisation(m.sae),
                "data": self.stream.describe(),
                "training": {
                    "steps": self.step,
                    "tokens": self.step * self.stream.batch_size,
                    "train_config": asdict(self.cfg),
                    "last_metrics": m.last,
                    **self.run_info,
                },
            }
            paths[m.name] = native.save(self.export(m), self.saes_dir / m.name, meta)
        return paths

    def _normalisation(self, sae: SAE) -> dict[str, Any]:
        """How inputs were normalised in training, for the SAE's metadata."""
        if sae.cfg.standardise_tokens:
            return {
                "per_token_standardisation": True,
                "convention": "encode standardises each token: (x - mean) / std over d_in; "
                "the reconstruction is mapped back (cfg.json standardise_tokens)",
            }
        return {
            "input_scale_folded": self.scale,
            **({"target_scale_folded": self.target_scale} if sae.is_transcoder else {}),
            "convention": "E||x|| = sqrt(d_in)",
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "world_size": self.dp.world_size if self.dp is not None else 1,
            "scale": self.scale,
            "target_scale": self.target_scale,
            "initialised": self.initialised,
            "train_config": asdict(self.cfg),
            "stream": self._stream_state(),
            "torch_rng": torch.get_rng_state(),
            "members": [
                {
                    "name": m.name,
                    "sae_config": m.sae.config_dict(),
                    "model": m.sae.state_dict(),
                    "optimizer": m.optimizer.state_dict() if m.optimizer else None,
                    "scheduler": m.scheduler.state_dict() if m.scheduler else None,
                    "tokens_since_fired": m.tokens_since_fired,
                    "last": m.last,
                }
                for m in self.members
            ],
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint (rank 0 of a data-parallel group; every rank must call it, since
        sharded streams gather each rank's position)."""
        state = self.state_dict()
        if self.out_dir is None:
            return None
        return ckpt.write_checkpoint(self.out_dir / "checkpoints", self.step, state)

    def _stream_state(self) -> dict[str, Any]:
        position = self._stream_position or self.stream.state_dict()
        if self.dp is None or not getattr(self.stream, "shard", None):
            return position  # one position (RankSlice: the same on every rank)
        return {"ranks": self.dp.gather_objects(position)}

    @classmethod
    def resume(
        cls,
        out_dir: str | Path,
        stream: ActivationStream,
        group: Distributed | None = None,
        heldout: Batch | None = None,
        **overrides: Any,
    ) -> Trainer:
        """Rebuild a trainer from the newest checkpoint in out_dir. Data-parallel runs resume
        exactly at the same world size; at another, training continues from the same stream
        position with the new global batch (said in a warning)."""
        out_dir = Path(out_dir)
        # The newest checkpoint whose checksums and fields verify (a kill can leave `latest`
        # naming a directory that is gone; a damaged one is skipped, and said so).
        path, state, skipped = ckpt.load_latest(out_dir / "checkpoints")
        for why in skipped:
            print(f"saekit: skipping checkpoint: {why}", file=sys.stderr)
        try:
            return cls._from_state(out_dir, stream, state, overrides, group, heldout)
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"{path}: cannot resume from this checkpoint: {e}") from None

    @classmethod
    def _from_state(
        cls,
        out_dir: Path,
        stream: ActivationStream,
        state: dict,
        overrides: dict[str, Any],
        group: Distributed | None = None,
        heldout: Batch | None = None,
    ) -> Trainer:
        cfg = TrainConfig(**{**state["train_config"], **overrides})
        saes = {}
        for ms in state["members"]:
            fields = {k: v for k, v in ms["sae_config"].items() if k != "architecture"}
            arch = ms["sae_config"]["architecture"]
            check_config_values(get_architecture(arch).Config, fields)
            saes[ms["name"]] = get_architecture(arch)(make_config(arch, **fields))
        trainer = cls(saes, stream, cfg, out_dir, group=group, heldout=heldout)
        trainer.step = state["step"]
        trainer.scale = state["scale"]
        trainer.target_scale = state.get("target_scale", state["scale"])
        trainer.initialised = state["initialised"]
        position = state["stream"]
        if "ranks" in position:  # a sharded data-parallel stream: one position per rank
            ranks = position["ranks"]
            if trainer.dp is None or trainer.dp.world_size != len(ranks):
                raise ckpt.CheckpointError(
                    f"{out_dir}: this run read sharded data on {len(ranks)} ranks; resume it "
                    f"with --nproc {len(ranks)}"
                )
            position = ranks[trainer.dp.rank]
        stream.load_state_dict(position)
        world = trainer.dp.world_size if trainer.dp is not None else 1
        if state.get("world_size", 1) != world:
            warnings.warn(
                f"{out_dir}: checkpoint written by {state.get('world_size', 1)} data-parallel "
                f"rank(s), resumed on {world}: the run continues with a different global batch",
                stacklevel=2,
            )
        torch.set_rng_state(state["torch_rng"])
        for m, ms in zip(trainer.members, state["members"], strict=True):
            m.sae.load_state_dict(ms["model"])
            if m.optimizer is not None:
                m.optimizer.load_state_dict(ms["optimizer"])
                m.scheduler.load_state_dict(ms["scheduler"])
            m.tokens_since_fired.copy_(ms["tokens_since_fired"])
            m.last = ms["last"]
        return trainer


def _scored(sae: SAE, batch: Batch) -> torch.Tensor:
    """What the SAE's output is scored against: the input, or a transcoder's target."""
    return batch.extras["target"] if sae.is_transcoder else batch.x


@torch.no_grad()
def fvu(x_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of variance unexplained of y [batch, d] by x_hat, over the batch."""
    err = (x_hat.float() - y.float()).pow(2).sum()
    var = (y.float() - y.float().mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(err / var)


class _DeferredInterrupts:
    """SIGINT/SIGTERM during a step set a flag; the loop stops after the step, so a
    checkpoint never holds a half-applied update. A second signal is ignored too (raising
    mid-step is what once saved a half-applied step over a good checkpoint); a third exits
    at once without writing anything, for a step that hangs."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.count = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame):
        self.count += 1
        self.requested = True
        if self.count == 2:
            sys.stderr.write(
                "\nsaekit: stopping after this step and writing a checkpoint "
                "(signal again to quit at once without writing)\n"
            )
        elif self.count >= 3:
            sys.stderr.write("\nsaekit: quitting without writing; the last checkpoint stays\n")
            os._exit(130)

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not in the main thread: leave signals alone
            self._old = {}
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
