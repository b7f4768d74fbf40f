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

import functools
from dataclasses import dataclass

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


@dataclass
class _StaleGram:
    """Training with gram_refresh_every > 1: the dictionary the kept Gram was built from, the
    key of the last dictionary it selected for (None: the next one is new) and its age in
    dictionaries (optimiser steps) since the build."""

    source: torch.Tensor
    seen: tuple | None
    age: int = 0


class MatchingPursuit(Selector):
    """Knobs: n_steps (T, also the cap), residual_threshold (stop at ‖r‖ < τ) and
    relative_threshold (stop at ‖r‖²/‖r⁰‖² < τ_rel); defaults from the config. Per-token stat
    "pursuit_steps". The config also sets sign, refresh_every, gram_budget_mb, cache_gram.

    gram_refresh_every N > 1 (training only): the pursuit selects with a Gram rebuilt on every
    Nth new dictionary, so up to N − 1 optimiser steps old (docs/methods.md#mpsae-speed)."""

    knobs = ("n_steps", "residual_threshold", "relative_threshold")

    def __init__(self, sign: str, gram_refresh_every: int = 1):
        self.sign = sign
        self.signed = sign != "nonneg"
        self.gram_refresh_every = gram_refresh_every
        self._gram: tuple[tuple | None, torch.Tensor] | None = None
        self._stale: _StaleGram | None = None

    def __getstate__(self) -> dict:
        """Copies and pickles leave the Gram behind (a copy's pursuit starts exact)."""
        return {**self.__dict__, "_gram": None, "_stale": None}

    def attach(self, sae, atoms, gen):
        if self.gram_refresh_every > 1:
            # A resumed run must select with the same stale Gram as an uninterrupted one, so
            # checkpoints (state_dict) carry the dictionary it was built from and its age.
            # Partials, not bound methods: torch tags hooks; a deep copy rebinds them.
            sae.register_state_dict_post_hook(functools.partial(type(self)._save_stale, self))
            sae.register_load_state_dict_pre_hook(functools.partial(type(self)._load_stale, self))

    def _save_stale(self, sae, state, prefix, metadata) -> None:
        if self._stale is not None:
            state[prefix + "gram_source"] = self._stale.source
            state[prefix + "gram_age"] = torch.tensor(self._stale.age)

    def _load_stale(self, sae, state, prefix, *args) -> None:
        source, age = state.pop(prefix + "gram_source", None), state.pop(prefix + "gram_age", None)
        self._gram = None
        self._stale = None if source is None else _StaleGram(source.clone(), None, int(age))

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

    def gram(self, sae, training: bool = False) -> torch.Tensor:
        """G = D Dᵀ [n, n], cached until D changes (cfg.cache_gram; always kept for a training
        pursuit with gram_refresh_every > 1, whose count restarts here). The matrix belongs to
        the selector: when D changes it is rebuilt in place (training rebuilds it every step,
        and a fresh one would be faulted in anew), so clone it to keep it."""
        D = self.atoms(sae)
        keep = training and self.gram_refresh_every > 1
        key = self._dictionary_key(D) if sae.cfg.cache_gram or keep else None
        G = self._cached_gram(key)
        if G is None:
            old = self._gram[1] if self._gram and self._gram[1].shape[0] == D.shape[0] else None
            self._gram = None
            G = gram_matrix(D, out=old)
            if key is not None:
                self._gram = (key, G)
        self._stale = _StaleGram(D.detach().clone(), key) if keep else None
        return G

    def held_gram(self, sae, training: bool = False) -> torch.Tensor | None:
        """The Gram the pursuit can use without building one: for a training pursuit with
        gram_refresh_every N > 1 the kept one while under N dictionaries old (each new
        dictionary ages it by one); otherwise the cached exact one. None: build."""
        D = self.atoms(sae)
        if not (training and self.gram_refresh_every > 1):
            return self._cached_gram(self._dictionary_key(D)) if sae.cfg.cache_gram else None
        stale = self._stale
        if stale is None:
            return None
        key = self._dictionary_key(D)
        if key != stale.seen:
            stale.seen, stale.age = key, stale.age + 1
        if stale.age >= self.gram_refresh_every:
            return None
        if self._gram is None:  # resumed from a checkpoint: the same Gram again
            self._gram = (None, gram_matrix(stale.source.to(D.device)))
        return self._gram[1]

    # ---- selection -----------------------------------------------------------------------------
    def pursue(
        self,
        sae,
        x_centered: torch.Tensor,
        n_steps: int | None = None,
        residual_threshold: float | None = None,
        relative_threshold: float | None = None,
        training: bool = False,
    ) -> Selection:
        """The pursuit without autograd: indices, coefficients and update flags per step."""
        cfg = sae.cfg
        D = self.atoms(sae)
        T = int(knob(n_steps, cfg.n_steps))
        budget = int(cfg.gram_budget_mb * 2**20)
        itemsize = correlation_dtype(D.dtype).itemsize
        held = self.held_gram(sae, training)
        method = choose_method(
            D.shape[0], D.shape[1], x_centered.shape[0], T, itemsize, budget, held is not None
        )
        gram = None
        if method == "gram":
            gram = held if held is not None else self.gram(sae, training)
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
            return self._select(
                sae, x_centered, training, n_steps, residual_threshold, relative_threshold
            )

    def _select(self, sae, x_centered, training, n_steps, residual_threshold, relative_threshold):
        sel = self.pursue(
            sae, x_centered, n_steps, residual_threshold, relative_threshold, training
        )
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
