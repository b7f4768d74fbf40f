"""BatchTopK (Bussmann, Leask, Nanda 2024, arXiv 2412.06410)."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.losses import AuxK, Reconstruction
from saekit.sae.methods.common import linear_parts
from saekit.sae.methods.topk import TopKConfig
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import BatchTopK


@dataclass
class BatchTopKConfig(TopKConfig):
    threshold_ema: float = option(
        0.01,
        "EMA rate of the inference threshold, tracked as the smallest kept training activation",
        lo=0,
        hi=1,
    )


@architecture("batchtopk", BatchTopKConfig)
def batchtopk(cfg: BatchTopKConfig) -> Composition:
    """Top-(k·batch) over the batch in training; one threshold at inference; AuxK."""
    return Composition(**linear_parts(cfg), selector=BatchTopK(), losses=[Reconstruction(), AuxK()])
