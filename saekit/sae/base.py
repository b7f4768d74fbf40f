"""The SAE protocol: one dictionary (decoder atoms + bias), one small module per architecture.

Every architecture subclasses `SAE` and differs only in how the sparse code is chosen
(`encode`, `training_forward`) and in its extra loss terms. Everything else (decoder,
normalisation folding, unit-norm constraint, files, training) is shared.

Shapes: x [batch, d_in]; codes [batch, n_latents]; W_dec [n_latents, d_in] (atoms are rows);
W_enc [n_latents, d_in]; b_dec [d_in]; b_enc [n_latents].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class SAEConfig:
    """Fields shared by every architecture; each architecture extends it with its own knobs."""

    d_in: int
    n_latents: int
    seed: int = 0

    # Fraction of training after which auxiliary coefficients reach full strength.
    # (Used by penalties that are warmed up; ignored elsewhere.)
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainContext:
    """What the trainer tells an architecture about the current step.

    dead_mask: [n_latents] bool, latents that have not fired within the dead window.
    progress: fraction of the run completed, in [0, 1] (for coefficient warm-ups).
    extras: per-token tensors from the stream batch (e.g. "grad" for g-SAE).
    """

    dead_mask: torch.Tensor | None = None
    progress: float = 1.0
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainOutput:
    """x_hat [batch, d_in], codes [batch, n_latents], and named loss terms (summed by the trainer)."""

    x_hat: torch.Tensor
    codes: torch.Tensor
    losses: dict[str, torch.Tensor]
    # Optional scalars the architecture wants logged (e.g. a JumpReLU sparsity coefficient).
    stats: dict[str, float] = field(default_factory=dict)


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared error summed over dimensions, averaged over tokens (inputs normalised so
    E||x|| = sqrt(d_in); every coefficient in saekit is relative to this convention)."""
    return (x_hat - x).pow(2).sum(-1).mean()


class SAE(nn.Module):
    """Base class. Subclasses set `architecture`, `Config`, and implement `encode`.

    Class attributes:
      architecture: registry name, written to cfg.json.
      Config: the architecture's config dataclass.
      unit_norm_decoder: atoms kept at unit norm (radial gradient removed, renormalised
        after each step). False for ReLU+L1, whose penalty is weighted by the atom norms.
      has_encoder: False for pursuit encoders (MP-SAE) that use the dictionary itself.
      needs_extras: names of Batch extras that training requires (e.g. ("grad",)).
    """

    architecture: ClassVar[str] = ""
    Config: ClassVar[type[SAEConfig]] = SAEConfig
    unit_norm_decoder: ClassVar[bool] = True
    has_encoder: ClassVar[bool] = True
    needs_extras: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        atoms = torch.randn(cfg.n_latents, cfg.d_in, generator=gen)
        atoms = atoms / atoms.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(atoms.clone())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if self.has_encoder:
            # Tied initialisation (encoder rows = atoms), methods.md §2.3.
            self.W_enc = nn.Parameter(atoms.clone())
            self.b_enc = nn.Parameter(torch.zeros(cfg.n_latents))

    # ---- shapes -------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    # ---- the protocol ---------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, d_in] -> [batch, n_latents]: W_enc (x - b_dec) + b_enc."""
        return (x - self.b_dec) @ self.W_enc.T + self.b_enc

    def encode(self, x: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        """Inference encode: [batch, d_in] -> sparse codes [batch, n_latents]."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[batch, n_latents] -> [batch, d_in]."""
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        """Reconstruction with the inference encoder."""
        return self.decode(self.encode(x, **extras))

    def training_forward(self, x: torch.Tensor, ctx: TrainContext) -> TrainOutput:
        """Training pass: codes, reconstruction and every loss term. Default: inference
        encode + plain reconstruction loss."""
        codes = self.encode(x, **ctx.extras)
        x_hat = self.decode(codes)
        return TrainOutput(x_hat, codes, {"mse": reconstruction_loss(x, x_hat)})

    # ---- training hooks ---------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """g_i <- g_i - <g_i, d_i> d_i: keep Adam's moments free of the radial part that the
        renormalisation would throw away (methods.md §2.1)."""
        if not self.unit_norm_decoder or self.W_dec.grad is None:
            return
        d = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        g = self.W_dec.grad
        g -= (g * d).sum(-1, keepdim=True) * d

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def calibrate(self, codes: torch.Tensor) -> None:
        """Called by the trainer after every step with the step's training codes; BatchTopK
        uses it to track its inference threshold. Default: nothing."""

    @torch.no_grad()
    def finalise(self, x: torch.Tensor) -> None:
        """Called once after training with fresh activations x [n, d_in] (training scale);
        BatchTopK sets its inference threshold exactly here. Default: nothing."""

    # ---- conversions applied on save --------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """The model was trained on x * scale; make it act on raw x with codes in raw units.

        For positively homogeneous encoders the codes scale by 1/scale when every bias and
        threshold does: W_enc and the unit-norm W_dec are unchanged, so atoms stay unit norm.
        Subclasses with thresholds extend this.
        """
        self.b_dec /= scale
        if self.has_encoder:
            self.b_enc /= scale

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """Make atoms unit norm without changing any reconstruction (methods.md §2.2).
        Only meaningful for free-norm architectures; a no-op for unit-norm ones."""

    # ---- files --------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **self.cfg.to_dict()}
