"""Matryoshka BatchTopK (Bussmann, Nabeshima, Karvonen, Nanda 2025, arXiv 2503.17547)."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.losses import AuxK, MatryoshkaPrefixes
from saekit.sae.methods.batchtopk import BatchTopKConfig
from saekit.sae.methods.common import linear_parts
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import BatchTopK


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    group_sizes: list[int] | None = option(
        None,
        "sizes of the nested groups, summing to n_latents (default: fractions 1/16, 1/16, "
        "1/8, 1/4 and the rest, the ratios of the reference recipe)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_sizes is None:
            n = self.n_latents
            first = [max(1, n // 16), max(1, n // 16), max(1, n // 8), max(1, n // 4)]
            self.group_sizes = [*first, n - sum(first)]
        if sum(self.group_sizes) != self.n_latents or min(self.group_sizes) < 1:
            raise ValueError(
                f"group_sizes {self.group_sizes} must be positive and sum to n_latents={self.n_latents}"
            )


@architecture("matryoshka", MatryoshkaConfig)
def matryoshka(cfg: MatryoshkaConfig) -> Composition:
    """BatchTopK with nested prefix losses; mean of prefix losses + AuxK."""
    return Composition(
        **linear_parts(cfg), selector=BatchTopK(), losses=[MatryoshkaPrefixes(), AuxK()]
    )
