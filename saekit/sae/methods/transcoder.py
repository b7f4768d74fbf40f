"""Transcoders (Dunefsky, Chlenski, Nanda 2024, arXiv 2406.11944) and skip transcoders
(Paulo, Shabalin, Belrose 2025, arXiv 2501.18823): predict a module's output (the stream's
extras["target"]) from its input.

These names are TopK transcoders. Any other encoder architecture becomes a transcoder with
`-o transcode=true` (and `skip=true`): `-a jumprelu -o transcode=true,target_l0=32`.
"""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.losses import AuxK, Reconstruction
from saekit.sae.methods.common import linear_parts
from saekit.sae.methods.topk import TopKConfig
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import TopK


@dataclass
class TranscoderConfig(TopKConfig):
    transcode: bool = option(True, "reconstruct the stream's paired target from the input")


@dataclass
class SkipTranscoderConfig(TranscoderConfig):
    skip: bool = option(True, "add a linear skip path x W_skip (skip transcoder)")


def _topk_transcoder(cfg: TopKConfig) -> Composition:
    if not cfg.transcode:
        raise ValueError("a transcoder needs transcode=true")
    return Composition(**linear_parts(cfg), selector=TopK(), losses=[Reconstruction(), AuxK()])


@architecture("transcoder", TranscoderConfig)
def transcoder(cfg: TranscoderConfig) -> Composition:
    """TopK transcoder: ŷ = TopK(W_enc x + b_enc) W_dec + b_dec predicts the paired target."""
    return _topk_transcoder(cfg)


@architecture("skip_transcoder", SkipTranscoderConfig)
def skip_transcoder(cfg: SkipTranscoderConfig) -> Composition:
    """TopK transcoder plus a linear skip path x W_skip."""
    return _topk_transcoder(cfg)
