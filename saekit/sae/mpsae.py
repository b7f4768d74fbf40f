"""MP-SAE: matching pursuit over the decoder atoms as the encoder (methods.md §3).

No encoder weights: the code of x is T steps of matching pursuit on r⁰ = x − b_pre over the
unit-norm atoms of W_dec (§3.2). b_pre is the shared b_dec, so `decode` (codes @ W_dec + b_dec)
is the pursuit's x̂. Training selects atoms without autograd and replays the coefficients with
autograd along the chosen indices (§3.5, pursuit.py): about one dense matmul plus the Gram
build per step instead of T of each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.sae.base import SAE, SAEConfig, TrainContext, TrainOutput, reconstruction_loss
from saekit.sae.pursuit import (
    SIGNS,
    Selection,
    choose_method,
    correlation_dtype,
    gram_matrix,
    replay,
    scatter_codes,
    select_atoms,
)
from saekit.sae.registry import register
from saekit.sae.sparse import SparseCode, from_topk, gather_values, sparse_decode


@dataclass
class MPSAEConfig(SAEConfig):
    """n_steps: pursuit steps T (the cap at inference too). sign: `nonneg` (argmax ReLU(c),
    codes ≥ 0, comparable with TopK), `signed` (argmax c) or `abs` (classic MP: argmax |c|,
    signed coefficient), §3.3. use_b_pre: learn b_pre (= b_dec); off keeps it at 0 as
    overcomplete does. residual_threshold / relative_threshold: default adaptive stop
    ‖r‖ < τ or ‖r‖²/‖x − b_pre‖² < τ_rel (§3.6), in training and inference alike; None = off.
    refresh_every: exact correlation recompute interval of the Gram path (fp32 drift, §3.5).
    k_aux, aux_coeff: the dead-atom term (AuxK on the final residual; k_aux default d_in // 2
    as TopK). gram_budget_mb: largest n_latents² Gram to build; beyond it only the rows of
    selected atoms are computed. cache_gram: keep the inference Gram until W_dec changes.
    """

    n_steps: int = 32
    sign: str = "nonneg"
    use_b_pre: bool = True
    residual_threshold: float | None = None
    relative_threshold: float | None = None
    refresh_every: int | None = 32
    k_aux: int | None = None
    aux_coeff: float = 1 / 32
    gram_budget_mb: float = 1024.0
    cache_gram: bool = True

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.sign not in SIGNS:
            raise ValueError(f"sign must be one of {', '.join(SIGNS)}, got {self.sign!r}")


def _override(value: float | None, default: float | None) -> float | None:
    return default if value is None else value


@register
class MPSAE(SAE):
    """Tied dictionary, pursuit encoder; codes are sums of per-step coefficients."""

    architecture = "mpsae"
    Config = MPSAEConfig
    has_encoder = False
    cfg: MPSAEConfig

    def __init__(self, cfg: MPSAEConfig):
        super().__init__(cfg)
        if not cfg.use_b_pre:
            self.b_dec.requires_grad_(False)  # stays 0; still saved, so files keep one layout
        self._gram: tuple[tuple, torch.Tensor] | None = None

    def __getstate__(self) -> dict:
        """Copies and pickles leave the Gram behind."""
        return {**super().__getstate__(), "_gram": None}

    @property
    def k_aux(self) -> int:
        return self.cfg.k_aux or max(1, self.d_in // 2)

    # ---- selection ------------------------------------------------------------------------
    def _dictionary_key(self) -> tuple:
        """Changes whenever W_dec does: the version counter catches in-place updates, the
        checksum (row-weighted, so it sees row swaps) catches writes through `.data`, which
        bypass the counter."""
        W = self.W_dec.detach()
        rows = torch.arange(1, W.shape[0] + 1, device=W.device, dtype=W.dtype)
        checksum = float(W.sum(1) @ rows)
        return (W.data_ptr(), W._version, W.shape, W.dtype, W.device, checksum)

    def _cached_gram(self, key: tuple | None) -> torch.Tensor | None:
        return self._gram[1] if key is not None and self._gram and self._gram[0] == key else None

    def gram(self) -> torch.Tensor:
        """G = W_dec W_decᵀ [n_latents, n_latents], cached until W_dec changes (cache_gram).
        The matrix belongs to the module: when W_dec changes it is rebuilt in place (training
        rebuilds it every step, and a fresh one would be faulted in anew), so clone it to keep
        it."""
        key = self._dictionary_key() if self.cfg.cache_gram else None
        G = self._cached_gram(key)
        if G is None:
            stale = self._gram[1] if self._gram else None
            self._gram = None
            G = gram_matrix(self.W_dec, out=stale)
            if key is not None:
                self._gram = (key, G)
        return G

    def select(
        self,
        x: torch.Tensor,
        n_steps: int | None = None,
        residual_threshold: float | None = None,
        relative_threshold: float | None = None,
    ) -> Selection:
        """Pursuit without autograd on x [batch, d_in]; arguments override the config."""
        cfg = self.cfg
        T = cfg.n_steps if n_steps is None else n_steps
        budget = int(cfg.gram_budget_mb * 2**20)
        itemsize = correlation_dtype(self.W_dec.dtype).itemsize
        cached = self._cached_gram(self._dictionary_key()) if cfg.cache_gram else None
        method = choose_method(
            self.n_latents, self.d_in, x.shape[0], T, itemsize, budget, cached is not None
        )
        return select_atoms(
            self.W_dec,
            x - self.b_dec,
            T,
            cfg.sign,  # type: ignore[arg-type]
            residual_threshold=_override(residual_threshold, cfg.residual_threshold),
            relative_threshold=_override(relative_threshold, cfg.relative_threshold),
            method=method,  # type: ignore[arg-type]
            refresh_every=cfg.refresh_every,
            gram=(cached if cached is not None else self.gram()) if method == "gram" else None,
            gram_budget_bytes=budget,
        )

    # ---- the protocol -----------------------------------------------------------------------
    def encode_with_steps(
        self,
        x: torch.Tensor,
        n_steps: int | None = None,
        residual_threshold: float | None = None,
        relative_threshold: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [batch, d_in] -> (codes [batch, n_latents], steps taken [batch]). One trained
        model encodes at any sparsity: more steps never increase the error (§3.6).
        Differentiable (by replay) when grad mode is on and W_dec, b_pre or x need grad."""
        sel = self.select(x, n_steps, residual_threshold, relative_threshold)
        params = (x, self.W_dec, self.b_dec)
        if torch.is_grad_enabled() and any(t.requires_grad for t in params):
            coefs, _ = replay(self.W_dec, x - self.b_dec, sel.indices, sel.updated)
        else:
            coefs = sel.coefs
        codes = scatter_codes(coefs, sel.indices, self.n_latents)
        return codes.to(self.W_dec.dtype), sel.n_steps

    def encode(
        self,
        x: torch.Tensor,
        n_steps: int | None = None,
        residual_threshold: float | None = None,
        relative_threshold: float | None = None,
    ) -> torch.Tensor:
        """x [batch, d_in] -> codes [batch, n_latents]; see encode_with_steps."""
        return self.encode_with_steps(x, n_steps, residual_threshold, relative_threshold)[0]

    def training_forward(self, x: torch.Tensor, ctx: TrainContext) -> TrainOutput:
        """Selection without gradient, then the replay: x̂ = b_pre + Σ_t α_t d_{j_t} from the
        T gathered atoms (no dense codes in the graph)."""
        r0 = x - self.b_dec
        sel = self.select(x)
        alpha, recon = replay(self.W_dec, r0, sel.indices, sel.updated)
        x_hat = (recon + self.b_dec).to(x.dtype)
        codes = scatter_codes(alpha.detach(), sel.indices, self.n_latents).to(x.dtype)
        losses = {"mse": reconstruction_loss(x, x_hat)}
        if self.cfg.aux_coeff > 0:
            aux = self.dead_atom_loss(x - x_hat, ctx.dead_mask)
            losses["auxk"] = self.cfg.aux_coeff * aux
        return TrainOutput(
            x_hat, codes, losses, {"pursuit_steps": float(sel.n_steps.float().mean())}
        )

    def dead_atom_loss(
        self, residual: torch.Tensor, dead_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """AuxK for pursuit (§2.4, §3.4): the dead atoms explain the stop-gradient final
        residual e [batch, d_in]. Each sample takes its k_aux dead atoms most correlated with
        e (the next pursuit step's correlations, restricted to the dead), coefficient ⟨d_i, e⟩
        (ReLU'd under `nonneg`, ranked by |⟨d_i, e⟩| otherwise), ê = Σ coef_i d_i.
        Gradient reaches the dead atoms only, through both the coefficients and the atoms;
        scaled by min(n_dead / k_aux, 1) and in the units of `reconstruction_loss`, as TopK.
        """
        e = residual.detach()
        if dead_mask is None or not bool(dead_mask.any()):
            return e.new_zeros(())
        dead = dead_mask.nonzero().squeeze(1)
        k = min(self.k_aux, dead.numel())
        with torch.no_grad():
            corr = e @ self.W_dec[dead].T  # [batch, n_dead]
            signed = self.cfg.sign != "nonneg"
            idx = (corr.abs() if signed else corr).topk(k, dim=-1).indices
        rows, cols = from_topk(dead[idx], self.n_latents)
        values = gather_values(e, self.W_dec, None, rows, cols)
        if not signed:
            values = values.relu()
        code = SparseCode(rows, cols, values, e.shape[0], self.n_latents)
        e_hat = sparse_decode(code, self.W_dec, None)
        return min(dead.numel() / self.k_aux, 1.0) * (e - e_hat).pow(2).sum(-1).mean()

    # ---- conversions --------------------------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Pursuit is positively homogeneous: on x·s − b_pre the indices are those of
        x − b_pre/s and every coefficient scales by s. So b_pre /= s (base class) and the
        absolute stopping threshold /= s; the relative one is scale-free."""
        super().fold_input_scale(scale)
        if self.cfg.residual_threshold is not None:
            self.cfg.residual_threshold /= scale
