"""Steering effect of dictionary atoms in random contexts (our protocol,
docs/evaluation.md#steering).

For each atom d (unit norm) and each of N contexts with a random position t: add α·d to the
hookpoint's activation at t only, and compare the next-token distribution at t with the
clean one:
  kl            KL(p_clean ‖ p_steered) at t;
  logit_shift   ‖Δz − mean(Δz)‖ at t, Δz the change of the logits (centred, because a
                constant shift of the logits changes nothing).
α = κ · median ‖x‖ over the contexts' kept tokens, one α for every atom and every SAE
compared on the same contexts, so per-unit-norm numbers (kl / α, logit_shift / α) compare
directly. Contexts are truncated after their position t's batch maximum: later positions
cannot affect the prediction at t in a causal model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from saekit.data.hooks import Which, capture, get_module, hook_sites
from saekit.data.masking import predictions, token_mask
from saekit.evaluation.base import EvalRun, Skip


def steering_positions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: Sequence[int] = (),
    max_position: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """One random position per context [n] among tokens kept by `token_mask` that also
    predict an attended token, below max_position (cheap forwards)."""
    keep = predictions(token_mask(input_ids, attention_mask, special_ids), attention_mask)
    keep[:, max_position:] = False
    if not keep.any(-1).all():
        raise ValueError("a context has no usable position below max_position")
    gen = torch.Generator().manual_seed(seed)
    return torch.multinomial(keep.double(), 1, generator=gen).squeeze(1)


def _log_probs_at(
    model: nn.Module, ids: torch.Tensor, am: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits
    return torch.log_softmax(logits[torch.arange(len(pos)), pos].float(), dim=-1)


def _added_at(rows: torch.Tensor, pos: torch.Tensor, delta: torch.Tensor):
    """x -> x with delta [d] added at (rows, pos) of the activation [batch, seq, d]."""

    def shift(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[rows, pos] += delta.to(x.device, x.dtype)
        return out

    return shift


@torch.no_grad()
def median_token_norm(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    hookpoint: str,
    which: Which = "output",
    special_ids: Sequence[int] = (),
) -> float:
    """Median ‖x‖ over the kept tokens of the contexts (sets α = κ · median)."""
    act = capture(model, input_ids, attention_mask, [hookpoint], which)[hookpoint]
    mask = token_mask(input_ids, attention_mask, special_ids)
    return float(act[mask].float().norm(dim=-1).median())


@torch.no_grad()
def steering_effect(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    hookpoint: str,
    atoms: torch.Tensor,
    alpha: float,
    positions: torch.Tensor,
    which: Which = "output",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Per-atom steering effect (module docstring).

    input_ids, attention_mask: [n_contexts, seq]; positions [n_contexts] (see
    `steering_positions`); atoms [n_atoms, d] (normalised here); alpha: intervention norm.
    Returns per-atom lists "kl", "logit_shift" (means over contexts) and, averaged over
    atoms, "mean_kl", "mean_kl_per_norm", "mean_logit_shift_per_norm" plus medians.
    """
    get_module(model, hookpoint)
    device = next(model.parameters()).device
    atoms = atoms.float() / atoms.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kl = torch.zeros(len(atoms), dtype=torch.float64)
    shift = torch.zeros(len(atoms), dtype=torch.float64)
    for start in range(0, len(input_ids), batch_size):
        pos = positions[start : start + batch_size].to(device)
        width = int(pos.max()) + 1
        ids = input_ids[start : start + batch_size, :width].to(device)
        am = attention_mask[start : start + batch_size, :width].to(device)
        rows = torch.arange(len(ids), device=device)
        clean = _log_probs_at(model, ids, am, pos)
        for i, atom in enumerate(atoms):
            with hook_sites(model, {hookpoint: _added_at(rows, pos, alpha * atom)}, which):
                steered = _log_probs_at(model, ids, am, pos)
            kl[i] += (clean.exp() * (clean - steered)).sum(-1).double().sum().cpu()
            dz = steered - clean  # log-softmax differences = centred-up-to-constant logits
            dz = dz - dz.mean(-1, keepdim=True)
            shift[i] += dz.norm(dim=-1).double().sum().cpu()
    n = len(input_ids)
    kl, shift = kl / n, shift / n

    def per_norm(v: torch.Tensor) -> float:
        return float(v / alpha) if alpha > 0 else float("nan")

    return {
        "alpha": alpha,
        "n_contexts": n,
        "n_atoms": len(atoms),
        "kl": kl.tolist(),
        "logit_shift": shift.tolist(),
        "mean_kl": float(kl.mean()),
        "median_kl": float(kl.median()),
        "mean_kl_per_norm": per_norm(kl.mean()),
        "mean_logit_shift_per_norm": per_norm(shift.mean()),
        "median_logit_shift_per_norm": per_norm(shift.median()),
    }


def steering_group(run: EvalRun) -> dict[str, Any]:
    """The steering group: `steering_effect` of `steer_latents` latents drawn from those alive
    on the core group's held-out tokens, with the same contexts, positions and α for every
    SAE of the run on one hookpoint."""
    model, _, source = run.require_model()
    run.require_not_transcoder("steering adds atoms at the SAE's input; a transcoder's atoms "
                               "live at its target")  # fmt: skip
    if run.density is None:
        raise Skip("needs the core group's firing densities (add core to the groups)")
    s = run.settings
    ctx = run.contexts("heldout", s.steer_contexts)
    ids, am = ctx.input_ids, ctx.attention_mask
    positions = steering_positions(ids, am, ctx.special_ids, s.steer_max_position, s.seed)
    key = ("steering_alpha", source, s.corpus, s.steer_contexts, s.ctx_len, s.seed, s.kappa)
    if key not in run.shared:
        median = median_token_norm(model, ids, am, source.hookpoint, source.which, ctx.special_ids)  # type: ignore[arg-type]
        run.shared[key] = s.kappa * median
    alive = torch.nonzero(run.density > 0).flatten()
    if len(alive) == 0:
        raise Skip("no latent fired on the held-out tokens")
    gen = torch.Generator().manual_seed(s.seed)
    pick = alive[torch.randperm(len(alive), generator=gen)[: s.steer_latents]]
    atoms = run.sae.W_dec.detach()[pick]
    res = steering_effect(model, ids, am, source.hookpoint, atoms, run.shared[key], positions,
                          source.which)  # type: ignore[arg-type]  # fmt: skip
    return {"steering": {"latents": pick.tolist(), "kappa": s.kappa, **res}}


__all__ = ["median_token_norm", "steering_effect", "steering_group", "steering_positions"]
