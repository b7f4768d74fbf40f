"""Model-in-the-loop comparison of SAEs at one hookpoint, gradient-aware (evaluation.md §4.1–4.3).

For every batch of held-out contexts the model runs once with gradients (x and g = ∂CE/∂x per
token, `capture_gradients`), once clean, once zero- and once mean-ablated, and once per SAE
*variant* with the reconstruction spliced in. A g-SAE yields two variants, its inference
modes "gradient" (selection uses the clean g of the same tokens) and "topk"; every other SAE
one. Per variant: FVU, L0 and the dead fraction on the spliced tokens; CE, ΔCE and KL with
CE/KL scores against zero and mean ablation. Spliced and scored tokens are those of
`saekit.evaluation.spliced` (token_mask; predictions with an attended target), and every
average is a ratio of sums over all tokens. Optionally, the steering effect of a sample of
each SAE's alive latents (`steering_effect`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from saekit.data.gradients import capture_gradients
from saekit.data.hooks import Which
from saekit.data.masking import token_mask
from saekit.evaluation.metrics import ReconstructionMetrics
from saekit.evaluation.spliced import splice
from saekit.evaluation.steering_effect import (
    median_token_norm,
    steering_effect,
    steering_positions,
)
from saekit.sae.base import SAE
from saekit.sae.selectors import TopK


@dataclass
class Variant:
    """One SAE used one way: name, SAE and the encode mode (None = the SAE's only way)."""

    name: str
    sae: SAE
    mode: str | None = None

    def encode(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.mode == "topk":
            return self.sae.with_selector(TopK()).encode(x)
        return self.sae.encode(x, extras={"grad": grad})


def variants(saes: dict[str, SAE]) -> list[Variant]:
    """g-SAEs in both inference modes, everything else as is."""
    out = []
    for name, sae in saes.items():
        if "grad" in sae.needs_extras:
            out += [
                Variant(f"{name}[gradient]", sae, "gradient"),
                Variant(f"{name}[topk]", sae, "topk"),
            ]
        else:
            out.append(Variant(name, sae))
    return out


class _Sums:
    """CE and KL sums of one variant (float64 Python floats)."""

    def __init__(self) -> None:
        self.ce = 0.0
        self.kl = 0.0


def _log_probs(model: nn.Module, ids: torch.Tensor, am: torch.Tensor, pred: torch.Tensor):
    logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits
    return torch.log_softmax(logits[:, :-1][pred].float(), dim=-1)


@torch.no_grad()
def _score(model, ids, am, pred, targets, clean, sums, hookpoint, which, mask, x_new) -> None:
    """Add one intervention's CE and KL sums (x_new replaces x[mask])."""
    with splice(model, hookpoint, which, mask, lambda _x: x_new):
        new = _log_probs(model, ids, am, pred)
    sums.ce += -new.gather(1, targets).double().sum().item()
    sums.kl += (clean.exp() * (clean - new)).sum(-1).double().sum().item()


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def compare_saes(
    saes: dict[str, SAE],
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    hookpoint: str,
    mean_activation: torch.Tensor,
    which: Which = "output",
    special_ids: Sequence[int] = (),
    batch_size: int = 4,
) -> dict[str, dict[str, float]]:
    """{variant name: metrics} on contexts [n, seq] (module docstring)."""
    device = next(model.parameters()).device
    vs = variants(saes)
    recon = {v.name: ReconstructionMetrics(v.sae.n_latents) for v in vs}
    sums = {name: _Sums() for name in ["clean", "zero", "mean", *recon]}
    n_pred = 0
    for start in range(0, len(input_ids), batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        am = attention_mask[start : start + batch_size].to(device)
        acts, grads = capture_gradients(model, ids, am, [hookpoint], which, special_ids)
        act, grad = acts[hookpoint], grads[hookpoint]
        mask = token_mask(ids, am, special_ids)
        pred = mask[:, :-1] & am[:, 1:].bool()
        targets = ids[:, 1:][pred].unsqueeze(1)
        x, g = act[mask], grad[mask]
        with torch.no_grad():
            clean = _log_probs(model, ids, am, pred)
        sums["clean"].ce += -clean.gather(1, targets).double().sum().item()
        args = (model, ids, am, pred, targets, clean)
        mu = mean_activation.to(x).expand_as(x)
        _score(*args, sums["zero"], hookpoint, which, mask, torch.zeros_like(x))
        _score(*args, sums["mean"], hookpoint, which, mask, mu)
        for v in vs:
            with torch.no_grad():
                codes = v.encode(x, g)
                x_hat = v.sae.decode(codes)
            recon[v.name].update(x, x_hat, codes)
            _score(*args, sums[v.name], hookpoint, which, mask, x_hat)
        n_pred += int(pred.sum())
    ce = {k: s.ce / n_pred for k, s in sums.items()}
    kl = {k: s.kl / n_pred for k, s in sums.items()}
    out = {}
    for v in vs:
        r = recon[v.name].compute()
        out[v.name] = {
            "architecture": v.sae.architecture,
            "mode": v.mode,
            "k": getattr(v.sae.cfg, "k", None),
            "beta": getattr(v.sae.cfg, "beta", None),
            "fvu": r["fvu"],
            "l0": r["l0"],
            "frac_dead": r["frac_dead"],
            "ce_clean": ce["clean"],
            "ce_spliced": ce[v.name],
            "delta_ce": ce[v.name] - ce["clean"],
            "ce_loss_score": _ratio(ce["zero"] - ce[v.name], ce["zero"] - ce["clean"]),
            "ce_loss_score_mean_ablation": _ratio(
                ce["mean"] - ce[v.name], ce["mean"] - ce["clean"]
            ),
            "kl_spliced": kl[v.name],
            "kl_div_score": _ratio(kl["zero"] - kl[v.name], kl["zero"]),
            "kl_div_score_mean_ablation": _ratio(kl["mean"] - kl[v.name], kl["mean"]),
            "ce_zero_ablation": ce["zero"],
            "ce_mean_ablation": ce["mean"],
            "n_tokens": int(r["n_tokens"]),
            "n_predictions": n_pred,
        }
    return out


@torch.no_grad()
def alive_latents(sae: SAE, x: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of latents that fire at least once on x [n, d_in] (g-SAE: gradient mode when
    grad is given, else topk mode)."""
    if "grad" in sae.needs_extras and grad is None:
        sae = sae.with_selector(TopK())
    codes = sae.encode(x, extras={"grad": grad} if grad is not None else None)
    return (codes != 0).any(0).nonzero().flatten()


def compare_steering(
    saes: dict[str, SAE],
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    hookpoint: str,
    alive: dict[str, torch.Tensor],
    n_latents: int = 24,
    kappa: float = 0.5,
    which: Which = "output",
    special_ids: Sequence[int] = (),
    max_position: int = 24,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Steering effect of ``n_latents`` latents drawn uniformly from each SAE's alive ones,
    on the same contexts, positions and α = κ·median‖x‖ for every SAE."""
    pos = steering_positions(input_ids, attention_mask, special_ids, max_position, seed)
    alpha = kappa * median_token_norm(
        model, input_ids, attention_mask, hookpoint, which, special_ids
    )
    out = {}
    for i, (name, sae) in enumerate(saes.items()):
        gen = torch.Generator().manual_seed(seed * 7919 + i)
        pick = alive[name][torch.randperm(len(alive[name]), generator=gen)[:n_latents]]
        res = steering_effect(
            model, input_ids, attention_mask, hookpoint, sae.W_dec.detach()[pick], alpha, pos, which
        )
        out[name] = {"latents": pick.tolist(), "kappa": kappa, **res}
    return out


__all__ = ["Variant", "alive_latents", "compare_saes", "compare_steering", "variants"]
