"""What encoder-based architectures share: the transcoder options and the standard parts."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.sae.base import SAEConfig
from saekit.sae.dictionary import Dictionary
from saekit.sae.encoders import LinearEncoder, Skip


@dataclass
class EncoderConfig(SAEConfig):
    """transcode: reconstruct the stream's paired target (extras["target"], e.g. an MLP's
    output) from the input instead of the input itself (Dunefsky et al. 2024, arXiv
    2406.11944); the encoder then sees the raw input. d_out: the target's width (default
    d_in). skip: add a linear skip path x W_skip (skip transcoder)."""

    transcode: bool = False
    d_out: int | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.transcode and (self.skip or self.d_out not in (None, self.d_in)):
            raise ValueError("skip and d_out are transcoder options: set transcode=true")
        if self.d_out is not None and self.d_out < 1:
            raise ValueError(f"d_out must be >= 1, got {self.d_out}")


@dataclass
class AuxKConfig:
    """AuxK on dead latents: k_aux (default d_in // 2) and its weight."""

    k_aux: int | None = None
    aux_coeff: float = 1 / 32


def linear_parts(cfg: EncoderConfig, unit_norm: bool = True, init_norm: float = 1.0) -> dict:
    """Dictionary, linear encoder and (for skip transcoders) the skip path."""
    return {
        "dictionary": Dictionary(unit_norm, init_norm, d_out=cfg.d_out if cfg.transcode else None),
        "encoder": LinearEncoder(init_norm, centre_input=not cfg.transcode),
        "skip": Skip(cfg.d_out) if cfg.skip else None,
    }


def check_k(k: int, n_latents: int) -> None:
    if not 0 < k <= n_latents:
        raise ValueError(f"k must be in [1, n_latents={n_latents}], got {k}")
