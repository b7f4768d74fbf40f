"""top-AFA: keep as many latents as it takes for the code norm to match the input norm
(Lee, Davies, Canby, Hockenmaier 2025; methods.md §5).

Per token, with a = ReLU(pre) and unit-norm atoms, ε-quasi-orthogonality gives ‖f‖ ≈ ‖x‖.
So: rank latents by their decoder-norm-scaled activation a_i‖d_i‖, take prefix norms
√(Σ_{r≤k} (a_(r)‖d_(r)‖)²), and keep the prefix whose norm is closest to τ = ‖x − b_dec‖
("nearest"; k ≤ p − 1 as in the reference) or the first one reaching τ ("first_exceed").
k varies per token. Vectorised: one topk with a cap k_max (instead of a full sort) and a
cumsum; k* = k_max when the cap binds (reported as stats["cap_frac"]).

Loss (methods.md §5.4): reconstruction + AuxK + λ_AFA (‖f‖₂ − ‖x‖₂)², with the reference's
deliberate choices kept: un-centred ‖x‖ and un-scaled ‖f‖.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.sae.base import SAE, SAEConfig, TrainContext, TrainOutput, reconstruction_loss
from saekit.sae.registry import register
from saekit.sae.sparse import SparseCode, gather_values, sparse_decode
from saekit.sae.topk import auxk_loss

RULES = ("nearest", "first_exceed")
LOSS_TARGETS = ("input", "centred")


@dataclass
class TopAFAConfig(SAEConfig):
    """rule: "nearest" or "first_exceed" (module docstring).
    k_max: cap on latents kept per token (the efficient form of methods.md §5.3); the
      effective cap is min(k_max, n_latents − 1).
    afa_coeff: λ_AFA in the reference's units, where the MSE is a mean over elements; since
      saekit's reconstruction loss sums over dimensions, the term added is
      afa_coeff · d_in · mean_tokens (‖f‖ − ‖x‖)², which keeps the reference's balance.
    loss_target: "input" compares ‖f‖ with the un-centred ‖x‖ (the reference); "centred"
      with ‖x − b_dec‖, the activation rule's own target. They differ a lot when the
      activations have a large mean (residual streams); see benchmarks/RESULTS.md.
    """

    rule: str = "nearest"
    k_max: int = 512
    afa_coeff: float = 1 / 32
    loss_target: str = "input"
    k_aux: int | None = None  # default d_in // 2, as TopK
    aux_coeff: float = 1 / 32

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.loss_target not in LOSS_TARGETS:
            raise ValueError(f"loss_target must be one of {LOSS_TARGETS}, got {self.loss_target!r}")
        if self.k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {self.k_max}")
        if self.afa_coeff < 0:
            raise ValueError(f"afa_coeff must be >= 0, got {self.afa_coeff}")


def afa_prefix_length(
    contributions: torch.Tensor, target: torch.Tensor, rule: str = "nearest"
) -> torch.Tensor:
    """Number of leading entries to keep, per row.

    contributions: [batch, K] non-negative, sorted in decreasing order along each row.
    target: [batch] the norm to reach. Returns k* [batch] int64 in [1, K].
    nearest: argmin_k |√S_k − τ| (first k on ties); first_exceed: min{k : √S_k ≥ τ}, else K.
    """
    prefix = contributions.pow(2).cumsum(-1).sqrt()  # √S_k, [batch, K]
    if rule == "nearest":
        return (prefix - target[:, None]).abs().argmin(-1) + 1
    if rule == "first_exceed":
        reached = prefix >= target[:, None]
        first = reached.int().argmax(-1) + 1  # argmax of a bool row = first True
        return torch.where(reached.any(-1), first, torch.full_like(first, prefix.shape[-1]))
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


@register
class TopAFASAE(SAE):
    """Norm-matching activation: per-token k from ‖x − b_dec‖; unit-norm atoms; tied init."""

    architecture = "topafa"
    Config = TopAFAConfig
    cfg: TopAFAConfig

    @property
    def k_aux(self) -> int:
        return self.cfg.k_aux or max(1, self.d_in // 2)

    @property
    def k_cap(self) -> int:
        # The reference never keeps every latent (k ≤ p − 1).
        return max(1, min(self.cfg.k_max, self.n_latents - 1))

    @torch.no_grad()
    def select_afa(
        self, pre: torch.Tensor, x_centered: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, capped) of the kept entries; pre, x_centered without gradient.
        Rows hold only positive activations (zeros add nothing to the norm); capped [batch]
        bool marks tokens whose k_max largest contributions fall short of the target."""
        scaled = pre.relu() * self.W_dec.norm(dim=-1)  # a_i ‖d_i‖
        top = scaled.topk(self.k_cap, dim=-1)
        target = x_centered.norm(dim=-1)
        k_star = afa_prefix_length(top.values, target, self.cfg.rule)
        keep = (torch.arange(self.k_cap, device=pre.device) < k_star[:, None]) & (top.values > 0)
        rows, slot = keep.nonzero(as_tuple=True)  # row-major: rows stay sorted
        capped = top.values.pow(2).sum(-1).sqrt() < target
        return rows, top.indices[rows, slot], capped

    def encode(self, x: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        """[batch, d_in] -> codes [batch, n_latents] with a per-token number of non-zeros."""
        x_centered = x - self.b_dec
        pre = x_centered @ self.W_enc.T + self.b_enc
        rows, cols, _ = self.select_afa(pre.detach(), x_centered.detach())
        out = torch.zeros_like(pre)
        out[rows, cols] = pre[rows, cols]
        return out

    def training_forward(self, x: torch.Tensor, ctx: TrainContext) -> TrainOutput:
        x_centered = x - self.b_dec
        with torch.no_grad():
            pre = x_centered @ self.W_enc.T + self.b_enc
        rows, cols, capped = self.select_afa(pre, x_centered)
        values = gather_values(x_centered, self.W_enc, self.b_enc, rows, cols).relu()
        code = SparseCode(rows, cols, values, x.shape[0], self.n_latents)
        x_hat = sparse_decode(code, self.W_dec, self.b_dec)
        losses = {"mse": reconstruction_loss(x, x_hat)}
        if self.cfg.afa_coeff > 0:
            f_norm = torch.zeros(x.shape[0], dtype=values.dtype, device=x.device)
            f_norm = f_norm.index_add(0, rows, values.pow(2)).clamp_min(1e-12).sqrt()
            target = x if self.cfg.loss_target == "input" else x_centered.detach()
            afa = (f_norm - target.norm(dim=-1)).pow(2).mean()
            losses["afa"] = self.cfg.afa_coeff * self.d_in * afa
        if self.cfg.aux_coeff > 0:
            aux = auxk_loss(self, x_centered, pre, x - x_hat, ctx.dead_mask, self.k_aux)
            losses["auxk"] = self.cfg.aux_coeff * aux
        stats = {"cap_frac": float(capped.float().mean())}
        return TrainOutput(x_hat, code.dense(), losses, stats)
