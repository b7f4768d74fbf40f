"""Selectors: how the sparse code is chosen, one module per rule (see base.py)."""

from saekit.sae.selectors.abstopk import AbsTopK
from saekit.sae.selectors.base import Selector
from saekit.sae.selectors.batchtopk import BatchTopK
from saekit.sae.selectors.feature_choice import FeatureChoice
from saekit.sae.selectors.gate import Gate
from saekit.sae.selectors.gradient import GradientTopK
from saekit.sae.selectors.jumprelu import JumpReLU
from saekit.sae.selectors.matching_pursuit import MatchingPursuit
from saekit.sae.selectors.norm_matching import NormMatching
from saekit.sae.selectors.relu import ReLU
from saekit.sae.selectors.topk import TopK

__all__ = [
    "AbsTopK",
    "BatchTopK",
    "FeatureChoice",
    "Gate",
    "GradientTopK",
    "JumpReLU",
    "MatchingPursuit",
    "NormMatching",
    "ReLU",
    "Selector",
    "TopK",
]
