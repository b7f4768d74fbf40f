"""The selector protocol: how the sparse code is chosen.

One signature for every method: `select(sae, x_centered, pre, extras, training, **knobs)`
takes the encoder's pre-activations (None for pursuit coders, which work on the centred
input and the dictionary), the per-token extras and the inference knobs, and returns the code:
a `SparseCode` (values carry gradient at the kept entries only) or a dense
[batch, n_latents] tensor (coders whose every entry can be non-zero: ReLU, JumpReLU, Gated).

`training` selects the training rule where it differs from inference (BatchTopK, Feature
Choice: batch-level rules in training, learned thresholds at inference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from saekit.sae.base import Part
from saekit.sae.sparse import SparseCode, from_topk, row_topk

if TYPE_CHECKING:
    from saekit.sae.base import SAE
    from saekit.sae.encoders import PreActivations


class Selector(Part):
    """Base selector. Subclasses declare their inference `knobs` (read by evaluation and the
    CLI instead of checking classes), the per-token `needs_extras`, and whether codes may be
    negative (`signed`)."""

    knobs: ClassVar[tuple[str, ...]] = ()
    needs_extras: tuple[str, ...] = ()
    signed: bool = False

    def select(
        self,
        sae: SAE,
        x_centered: torch.Tensor,
        pre: PreActivations | None,
        extras: Mapping[str, torch.Tensor],
        training: bool = False,
        **knobs: Any,
    ) -> SparseCode | torch.Tensor:
        raise NotImplementedError

    def extras_needed(self, sae: SAE, training: bool) -> tuple[str, ...]:
        """The extras a pass needs (inference may need fewer than training)."""
        return self.needs_extras

    def missing_extras_message(self, missing: list[str]) -> str:
        return f"{type(self).__name__} needs per-token extras: {', '.join(missing)}"


def require_pre(pre: PreActivations | None, selector: Selector) -> PreActivations:
    if pre is None:
        raise ValueError(f"{type(selector).__name__} selects from an encoder's pre-activations")
    return pre


def code_at(
    pre: PreActivations, rows: torch.Tensor, cols: torch.Tensor, batch: int, n_latents: int,
    signed: bool = False, stats: dict[str, torch.Tensor] | None = None,
    known: torch.Tensor | None = None,
) -> SparseCode:  # fmt: skip
    """The code with pre-activations kept at (rows, cols), ReLU'd unless signed. known: their
    values without gradient, when the selection already read them."""
    values = pre.at(rows, cols, known)
    if not signed:
        values = values.relu()
    return SparseCode(rows, cols, values, batch, n_latents, stats=stats or {})


def topk_code(
    pre: PreActivations, scores: torch.Tensor, k: int, n_latents: int, signed: bool = False
) -> SparseCode:
    """Keep each row's k largest `scores` [batch, n_latents] (no gradient)."""
    top, indices = row_topk(scores, k)
    rows, cols = from_topk(indices, n_latents)
    known = top.reshape(-1) if scores is pre.detached else None
    return code_at(pre, rows, cols, scores.shape[0], n_latents, signed, known=known)


def knob(value: Any, default: Any) -> Any:
    return default if value is None else value
