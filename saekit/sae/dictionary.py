"""The dictionary every SAE shares: atoms W_dec [n_latents, d_out] and a bias b_dec [d_out]."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from saekit.sae import native
from saekit.sae.base import Part
from saekit.sae.sparse import SparseCode, sparse_decode

if TYPE_CHECKING:
    from saekit.sae.base import SAE


class Dictionary(Part):
    """x̂ = Σ_i f_i d_i + b_dec.

    unit_norm: atoms kept at unit norm (radial gradient removed, renormalised after each
      step). False for ReLU+L1, whose penalty is weighted by the atom norms; such free norms
      are folded into the encoder on save (exact for positively homogeneous encoders).
    init_norm: atom norm at initialisation.
    d_out: output width when it differs from d_in (transcoders); atoms are then a second
      random draw, since the encoder's rows live in another space.
    learn_bias / bias_from_data: b_dec is trained / initialised from the data (geometric
      median) by the trainer. MP-SAE without b_pre keeps it at 0; ITDA sets it from data
      but never trains it.
    trainable: False for dictionaries grown from data rather than optimised (ITDA).
    """

    def __init__(
        self,
        unit_norm: bool = True,
        init_norm: float = 1.0,
        d_out: int | None = None,
        learn_bias: bool = True,
        bias_from_data: bool = True,
        trainable: bool = True,
    ):
        self.unit_norm = unit_norm
        self.init_norm = init_norm
        self.d_out = d_out
        self.learn_bias = learn_bias
        self.bias_from_data = bias_from_data
        self.trainable = trainable

    def attach(self, sae: SAE, atoms: torch.Tensor, gen: torch.Generator) -> None:
        if self.d_out is not None and self.d_out != atoms.shape[1]:
            atoms = torch.randn(atoms.shape[0], self.d_out, generator=gen)
            atoms = atoms / atoms.norm(dim=-1, keepdim=True)
        sae.W_dec = nn.Parameter(atoms * self.init_norm, requires_grad=self.trainable)
        sae.b_dec = nn.Parameter(
            torch.zeros(atoms.shape[1]), requires_grad=self.trainable and self.learn_bias
        )

    def decode(self, sae: SAE, code: torch.Tensor | SparseCode) -> torch.Tensor:
        """Dense codes [batch, n_latents] by a matmul; sparse ones by an embedding_bag (or the
        sum the selector already made)."""
        if isinstance(code, SparseCode):
            if code.decoded is not None:
                return (code.decoded + sae.b_dec).to(sae.W_dec.dtype)
            return sparse_decode(code, sae.W_dec, sae.b_dec)
        return code @ sae.W_dec + sae.b_dec

    @torch.no_grad()
    def remove_radial_grad(self, sae: SAE) -> None:
        """g_i ← g_i − ⟨g_i, d_i⟩ d_i, as g_i − (⟨g_i, w_i⟩ / ‖w_i‖²) w_i for the row w_i of
        W_dec: one pass of a C kernel on CPU, torch ops elsewhere."""
        if not self.unit_norm or sae.W_dec.grad is None:
            return
        W, g = sae.W_dec, sae.W_dec.grad
        on_cpu = W.device.type == "cpu" and W.is_contiguous() and g.is_contiguous()
        run = native.kernel("remove_radial", W.dtype) if on_cpu and g.dtype == W.dtype else None
        if run is not None:
            run(native.ptr(W.detach()), native.ptr(g), W.shape[0], W.shape[1])
            return
        scale = (g * W).sum(-1) / torch.linalg.vector_norm(W, dim=-1).clamp_min(1e-8).square()
        g.addcmul_(W, scale.unsqueeze(1), value=-1)

    @torch.no_grad()
    def after_step(self, sae: SAE) -> None:
        if self.unit_norm and self.trainable:
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def fold_input_scale(self, sae: SAE, scale: float) -> None:
        sae.b_dec /= scale

    @torch.no_grad()
    def fold_norms(self, sae: SAE) -> None:
        """d_i/n_i with the encoder's row i scaled by n_i: identical reconstructions."""
        if self.unit_norm:
            return
        norms = sae.W_dec.norm(dim=-1).clamp_min(1e-12)
        sae.W_dec /= norms[:, None]
        sae.encoder.scale_latents(sae, norms)
