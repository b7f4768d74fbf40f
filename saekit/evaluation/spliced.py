"""Spliced-in evaluation: how much of the model's behaviour survives when a hookpoint's
activation is replaced by a reconstruction (evaluation.md §4.1).

For every batch the model runs four times on the same tokens:
  clean       no intervention;
  spliced     x -> f(x) at the hookpoint (f = an SAE's forward, or any [n, d] -> [n, d]);
  zero        x -> 0;
  mean        x -> mu, a mean activation estimated on other tokens (optional).
For a transcoder the hookpoint is a pair ``SOURCE->TARGET`` (``model.layers.6.mlp:in->out``):
the spliced run replaces the TARGET activation by f(source activation of the same forward),
so with ``M:in->out`` the module M is replaced by the transcoder; the zero and mean
ablations act on the target (mu is the target's mean), as they would for an SAE there.
Every intervention touches the same tokens: those kept by `token_mask` (no padding, no
special tokens, not the first position, whose massive activation is left alone). SAEBench
zeroes every position instead; replacing the same token set in all three keeps the
baselines comparable, and splicing the identity (zero) function reproduces the clean
(zero-ablation) loss exactly.

Scores use next-token predictions made at those same positions (with an attended target),
and every average is a ratio of sums over all tokens (not a mean of batch means):
  ce_loss_score = (CE_zero - CE_spliced) / (CE_zero - CE_clean)      (1 = perfect, 0 = zero)
  ce_loss_score_mean_ablation: the same against the mean-ablated CE (stricter)
  kl_div_score = (KL_zero - KL_spliced) / KL_zero, KL(p_clean || p_new) per token
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from saekit.data.hooks import (
    HookPair,
    Which,
    capture,
    capture_hooks,
    get_module,
    hook_sites,
    is_pair,
)
from saekit.data.masking import token_mask

Reconstruct = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def splice(
    model: nn.Module,
    hookpoint: str,
    which: Which,
    mask: torch.Tensor,
    fn: Reconstruct,
    source: str | None = None,
) -> Iterator[None]:
    """Within the block, the hookpoint's activation x [batch, seq, d] becomes x with
    x[mask] replaced by fn(x[mask]) (fn sees float32 [n, d]); other tokens keep x.

    source: a site (``"M:in"``, ``"M:out"``) read earlier in the same forward; fn then
    maps its activation s [batch, seq, d_in] instead: x[mask] = fn(s[mask]) (transcoders).
    """
    seen: dict[str, torch.Tensor] = {}

    def replace(x: torch.Tensor) -> torch.Tensor:
        if source is None:
            inp = x
        elif source in seen:
            inp = seen.pop(source)  # consumed: the next forward records it again
        else:
            raise RuntimeError(
                f"transcoder source {source!r} has not run when {hookpoint!r} does; "
                "the source must come before the target in the forward"
            )
        new = fn(inp[mask].float())
        if new.shape != (int(mask.sum()), x.shape[-1]):
            raise ValueError(
                f"reconstruction has shape {tuple(new.shape)}, expected "
                f"{(int(mask.sum()), x.shape[-1])}"
            )
        if not torch.isfinite(new).all():
            raise FloatingPointError(f"non-finite reconstruction spliced into {hookpoint!r}")
        out = x.clone()
        out[mask] = new.to(x.dtype)
        return out

    with ExitStack() as stack:
        if source is not None:
            stack.enter_context(capture_hooks(model, [source], which, seen, stop=False))
        stack.enter_context(hook_sites(model, {hookpoint: replace}, which))
        yield


def _log_probs(model: nn.Module, ids: torch.Tensor, am: torch.Tensor, pred: torch.Tensor):
    """Log-probabilities [n, vocab] (float32) of the predictions at the scored positions."""
    logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits
    return torch.log_softmax(logits[:, :-1][pred].float(), dim=-1)


@torch.no_grad()
def spliced_metrics(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    hookpoint: str,
    sae_or_fn: Reconstruct,
    mean_activation: torch.Tensor | None = None,
    batch_size: int = 4,
    which: Which = "output",
    special_ids: Sequence[int] = (),
    exclude_first: bool = True,
) -> dict[str, float | int | None]:
    """CE/KL of the model with ``sae_or_fn`` spliced in at ``hookpoint`` (module docstring).

    input_ids, attention_mask: [n_contexts, seq] (a TokenizedCorpus gives both, and its
      special_ids should be passed too).
    hookpoint: a module path (read at ``which``), a site, or a pair ``SOURCE->TARGET``
      (a transcoder: the target is replaced by sae_or_fn(source)).
    sae_or_fn: [n, d] float32 -> [n, d], e.g. an SAE (its forward is the reconstruction);
      for a pair [n, d_in] -> [n, d_out].
    mean_activation: [d] ([d_out], of the target, for a pair); without it the
      mean-ablation entries are None.
    batch_size: contexts per forward; the log-probs of one batch take n x vocab floats.
    """
    source = None
    if is_pair(hookpoint):
        source, hookpoint = HookPair.parse(hookpoint).sites
        get_module(model, source)
    get_module(model, hookpoint)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = next(model.parameters()).device
    variants: dict[str, Reconstruct] = {
        "spliced": sae_or_fn,
        "zero_ablation": torch.zeros_like,
    }
    if mean_activation is not None:
        mu = mean_activation.detach().float().to(device)
        variants["mean_ablation"] = lambda x: mu.expand_as(x)
    ce = dict.fromkeys(["clean", *variants], 0.0)
    kl = dict.fromkeys(variants, 0.0)
    n_tokens = 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        am = attention_mask[start : start + batch_size].to(device)
        mask = token_mask(ids, am, special_ids, exclude_first)
        pred = mask[:, :-1] & am[:, 1:].bool()  # positions that predict an attended token
        targets = ids[:, 1:][pred].unsqueeze(1)
        clean = _log_probs(model, ids, am, pred)
        ce["clean"] += -clean.gather(1, targets).double().sum().item()
        p_clean = clean.exp()
        for name, fn in variants.items():
            # only the reconstruction reads the source; ablations replace the target itself
            with splice(model, hookpoint, which, mask, fn, source if name == "spliced" else None):
                new = _log_probs(model, ids, am, pred)
            ce[name] += -new.gather(1, targets).double().sum().item()
            kl[name] += (p_clean * (clean - new)).sum(-1).double().sum().item()
        n_tokens += int(pred.sum())
    if n_tokens == 0:
        raise ValueError("no token to score: every position is masked")
    return _scores(
        {k: v / n_tokens for k, v in ce.items()}, {k: v / n_tokens for k, v in kl.items()}, n_tokens
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def _scores(ce: dict[str, float], kl: dict[str, float], n_tokens: int) -> dict[str, Any]:
    has_mean = "mean_ablation" in ce
    return {
        "ce_clean": ce["clean"],
        "ce_spliced": ce["spliced"],
        "ce_zero_ablation": ce["zero_ablation"],
        "ce_mean_ablation": ce.get("mean_ablation"),
        "ce_loss_score": _ratio(
            ce["zero_ablation"] - ce["spliced"], ce["zero_ablation"] - ce["clean"]
        ),
        "ce_loss_score_mean_ablation": _ratio(
            ce["mean_ablation"] - ce["spliced"], ce["mean_ablation"] - ce["clean"]
        )
        if has_mean
        else None,
        "kl_spliced": kl["spliced"],
        "kl_zero_ablation": kl["zero_ablation"],
        "kl_mean_ablation": kl.get("mean_ablation"),
        "kl_div_score": _ratio(kl["zero_ablation"] - kl["spliced"], kl["zero_ablation"]),
        "kl_div_score_mean_ablation": _ratio(
            kl["mean_ablation"] - kl["spliced"], kl["mean_ablation"]
        )
        if has_mean
        else None,
        "delta_ce": ce["spliced"] - ce["clean"],
        "n_tokens": n_tokens,
    }


@torch.no_grad()
def estimate_mean_activation(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    hookpoint: str,
    batch_size: int = 8,
    which: Which = "output",
    special_ids: Sequence[int] = (),
    exclude_first: bool = True,
    max_norm_factor: float | None = None,
) -> torch.Tensor:
    """Mean activation [d] (float32) over the kept tokens of contexts [n, seq]; use tokens
    other than the evaluation ones. Accumulated in float64. For a pair ``SOURCE->TARGET``
    the mean of its target (what a transcoder splice replaces)."""
    if is_pair(hookpoint):
        hookpoint = HookPair.parse(hookpoint).target
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = next(model.parameters()).device
    total: torch.Tensor | None = None
    count = 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        am = attention_mask[start : start + batch_size].to(device)
        act = capture(model, ids, am, [hookpoint], which)[hookpoint]
        mask = token_mask(ids, am, special_ids, exclude_first, act, max_norm_factor)
        part = act[mask].double().sum(0)
        total = part if total is None else total + part
        count += int(mask.sum())
    if count == 0 or total is None:
        raise ValueError("no kept token to average")
    return (total / count).float().cpu()


__all__ = ["estimate_mean_activation", "splice", "spliced_metrics"]
