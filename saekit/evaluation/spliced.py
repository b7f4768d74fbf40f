"""Spliced-in evaluation: how much of the model's behaviour survives when a hookpoint's
activation is replaced by a reconstruction (docs/evaluation.md#spliced; the JSON fields in
docs/eval-schema.md, "spliced").

For every batch the model runs on the same tokens:
  clean       no intervention;
  zero        x -> 0;
  mean        x -> mu, a mean activation estimated on other tokens (optional);
  one run per *variant*: x -> x̂, the variant's reconstruction (an SAE's forward, any
              [n, d] -> [n, d] function, or a g-SAE in one of its inference modes).
A variant may read g = ∂CE/∂x of the clean forward at the spliced tokens (a g-SAE's
"gradient" mode); the model then also runs one forward and backward per batch, and the
variant is label-informed: g contains the true next tokens it is scored on.

For a transcoder the hookpoint is a pair ``SOURCE->TARGET`` (``model.layers.6.mlp:in->out``):
a variant replaces the TARGET activation by its prediction from the source activation of the
same forward, so with ``M:in->out`` the module M is replaced by the transcoder; the zero and
mean ablations act on the target (mu is the target's mean), as they would for an SAE there.

Which positions are replaced and scored is the *convention* (base.CONVENTIONS):
  saekit    the tokens kept by `token_mask` (no padding, no special tokens, not the first
            position, whose massive activation is left alone); predictions made at those
            positions (with an attended target) are scored. Every intervention, ablations
            included, touches the same tokens, so splicing the identity (zero) function
            reproduces the clean (zero-ablation) loss exactly.
  saebench  every attended position is replaced, the first and special tokens included, and
            every prediction with an attended target is scored (SAEBench's core eval).

Every average is a ratio of sums over all scored tokens (not a mean of batch means):
  ce_loss_score = (CE_zero - CE_spliced) / (CE_zero - CE_clean)      (1 = perfect, 0 = zero)
  ce_loss_score_mean_ablation: the same against the mean-ablated CE (stricter)
  kl_div_score = (KL_zero - KL_spliced) / KL_zero, KL(p_clean || p_new) per token
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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
from saekit.data.masking import predictions, token_mask
from saekit.evaluation.base import (
    CONVENTIONS,
    EvalRun,
    InferenceVariant,
    Skip,
    selection_means,
)
from saekit.evaluation.metrics import ReconstructionMetrics

Reconstruct = Callable[[torch.Tensor], torch.Tensor]
Observe = Callable[[torch.Tensor, torch.Tensor], None]


@contextmanager
def splice(
    model: nn.Module,
    hookpoint: str,
    which: Which,
    mask: torch.Tensor,
    fn: Reconstruct,
    source: str | None = None,
    observe: Observe | None = None,
) -> Iterator[None]:
    """Within the block, the hookpoint's activation x [batch, seq, d] becomes x with
    x[mask] replaced by fn(x[mask]) (fn sees float32 [n, d]); other tokens keep x.

    source: a site (``"M:in"``, ``"M:out"``) read earlier in the same forward; fn then
    maps its activation s [batch, seq, d_in] instead: x[mask] = fn(s[mask]) (transcoders).
    observe(x[mask], fn(...)): called with what was replaced and its replacement (float32).
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
        if observe is not None:
            observe(x[mask].float(), new)
        out = x.clone()
        out[mask] = new.to(x.dtype)
        return out

    with ExitStack() as stack:
        if source is not None:
            stack.enter_context(capture_hooks(model, [source], which, seen, stop=False))
        stack.enter_context(hook_sites(model, {hookpoint: replace}, which))
        yield


# ---- variants -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpliceVariant:
    """One replacement: reconstruct(x, g) -> (x̂, codes or None, per-token selector stats).

    x [n, d_in] float32 at the replaced tokens (a pair's source activation); g = ∂CE/∂x
    there when `label_informed`, else None. With codes, L0, FVU and the dead fraction on the
    replaced tokens are reported too."""

    name: str
    reconstruct: Callable[
        [torch.Tensor, torch.Tensor | None],
        tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]],
    ]
    label_informed: bool = False
    n_latents: int | None = None

    @classmethod
    def of_function(cls, fn: Reconstruct, name: str = "spliced") -> SpliceVariant:
        return cls(name, lambda x, _g: (fn(x), None, {}))

    @classmethod
    def of_inference(cls, variant: InferenceVariant) -> SpliceVariant:
        return cls(variant.name, variant.reconstruct, variant.label_informed, variant.sae.n_latents)


class _VariantSums:
    """CE/KL sums of one variant and, with codes, the reconstruction on the replaced tokens."""

    def __init__(self, variant: SpliceVariant):
        self.variant = variant
        self.ce = self.kl = 0.0
        self.recon = ReconstructionMetrics(variant.n_latents) if variant.n_latents else None
        self.stat_sums: dict[str, float] = {}
        self._codes: torch.Tensor | None = None

    def replace(self, grad: torch.Tensor | None) -> Reconstruct:
        def fn(x: torch.Tensor) -> torch.Tensor:
            x_hat, self._codes, stats = self.variant.reconstruct(x, grad)
            for name, mean in selection_means(stats).items():
                self.stat_sums[name] = self.stat_sums.get(name, 0.0) + mean * len(x)
            return x_hat

        return fn

    def observe(self, replaced: torch.Tensor, x_hat: torch.Tensor) -> None:
        if self.recon is not None and self._codes is not None:
            self.recon.update(replaced, x_hat, self._codes)


def _log_probs(model: nn.Module, ids: torch.Tensor, am: torch.Tensor, pred: torch.Tensor):
    """Log-probabilities [n, vocab] (float32) of the predictions at the scored positions."""
    logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits
    return torch.log_softmax(logits[:, :-1][pred].float(), dim=-1)


def _ce_sum(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    return -log_probs.gather(1, targets).double().sum().item()


def _kl_sum(clean: torch.Tensor, new: torch.Tensor) -> float:
    return (clean.exp() * (clean - new)).sum(-1).double().sum().item()


def spliced_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    convention: str = "saekit",
    special_ids: Sequence[int] = (),
    exclude_first: bool = True,
) -> torch.Tensor:
    """[batch, seq] bool: the positions a convention replaces (module docstring)."""
    if convention == "saebench":
        return attention_mask.bool()
    if convention == "saekit":
        return token_mask(input_ids, attention_mask, special_ids, exclude_first)
    raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")


@torch.no_grad()
def spliced_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    hookpoint: str,
    variants: Sequence[SpliceVariant],
    mean_activation: torch.Tensor | None = None,
    batch_size: int = 4,
    which: Which = "output",
    special_ids: Sequence[int] = (),
    convention: str = "saekit",
    exclude_first: bool = True,
) -> dict[str, Any]:
    """CE/KL of the model with each variant spliced in at ``hookpoint`` (module docstring).

    input_ids, attention_mask: [n_contexts, seq] (a TokenizedCorpus gives both, and its
      special_ids should be passed too).
    hookpoint: a module path (read at ``which``), a site, or a pair ``SOURCE->TARGET``.
    mean_activation: [d] ([d_out], of the target, for a pair); without it the
      mean-ablation entries are None.
    batch_size: contexts per forward; the log-probs of one batch take n x vocab floats.
    exclude_first: the saekit convention without its position-0 exclusion (tests).

    Returns the baselines (ce_clean, ce_zero_ablation, ce_mean_ablation, kl_zero_ablation,
    kl_mean_ablation), n_tokens (scored predictions), n_spliced (replaced positions),
    convention, and "variants": {name: that variant's scores}.
    """
    source = None
    if is_pair(hookpoint):
        source, hookpoint = HookPair.parse(hookpoint).sites
        get_module(model, source)
    get_module(model, hookpoint)
    if source is not None and any(v.label_informed for v in variants):
        raise ValueError("a gradient-reading variant needs an SAE hookpoint, not a pair")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = next(model.parameters()).device
    ablations: dict[str, Reconstruct] = {"zero_ablation": torch.zeros_like}
    if mean_activation is not None:
        mu = mean_activation.detach().float().to(device)
        ablations["mean_ablation"] = lambda x: mu.expand_as(x)
    ce = dict.fromkeys(["clean", *ablations], 0.0)
    kl = dict.fromkeys(ablations, 0.0)
    sums = [_VariantSums(v) for v in variants]
    n_tokens = n_spliced = 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        am = attention_mask[start : start + batch_size].to(device)
        mask = spliced_mask(ids, am, convention, special_ids, exclude_first)
        pred = predictions(mask, am)[:, :-1]
        targets = ids[:, 1:][pred].unsqueeze(1)
        grad = _gradient_at(model, ids, am, hookpoint, which, mask, special_ids) if any(
            v.label_informed for v in variants
        ) else None  # fmt: skip
        clean = _log_probs(model, ids, am, pred)
        ce["clean"] += _ce_sum(clean, targets)
        for name, fn in ablations.items():
            with splice(model, hookpoint, which, mask, fn):
                new = _log_probs(model, ids, am, pred)
            ce[name] += _ce_sum(new, targets)
            kl[name] += _kl_sum(clean, new)
        for s in sums:
            replace = s.replace(grad if s.variant.label_informed else None)
            with splice(model, hookpoint, which, mask, replace, source, s.observe):
                new = _log_probs(model, ids, am, pred)
            s.ce += _ce_sum(new, targets)
            s.kl += _kl_sum(clean, new)
        n_tokens += int(pred.sum())
        n_spliced += int(mask.sum())
    if n_tokens == 0:
        raise ValueError("no token to score: every position is masked")
    ce = {k: v / n_tokens for k, v in ce.items()}
    kl = {k: v / n_tokens for k, v in kl.items()}
    out: dict[str, Any] = {
        "convention": convention,
        "ce_clean": ce["clean"],
        "ce_zero_ablation": ce["zero_ablation"],
        "ce_mean_ablation": ce.get("mean_ablation"),
        "kl_zero_ablation": kl["zero_ablation"],
        "kl_mean_ablation": kl.get("mean_ablation"),
        "n_tokens": n_tokens,
        "n_spliced": n_spliced,
    }
    out["variants"] = {s.variant.name: _variant_scores(s, ce, kl, n_tokens) for s in sums}
    return out


def _gradient_at(model, ids, am, hookpoint, which, mask, special_ids) -> torch.Tensor:
    """g = ∂CE/∂x at the replaced tokens [n, d], from one clean forward and backward."""
    from saekit.data.gradients import capture_gradients

    grads = capture_gradients(model, ids, am, [hookpoint], which, special_ids)[1]
    return grads[hookpoint][mask]


def _variant_scores(
    s: _VariantSums, ce: dict[str, float], kl: dict[str, float], n_tokens: int
) -> dict[str, Any]:
    ce_new, kl_new = s.ce / n_tokens, s.kl / n_tokens
    mean_ce, mean_kl = ce.get("mean_ablation"), kl.get("mean_ablation")
    out: dict[str, Any] = {
        "label_informed": s.variant.label_informed,
        "ce_spliced": ce_new,
        "delta_ce": ce_new - ce["clean"],
        "ce_loss_score": _ratio(ce["zero_ablation"] - ce_new, ce["zero_ablation"] - ce["clean"]),
        "ce_loss_score_mean_ablation": _ratio(mean_ce - ce_new, mean_ce - ce["clean"])
        if mean_ce is not None
        else None,
        "kl_spliced": kl_new,
        "kl_div_score": _ratio(kl["zero_ablation"] - kl_new, kl["zero_ablation"]),
        "kl_div_score_mean_ablation": _ratio(mean_kl - kl_new, mean_kl)
        if mean_kl is not None
        else None,
    }
    if s.recon is not None and s.recon.n_tokens:
        r = s.recon.compute()
        out.update(fvu=r["fvu"], l0=r["l0"], frac_dead=r["frac_dead"])
    if s.stat_sums and s.recon is not None and s.recon.n_tokens:
        out["selection"] = {k: v / s.recon.n_tokens for k, v in s.stat_sums.items()}
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


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
    convention: str = "saekit",
) -> dict[str, Any]:
    """`spliced_scores` for one reconstruction ``sae_or_fn`` ([n, d] float32 -> [n, d], e.g.
    an SAE, whose forward is the reconstruction; for a pair [n, d_in] -> [n, d_out]), as one
    flat dict: the baselines and that reconstruction's scores."""
    scores = spliced_scores(
        model, input_ids, attention_mask, hookpoint, [SpliceVariant.of_function(sae_or_fn)],
        mean_activation, batch_size, which, special_ids, convention, exclude_first,
    )  # fmt: skip
    variant = scores.pop("variants")["spliced"]
    return {**scores, **variant}


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


# ---- the group --------------------------------------------------------------------------------


def spliced_group(run: EvalRun) -> dict[str, Any]:
    """Every inference variant of the SAE spliced in on held-out contexts; the label-free
    variant's scores also at the top level of the section (the headline numbers)."""
    model, _, source = run.require_model()
    if run.sae.is_transcoder and source.target is None:
        raise Skip("a transcoder needs its SOURCE->TARGET hookpoint pair in its metadata")
    # A transcoder replaces its target with its prediction from the source (the pair); an
    # SAE replaces its own hookpoint. Ablation baselines act on what is replaced.
    hookpoint = source.pair if run.sae.is_transcoder else source.hookpoint
    s = run.settings
    evaluation = run.contexts("heldout", s.spliced_contexts)
    key = ("mean_activation", source, run.sae.is_transcoder, s.corpus, s.spliced_contexts)
    if key not in run.shared:
        other = run.contexts("train", s.spliced_contexts)
        run.shared[key] = estimate_mean_activation(
            model, other.input_ids, other.attention_mask, hookpoint,  # type: ignore[arg-type]
            which=source.which, special_ids=other.special_ids,  # type: ignore[arg-type]
        )  # fmt: skip
    variants = [SpliceVariant.of_inference(v) for v in run.variants]
    scores = spliced_scores(
        model, evaluation.input_ids, evaluation.attention_mask, hookpoint,  # type: ignore[arg-type]
        variants, run.shared[key], which=source.which,  # type: ignore[arg-type]
        special_ids=evaluation.special_ids, convention=s.convention,
    )  # fmt: skip
    headline = scores["variants"][run.label_free.name]
    return {
        "spliced": {
            **scores,
            **headline,
            "convention_description": CONVENTIONS[s.convention],
            "n_contexts": len(evaluation),
            "ctx_len": evaluation.ctx_len,
            **run.mode_note(),
        }
    }


__all__ = [
    "SpliceVariant",
    "estimate_mean_activation",
    "splice",
    "spliced_group",
    "spliced_mask",
    "spliced_metrics",
    "spliced_scores",
]
