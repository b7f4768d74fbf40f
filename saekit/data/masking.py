"""Which tokens are activations: one rule for capture, caches, streams and gradient capture.

A token is kept unless it is
- padding (attention_mask == 0);
- a special token (BOS, EOS, PAD and the tokenizer's other special ids, as
  `TokenizedCorpus.special_ids` lists them);
- the first attended position of its row: a massive-activation sink on SmolLM2 and Gemma-3
  even without BOS (35-160x the median norm);
- with ``max_norm_factor``, a norm outlier: a token whose norm exceeds factor x the median
  norm of the tokens still kept (the same sinks at other positions; one of them dominates
  any MSE).

The next-token predictions that count (`predictions`) are those made at kept tokens whose
next token is attended: spliced CE scores them, and the g-SAE gradient differentiates their
summed cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def token_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    special_ids: Sequence[int] = (),
    exclude_first: bool = True,
    activations: torch.Tensor | None = None,
    max_norm_factor: float | None = None,
) -> torch.Tensor:
    """[batch, seq] bool, True = keep (module docstring). ``activations`` [batch, seq, d]
    are needed for the norm outliers only."""
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        keep &= attention_mask.bool()
    if special_ids:
        ids = torch.tensor(sorted(set(special_ids)), device=input_ids.device)
        keep &= ~torch.isin(input_ids, ids)
    if exclude_first:
        attended = attention_mask.bool() if attention_mask is not None else torch.ones_like(keep)
        # argmax of a bool row = first True: the first real token also under left padding.
        first = attended.long().argmax(dim=1)
        keep[torch.arange(keep.shape[0], device=keep.device), first] = False
    if max_norm_factor is not None and activations is not None:
        keep &= _within_norm(activations, keep, max_norm_factor)
    return keep


def _within_norm(activations: torch.Tensor, keep: torch.Tensor, factor: float) -> torch.Tensor:
    """Tokens whose norm is at most factor x the median norm of the ``keep`` tokens."""
    if not keep.any():
        return keep
    norms = activations.float().norm(dim=-1)
    return norms <= factor * norms[keep].median()


def predictions(keep: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[batch, seq] bool: the kept positions whose next token is attended, i.e. whose
    next-token prediction counts. The last position predicts nothing."""
    out = torch.zeros_like(keep)
    out[:, :-1] = keep[:, :-1]
    if attention_mask is not None:
        out[:, :-1] &= attention_mask[:, 1:].bool()
    return out


@dataclass(frozen=True)
class Masking:
    """The masking settings of a capture, a cache or a stream (module docstring).
    `DEFAULT_MASKING` is the default of every function and class that takes one."""

    exclude_first: bool = True
    max_norm_factor: float | None = None

    def keep(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        special_ids: Sequence[int],
        activations: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """[batch, seq] bool, True = keep. ``activations``: [batch, seq, d] tensors of the
        same tokens; a norm outlier in any of them (a pair's source or target) drops the
        token."""
        keep = token_mask(input_ids, attention_mask, special_ids, self.exclude_first)
        if self.max_norm_factor is not None:
            base = keep.clone()  # every tensor's median is over the same tokens
            for act in activations:
                keep &= _within_norm(act, base, self.max_norm_factor)
        return keep

    def describe(self) -> dict[str, Any]:
        """Provenance for cache manifests and stream descriptions."""
        return {
            "exclude_first": self.exclude_first,
            "max_norm_factor": self.max_norm_factor,
            "special_tokens": "bos/eos/pad and all_special_ids of the tokenizer",
        }


DEFAULT_MASKING = Masking()
