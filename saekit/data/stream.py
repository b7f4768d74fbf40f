"""The activation-stream protocol every data source implements.

A stream yields `Batch`es of activations `x` [batch, d_in] (plus optional extras such as the
true codes of a synthetic recipe or the downstream-loss gradient for g-SAE). Streams are
resumable: `state_dict()` records the position so an interrupted run restarts on exactly
the next batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


def seeded_generator(*parts: Any) -> torch.Generator:
    """A generator seeded by a hash of ``parts`` (seed, epoch, chunk, ...): a stream's
    shuffles are pure functions of its position, which makes resuming exact."""
    key = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "big") >> 1)


@dataclass
class Batch:
    """One training batch.

    x: activations [batch, d_in], float32.
    extras: optional per-token tensors sharing the batch dimension, by name:
      "codes" true feature codes [batch, n_features] (synthetic recipes),
      "grad" downstream-loss gradient w.r.t. x [batch, d_in] (g-SAE),
      "target" a different reconstruction target [batch, d_out] (transcoders).
    """

    x: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]


@runtime_checkable
class ActivationStream(Protocol):
    """What the trainer and the evaluators consume."""

    d_in: int
    batch_size: int

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (and anything else needed to resume exactly)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Provenance written into saved SAEs (source, model, hookpoint, recipe, seed...)."""
        ...


class TensorStream:
    """Batches from an in-memory tensor, reshuffled every epoch with a seeded permutation."""

    def __init__(
        self,
        x: torch.Tensor,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        extras: dict[str, torch.Tensor] | None = None,
        loop: bool = True,
        description: dict[str, Any] | None = None,
    ):
        if x.ndim != 2:
            raise ValueError(f"expected activations of shape [tokens, d_in], got {tuple(x.shape)}")
        self.x = x
        self.extras = extras or {}
        self.d_in = x.shape[1]
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.loop = loop
        self.position = 0  # batches yielded so far, across epochs
        self._description = description or {"source": "tensor", "tokens": x.shape[0]}

    def _batches_per_epoch(self) -> int:
        return max(1, self.x.shape[0] // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.x.shape[0])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.x.shape[0], generator=gen)

    def __iter__(self) -> Iterator[Batch]:
        per_epoch = self._batches_per_epoch()
        while True:
            epoch, offset = divmod(self.position, per_epoch)
            if epoch > 0 and not self.loop:
                return
            order = self._order(epoch)
            idx = order[offset * self.batch_size : (offset + 1) * self.batch_size]
            self.position += 1
            yield Batch(self.x[idx], {k: v[idx] for k, v in self.extras.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])

    def describe(self) -> dict[str, Any]:
        return dict(self._description)
