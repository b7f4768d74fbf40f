"""Encoders: the linear map to pre-activations (and the gated pair), computed lazily.

Selection needs the pre-activations without gradient; training needs gradient only at the
entries the selector keeps (sparse.py) or, for dense coders, everywhere. `PreActivations`
computes each form once, on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from saekit.profiling import phase
from saekit.sae.base import Part
from saekit.sae.sparse import gather_values

if TYPE_CHECKING:
    from saekit.sae.base import SAE


class PreActivations:
    """π = x W + b for x [batch, d], W [n_latents, d], b [n_latents] or None.

    detached: [batch, n_latents] without gradient (selection scores).
    full(): [batch, n_latents] with gradient where grad mode is on (dense coders).
    at(rows, cols): [nnz] with gradient at chosen entries only.
    columns(idx): [batch, len(idx)] without gradient, without computing the rest.
    """

    def __init__(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None):
        self.x, self.W, self.b = x, W, b
        self._full: torch.Tensor | None = None
        self._detached: torch.Tensor | None = None

    def _compute(self) -> torch.Tensor:
        with phase("encoder matmul"):
            out = self.x @ self.W.T
        if self.b is None:
            return out
        if out.dtype != self.b.dtype:  # a bf16 product under autocast: promoted, as before
            return out + self.b
        # In place: a second [batch, n_latents] buffer costs more than the add (fresh pages);
        # the product's backward does not need its output.
        out += self.b
        return out

    def full(self) -> torch.Tensor:
        if self._full is None:
            self._full = self._compute()
        return self._full

    @property
    def detached(self) -> torch.Tensor:
        if self._detached is None:
            if self._full is not None:
                self._detached = self._full.detach()
            else:
                with torch.no_grad():
                    self._detached = self._compute()
        return self._detached

    def at(
        self, rows: torch.Tensor, cols: torch.Tensor, known: torch.Tensor | None = None
    ) -> torch.Tensor:
        """known: the values at (rows, cols) without gradient, if the caller has them."""
        if self._full is not None:
            return self._full[rows, cols]
        return gather_values(self.x, self.W, self.b, rows, cols, self._detached, known)

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        if self._full is not None or self._detached is not None:
            return self.detached[:, idx]
        with torch.no_grad():
            out = self.x @ self.W[idx].T
            return out if self.b is None else out + self.b[idx]


class LinearEncoder(Part):
    """π = W_enc (x − b_dec) + b_enc (Bricken et al. 2023; b_dec subtracted so that the
    encoder sees centred inputs). centre_input=False: π = W_enc x + b_enc, for transcoders,
    whose b_dec lives in the output space."""

    def __init__(self, init_norm: float = 1.0, centre_input: bool = True):
        self.init_norm = init_norm
        self.centre_input = centre_input

    def attach(self, sae: SAE, atoms: torch.Tensor, gen: torch.Generator) -> None:
        sae.W_enc = nn.Parameter(atoms * self.init_norm)
        sae.b_enc = nn.Parameter(torch.zeros(atoms.shape[0]))

    def centre(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        return x - sae.b_dec if self.centre_input else x

    def pre_activations(self, sae: SAE, x_centered: torch.Tensor) -> PreActivations:
        return PreActivations(x_centered, sae.W_enc, sae.b_enc)

    @torch.no_grad()
    def fold_input_scale(self, sae: SAE, scale: float) -> None:
        sae.b_enc /= scale

    @torch.no_grad()
    def rescale_input(self, sae: SAE, factor: float) -> None:
        sae.W_enc *= factor

    @torch.no_grad()
    def scale_latents(self, sae: SAE, factors: torch.Tensor) -> None:
        """Latent i's pre-activation × factors[i] (folding free atom norms; exact for
        positively homogeneous selectors)."""
        sae.W_enc *= factors[:, None]
        sae.b_enc *= factors


class GatedPreActivations(PreActivations):
    """The gate π_gate = W_enc x_c + b_gate (selection scores) and the magnitude
    π_mag = exp(r_mag) ⊙ (W_enc x_c) + b_mag, sharing W_enc x_c."""

    def __init__(self, x, W, b_gate, r_mag, b_mag):
        super().__init__(x, W, b_gate)
        self.r_mag, self.b_mag = r_mag, b_mag
        self._shared: tuple[bool, torch.Tensor] | None = None

    def _shared_term(self) -> torch.Tensor:
        """W_enc x_c, computed once per grad mode."""
        grad = torch.is_grad_enabled()
        if self._shared is None or (grad and not self._shared[0]):
            self._shared = (grad, self.x @ self.W.T)
        return self._shared[1]

    def _compute(self) -> torch.Tensor:
        return self._shared_term() + self.b

    def magnitude(self) -> torch.Tensor:
        """π_mag [batch, n_latents] (with gradient where grad mode is on)."""
        return self._shared_term() * self.r_mag.exp() + self.b_mag


class GatedEncoder(Part):
    """Gate and magnitude paths with shared, per-row rescaled weights (Rajamanoharan et al.
    2024a, arXiv 2404.16014 eq. 6): W_mag = diag(exp(r_mag)) W_gate. Init r_mag = b_gate =
    b_mag = 0."""

    def attach(self, sae: SAE, atoms: torch.Tensor, gen: torch.Generator) -> None:
        n = atoms.shape[0]
        sae.W_enc = nn.Parameter(atoms.clone())
        sae.b_gate = nn.Parameter(torch.zeros(n))
        sae.r_mag = nn.Parameter(torch.zeros(n))
        sae.b_mag = nn.Parameter(torch.zeros(n))

    def centre(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        return x - sae.b_dec

    def pre_activations(self, sae: SAE, x_centered: torch.Tensor) -> GatedPreActivations:
        return GatedPreActivations(x_centered, sae.W_enc, sae.b_gate, sae.r_mag, sae.b_mag)

    @torch.no_grad()
    def fold_input_scale(self, sae: SAE, scale: float) -> None:
        sae.b_gate /= scale
        sae.b_mag /= scale


class Skip(Part):
    """A skip transcoder's linear path ŷ += x W_skip (Paulo, Shabalin, Belrose 2025,
    arXiv 2501.18823), W_skip [d_in, d_out] initialised at zero."""

    def __init__(self, d_out: int | None = None):
        self.d_out = d_out

    def attach(self, sae: SAE, atoms: torch.Tensor, gen: torch.Generator) -> None:
        d_in = atoms.shape[1]
        sae.W_skip = nn.Parameter(torch.zeros(d_in, self.d_out or d_in))

    def apply(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        return x @ sae.W_skip

    @torch.no_grad()
    def rescale_input(self, sae: SAE, factor: float) -> None:
        sae.W_skip *= factor
