"""Per-token gradients of a downstream loss with respect to hooked activations (for g-SAE).

`capture_gradients` runs ONE forward and ONE backward. The first hooked site's activation
becomes a detached leaf that requires grad, so nothing before it is recorded by autograd and
no parameter gradient is computed or stored; later sites stay in the graph and are
differentiated in the same backward. Because the loss is a sum (not a mean), a token's
gradient does not depend on the batch size.

Downstream losses are pluggable (`DownstreamLoss`): `NextTokenCE` for causal LMs (the
default) and `PooledCosineLoss` for embedding models without an LM head.

Which predictions the next-token loss counts: those made at tokens kept by the masking
(`saekit.data.masking`: no padding, no special token, not the first position) whose next
token is attended. These are exactly the predictions spliced CE scores, so the gradient is
the first-order change of the loss that the evaluation reports; a prediction made at a
separator EOS (the first token of an unrelated packed document) or at the attention sink is
not part of that loss. Tokens that influence no counted prediction (padding, the last
position) get exactly zero.

`GradientModelStream` is a `ModelStream` whose batches carry extras["grad"] [batch, d_in].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from saekit.data.corpora import TokenizedCorpus
from saekit.data.hooks import SiteFn, Which, hook_sites
from saekit.data.masking import DEFAULT_MASKING, Masking, predictions
from saekit.data.model_stream import ModelStream
from saekit.data.stream import Batch


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    # Softmax and cosine in half precision lose the gradient's small entries; keep float64.
    return t.to(torch.promote_types(t.dtype, torch.float32))


class DownstreamLoss(Protocol):
    """A scalar loss of the model's output, SUMMED over the tokens it counts."""

    name: str

    def __call__(
        self,
        output: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        """keep: [batch, seq] bool, the tokens that are activations (`Masking.keep`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance: the loss, and what it sums over."""
        ...


class NextTokenCE:
    """Σ over the counted predictions t (`masking.predictions`) of CE(logits_t, ids_{t+1})
    (docs/methods.md#gsae-gradient)."""

    name = "next_token_ce"

    def __call__(
        self,
        output: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        logits = output.logits if hasattr(output, "logits") else output[0]
        counted = predictions(keep, attention_mask)[:, :-1]
        return F.cross_entropy(
            _at_least_fp32(logits[:, :-1][counted]), input_ids[:, 1:][counted], reduction="sum"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "loss": self.name,
            "reduction": "sum",
            "predictions": "at kept tokens whose next token is attended",
        }


class PooledCosineLoss:
    """For embedding models: Σ_b (1 − cos(pool_b, target_b)), pool_b the attention-masked
    mean of the last hidden state of context b (every attended token, as the model's own
    embedding pools them; ``keep`` is not used).

    target: [batch, d_model] embeddings to compare with (e.g. of paired texts), or
      "batch_mean": the (constant) mean pooled embedding of the batch. Comparing with the
      context's own clean embedding would give a zero gradient (a minimum), hence a target.
    """

    name = "pooled_cosine"

    def __init__(self, target: torch.Tensor | str = "batch_mean"):
        if isinstance(target, str) and target != "batch_mean":
            raise ValueError(f"target must be a tensor or 'batch_mean', got {target!r}")
        self.target = target

    def __call__(
        self,
        output: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        am = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * am).sum(1) / am.sum(1).clamp_min(1)
        if isinstance(self.target, str):
            target = pooled.detach().mean(0, keepdim=True).expand_as(pooled)
        else:
            target = self.target.to(pooled)
        pooled, target = _at_least_fp32(pooled), _at_least_fp32(target)
        return (1 - F.cosine_similarity(pooled, target, dim=-1)).sum()

    def describe(self) -> dict[str, Any]:
        target = self.target if isinstance(self.target, str) else "given"
        return {"loss": self.name, "reduction": "sum", "target": target}


def capture_gradients(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    hookpoints: str | Sequence[str],
    which: Which = "output",
    special_ids: Sequence[int] = (),
    masking: Masking = DEFAULT_MASKING,
    loss: DownstreamLoss | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Activations x and gradients g = ∂loss/∂x at several sites, from one forward and one
    backward (module docstring).

    input_ids, attention_mask: [batch, seq]. hookpoints: module paths (read at ``which``)
    or sites (``"M:in"``, ``"M:out"``). special_ids and masking say which tokens are kept,
    hence which predictions the loss counts. loss: default `NextTokenCE()`.
    Returns ({hookpoint: x}, {hookpoint: g}), each [batch, seq, d] in at least float32.
    """
    loss = loss or NextTokenCE()
    if isinstance(hookpoints, str):  # one site, not its characters
        hookpoints = [hookpoints]
    hookpoints = list(dict.fromkeys(hookpoints))
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    live: dict[str, torch.Tensor] = {}

    def tracker(name: str) -> SiteFn:
        def track(x: torch.Tensor) -> torch.Tensor | None:
            if name in live:
                raise RuntimeError(
                    f"hookpoint {name!r} ran twice in one forward; its gradient is ambiguous"
                )
            torch.set_grad_enabled(True)  # autograd starts at the first site
            if x.requires_grad:  # downstream of an earlier site: differentiate it in place
                live[name] = x
                return None
            live[name] = x.detach().requires_grad_(True)
            return live[name]

        return track

    grad_mode = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(False)
        with hook_sites(model, {h: tracker(h) for h in hookpoints}, which):
            output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        missing = [h for h in hookpoints if h not in live]
        if missing:
            raise RuntimeError(f"hookpoints {missing} did not run during the forward pass")
        keep = masking.keep(input_ids, attention_mask, special_ids)
        value = loss(output, input_ids, attention_mask, keep)
        if not value.requires_grad:
            raise RuntimeError(f"the {loss.name} loss does not depend on {hookpoints}")
        grads = torch.autograd.grad(value, [live[h] for h in hookpoints], allow_unused=True)
    finally:
        torch.set_grad_enabled(grad_mode)
    acts = {h: _at_least_fp32(live[h].detach()) for h in hookpoints}
    return acts, {
        h: torch.zeros_like(acts[h]) if g is None else _at_least_fp32(g)
        for h, g in zip(hookpoints, grads)
    }


class GradientModelStream(ModelStream):
    """A ModelStream whose batches also carry extras["grad"] = ∂loss/∂x [batch, d_in]
    (same masking, shuffling and exact resume as ModelStream).

    Costs a full forward plus a backward from the loss to the hookpoint per context, where
    the plain stream stops its forward at the hookpoint.
    """

    def __init__(self, *args: Any, loss: DownstreamLoss | None = None, **kwargs: Any):
        self.loss = loss or NextTokenCE()
        super().__init__(*args, **kwargs)

    def _capture(self, sub: TokenizedCorpus) -> torch.Tensor:
        """Masked [x | g] of a few contexts: [n, 2 * d_in] float32 (split in __iter__)."""
        device = next(self.model.parameters()).device
        ids, am = sub.input_ids.to(device), sub.attention_mask.to(device)
        acts, grads = capture_gradients(
            self.model, ids, am, [self.hookpoint], self.which, sub.special_ids, self.masking,
            self.loss,
        )  # fmt: skip
        act, grad = acts[self.hookpoint].cpu(), grads[self.hookpoint].cpu()
        mask = self.masking.keep(sub.input_ids, sub.attention_mask, sub.special_ids, [act])
        return torch.cat([act[mask], grad[mask]], dim=-1).float()

    def __iter__(self) -> Iterator[Batch]:
        d = self.d_in
        for batch in super().__iter__():
            yield Batch(batch.x[:, :d], {"grad": batch.x[:, d:]})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gradient": self.loss.describe()}


__all__ = [
    "DownstreamLoss",
    "GradientModelStream",
    "NextTokenCE",
    "PooledCosineLoss",
    "capture_gradients",
]
