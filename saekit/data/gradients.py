"""Per-token gradients of a downstream loss with respect to a hooked activation (for g-SAE).

`capture_gradients` runs ONE forward in which the hookpoint's activation is replaced by a
detached leaf that requires grad, computes a downstream loss summed over tokens, and runs
one backward that stops at that leaf: nothing before the hookpoint is recorded by autograd
and no parameter gradient is computed or stored. Because the loss is a sum (not a mean), a
token's gradient does not depend on the batch size. Tokens that influence no counted loss
term (padding, the last position) get exactly zero.

Downstream losses are pluggable (`DownstreamLoss`): `NextTokenCE` for causal LMs (the
default) and `PooledCosineLoss` for embedding models without an LM head.

`GradientModelStream` is a `ModelStream` whose batches carry extras["grad"] [batch, d_in].
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from saekit.data.corpora import TokenizedCorpus
from saekit.data.hooks import Which, get_module
from saekit.data.model_stream import ModelStream, open_model_stream
from saekit.data.stream import Batch


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    # Softmax and cosine in half precision lose the gradient's small entries; keep float64.
    return t.to(torch.promote_types(t.dtype, torch.float32))


class DownstreamLoss(Protocol):
    """A scalar loss of the model's output, SUMMED over the tokens it counts."""

    name: str

    def __call__(
        self, output: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor: ...

    def counted(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, seq] bool: positions whose activation may influence the loss; the others
        get a zero gradient."""
        ...


class NextTokenCE:
    """Σ over positions t with an attended token and an attended target of
    CE(logits_t, ids_{t+1}) (methods.md §4.3). Positions without a target are not counted."""

    name = "next_token_ce"

    def __call__(
        self, output: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        logits = output.logits if hasattr(output, "logits") else output[0]
        has_target = self.counted(input_ids, attention_mask)[:, :-1]
        ce = F.cross_entropy(
            _at_least_fp32(logits[:, :-1][has_target]),
            input_ids[:, 1:][has_target],
            reduction="sum",
        )
        return ce

    def counted(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        am = attention_mask.bool()
        out = torch.zeros_like(am)
        out[:, :-1] = am[:, :-1] & am[:, 1:]  # the last position predicts nothing
        return out


class PooledCosineLoss:
    """For embedding models: Σ_b (1 − cos(pool_b, target_b)), pool_b the attention-masked
    mean of the last hidden state of context b.

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
        self, output: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
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

    def counted(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return attention_mask.bool()


def _leaf(t: torch.Tensor, store: dict[str, torch.Tensor]) -> torch.Tensor:
    # Autograd starts here: everything computed before this point stays unrecorded.
    torch.set_grad_enabled(True)
    leaf = t.detach().requires_grad_(True)
    store["x"] = leaf
    return leaf


def _install_leaf(
    module: nn.Module, which: Which, store: dict[str, torch.Tensor]
) -> torch.utils.hooks.RemovableHandle:
    def output_hook(_m: nn.Module, _a: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return _leaf(output, store)
        if isinstance(output, tuple) and isinstance(output[0], torch.Tensor):
            return (_leaf(output[0], store), *output[1:])
        raise TypeError(f"hookpoint output is {type(output).__name__}, not a tensor")

    def input_hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args and isinstance(args[0], torch.Tensor):
            return (_leaf(args[0], store), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": _leaf(kwargs["hidden_states"], store)}
        raise TypeError("hookpoint input has no tensor argument")

    if which == "output":
        return module.register_forward_hook(output_hook)
    if which == "input":
        return module.register_forward_pre_hook(input_hook, with_kwargs=True)
    raise ValueError(f"which must be 'output' or 'input', got {which!r}")


def capture_gradients(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    hookpoint: str,
    which: Which = "output",
    loss: DownstreamLoss | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation x and g = ∂loss/∂x at ``hookpoint``, from one forward and one backward.

    input_ids, attention_mask: [batch, seq]. loss: default `NextTokenCE()`.
    Returns (x, g), both [batch, seq, d] float32 on the model's device; g is zero wherever
    ``loss.counted`` is False.
    """
    loss = loss or NextTokenCE()
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    store: dict[str, torch.Tensor] = {}
    handle = _install_leaf(get_module(model, hookpoint), which, store)
    grad_mode = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(False)
        output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if "x" not in store:
            raise RuntimeError(f"hookpoint {hookpoint!r} did not run during the forward pass")
        value = loss(output, input_ids, attention_mask)
        if not value.requires_grad:
            raise RuntimeError(f"the {loss.name} loss does not depend on {hookpoint!r}")
        (grad,) = torch.autograd.grad(value, store["x"], allow_unused=True)
    finally:
        torch.set_grad_enabled(grad_mode)
        handle.remove()
    x = store["x"].detach().float()
    grad = torch.zeros_like(x) if grad is None else grad.float()
    counted = loss.counted(input_ids, attention_mask).to(grad.device)
    return x, grad * counted.unsqueeze(-1)


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
        act, grad = capture_gradients(self.model, ids, am, self.hookpoint, self.which, self.loss)
        act, grad = act.cpu(), grad.cpu()
        mask = self._mask(sub, act)
        return torch.cat([act[mask], grad[mask]], dim=-1).float()

    def __iter__(self) -> Iterator[Batch]:
        d = self.d_in
        for batch in super().__iter__():
            yield Batch(batch.x[:, :d], {"grad": batch.x[:, d:]})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gradient": {"loss": self.loss.name, "reduction": "sum"}}


def open_gradient_stream(
    spec: str,
    batch_size: int,
    seed: int = 0,
    split: str = "train",
    corpus: str = "default",
    n_contexts: int = 2048,
    ctx_len: int = 128,
    loss: DownstreamLoss | None = None,
    **kwargs: Any,
) -> GradientModelStream:
    """``"<model>[@<hookpoint>]"`` -> GradientModelStream (as `open_model_stream`)."""
    return open_model_stream(
        spec, batch_size, seed, split, corpus, n_contexts, ctx_len,
        stream_class=GradientModelStream, loss=loss, **kwargs,
    )  # fmt: skip


def open_eval_stream(
    spec: str, batch_size: int, seed: int = 0, with_grad: bool = False, split: str = "eval"
) -> Any:
    """`saekit.data.open_stream`, except that ``with_grad`` turns a ``model:`` spec into a
    GradientModelStream (caches carry "grad" when written with --with-grad; synthetic
    recipes such as "readout" attach it themselves)."""
    from saekit.data import open_stream

    kind, _, rest = spec.partition(":")
    if with_grad and kind == "model":
        return open_gradient_stream(rest or "default", batch_size, seed, split=split)
    return open_stream(spec, batch_size=batch_size, seed=seed, split=split)


__all__ = [
    "DownstreamLoss",
    "GradientModelStream",
    "NextTokenCE",
    "PooledCosineLoss",
    "capture_gradients",
    "open_eval_stream",
    "open_gradient_stream",
]
