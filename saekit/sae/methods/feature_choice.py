"""Feature Choice and Mutual Choice (Ayonrinde 2024, arXiv 2411.02124), with aux_zipf.

Feature Choice: each latent takes its top-m_i tokens of the batch (selectors/
feature_choice.py); inference uses a learned threshold per latent. Mutual Choice: the global
top-(k·batch), the BatchTopK rule, with one learned threshold at inference. Both add the
aux_zipf term (losses/aux_zipf.py) for under-used latents.
"""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.base import SAEConfig
from saekit.sae.losses import AuxZipf, Reconstruction
from saekit.sae.methods.batchtopk import BatchTopKConfig
from saekit.sae.methods.common import linear_parts
from saekit.sae.methods.topk import TopKConfig
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import BatchTopK, FeatureChoice
from saekit.sae.selectors.feature_choice import CAPACITIES


@dataclass
class AuxZipfOptions(SAEConfig):
    aux_zipf_coeff: float = option(1 / 32, "weight of the aux_zipf term")
    zipf_tail: float = option(0.2, "fraction of the rarest latents left out of the Zipf fit")
    zipf_slack: float = option(
        0.1, "a latent is dying below this fraction of its fitted Zipf density"
    )
    density_ema: float = option(0.01, "rate of the running latent densities", lo=0, hi=1)


@dataclass
class FeatureChoiceConfig(TopKConfig, AuxZipfOptions):
    """k: average latents per token (the capacities sum to k·batch)."""

    capacity: str = option(
        "uniform",
        "latent capacities: uniform, or zipf with m_i ∝ (rank_i + zipf_b)^−zipf_a",
        choices=CAPACITIES,
    )
    zipf_a: float = option(1.0, "exponent of the Zipf capacities")
    zipf_b: float = option(1.0, "rank offset of the Zipf capacities")
    threshold_ema: float = option(
        0.01, "rate of the per-latent inference thresholds' running estimate", lo=0, hi=1
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.capacity not in CAPACITIES:
            raise ValueError(f"capacity must be one of {CAPACITIES}, got {self.capacity!r}")


@dataclass
class MutualChoiceConfig(BatchTopKConfig, AuxZipfOptions):
    pass


@architecture("feature_choice", FeatureChoiceConfig)
def feature_choice(cfg: FeatureChoiceConfig) -> Composition:
    """Each latent takes its top-m_i tokens per batch (uniform or Zipf capacities); per-latent
    thresholds at inference; aux_zipf."""
    return Composition(
        **linear_parts(cfg), selector=FeatureChoice(), losses=[Reconstruction(), AuxZipf()]
    )


@architecture("mutual_choice", MutualChoiceConfig)
def mutual_choice(cfg: MutualChoiceConfig) -> Composition:
    """Global top-(k·batch) per batch (= BatchTopK); one threshold at inference; aux_zipf."""
    return Composition(
        **linear_parts(cfg), selector=BatchTopK(), losses=[Reconstruction(), AuxZipf()]
    )
