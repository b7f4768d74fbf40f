"""Matching pursuit over the dictionary itself as the encoder (MP-SAE: Costa, Fel et al.
2025, arXiv 2506.03093 alg. 1).

The code of x is T greedy steps on r⁰ = x − b_dec over the unit-norm atoms: pick the atom
most correlated with the residual, add its coefficient, subtract its contribution. Atoms may
be re-selected (coefficients accumulate). Selection runs without autograd (pursuit.py, with C
kernels on CPU); when gradients are needed the coefficients are replayed with autograd along
the chosen indices, so a training step costs about one dense matmul plus the Gram build
instead of T of each.
"""

from __future__ import annotations

import torch

from saekit.sae.pursuit import (
    Selection,
    choose_method,
    correlation_dtype,
    gram_matrix,
    replay,
    select_atoms,
)
from saekit.sae.selectors.base import Selector, knob
from saekit.sae.sparse import SparseCode


class MatchingPursuit(Selector):
    """Knobs: n_steps (T, also the cap), residual_threshold (stop at ‖r‖ < τ) and
    relative_threshold (stop at ‖r‖²/‖r⁰‖² < τ_rel); defaults from the config. Per-token stat
    "pursuit_steps". The config also sets sign, refresh_every, gram_budget_mb, cache_gram."""

    knobs = ("n_steps", "residual_threshold", "relative_threshold")

    def __init__(self, sign: str):
        self.sign = sign
        self.signed = sign != "nonneg"
        self._gram: tuple[tuple, torch.Tensor] | None = None

    def __getstate__(self) -> dict:
        """Copies and pickles leave the Gram behind."""
        return {**self.__dict__, "_gram": None}

    def atoms(self, sae) -> torch.Tensor:
        return sae.W_dec

    # ---- the Gram matrix, cached until the atoms change ----------------------------------------
    def _dictionary_key(self, W: torch.Tensor) -> tuple:
        """Changes whenever W does: the version counter catches in-place updates, the checksum
        (row-weighted, so it sees row swaps) catches writes through `.data`, which bypass the
        counter."""
        W = W.detach()
        rows = torch.arange(1, W.shape[0] + 1, device=W.device, dtype=W.dtype)
        checksum = float(W.sum(1) @ rows)
        return (W.data_ptr(), W._version, W.shape, W.dtype, W.device, checksum)

    def _cached_gram(self, key: tuple | None) -> torch.Tensor | None:
        return self._gram[1] if key is not None and self._gram and self._gram[0] == key else None

    def gram(self, sae) -> torch.Tensor:
        """G = D Dᵀ [n, n], cached until D changes (cfg.cache_gram). The matrix belongs to the
        selector: when D changes it is rebuilt in place (training rebuilds it every step, and a
        fresh one would be faulted in anew), so clone it to keep it."""
        D = self.atoms(sae)
        key = self._dictionary_key(D) if sae.cfg.cache_gram else None
        G = self._cached_gram(key)
        if G is None:
            stale = self._gram[1] if self._gram and self._gram[1].shape[0] == D.shape[0] else None
            self._gram = None
            G = gram_matrix(D, out=stale)
            if key is not None:
                self._gram = (key, G)
        return G

    # ---- selection -----------------------------------------------------------------------------
    def pursue(
        self,
        sae,
        x_centered: torch.Tensor,
        n_steps: int | None = None,
        residual_threshold: float | None = None,
        relative_threshold: float | None = None,
    ) -> Selection:
        """The pursuit without autograd: indices, coefficients and update flags per step."""
        cfg = sae.cfg
        D = self.atoms(sae)
        T = int(knob(n_steps, cfg.n_steps))
        budget = int(cfg.gram_budget_mb * 2**20)
        itemsize = correlation_dtype(D.dtype).itemsize
        cached = self._cached_gram(self._dictionary_key(D)) if cfg.cache_gram else None
        method = choose_method(
            D.shape[0], D.shape[1], x_centered.shape[0], T, itemsize, budget, cached is not None
        )
        gram = None
        if method == "gram":
            gram = cached if cached is not None else self.gram(sae)
        return select_atoms(
            D,
            x_centered,
            T,
            self.sign,  # type: ignore[arg-type]
            residual_threshold=knob(residual_threshold, cfg.residual_threshold),
            relative_threshold=knob(relative_threshold, cfg.relative_threshold),
            method=method,  # type: ignore[arg-type]
            refresh_every=cfg.refresh_every,
            gram=gram,
            gram_budget_bytes=budget,
        )

    def select(
        self, sae, x_centered, pre, extras, training=False,
        n_steps=None, residual_threshold=None, relative_threshold=None,
    ):  # fmt: skip
        """Differentiable (by replay) when grad mode is on and the atoms or the input need
        grad; the replay also returns Σ α_t d_{j_t}, so decoding costs nothing more. Always in
        full precision, autocast or not: cheaper correlations change which atoms are chosen."""
        with torch.autocast(x_centered.device.type, enabled=False):
            return self._select(sae, x_centered, n_steps, residual_threshold, relative_threshold)

    def _select(self, sae, x_centered, n_steps, residual_threshold, relative_threshold):
        sel = self.pursue(sae, x_centered, n_steps, residual_threshold, relative_threshold)
        D = self.atoms(sae)
        batch, T = sel.indices.shape
        rows = torch.arange(batch, device=x_centered.device).repeat_interleave(T)
        stats = {"pursuit_steps": sel.n_steps}
        needs_grad = x_centered.requires_grad or D.requires_grad
        if torch.is_grad_enabled() and needs_grad:
            alpha, recon = replay(D, x_centered, sel.indices, sel.updated)
            values, decoded = alpha.reshape(-1).to(D.dtype), recon.to(D.dtype)
        else:
            values, decoded = sel.coefs.reshape(-1).to(D.dtype), None
        return SparseCode(
            rows, sel.indices.reshape(-1), values, batch, sae.n_latents, decoded, stats
        )

    @torch.no_grad()
    def fold_input_scale(self, sae, scale):
        """Pursuit is positively homogeneous: on x·s − b the indices are those of x − b/s and
        every coefficient scales by s. So b /= s (the dictionary does it) and the absolute
        stopping threshold /= s; the relative one is scale-free."""
        if sae.cfg.residual_threshold is not None:
            sae.cfg.residual_threshold /= scale
