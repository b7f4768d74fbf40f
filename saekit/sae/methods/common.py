"""What encoder-based architectures share: the transcoder options and the standard parts."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.options import option
from saekit.sae.base import SAEConfig
from saekit.sae.dictionary import Dictionary
from saekit.sae.encoders import LinearEncoder, Skip


@dataclass
class EncoderConfig(SAEConfig):
    """The transcoder options (Dunefsky et al. 2024, arXiv 2406.11944)."""

    transcode: bool = option(
        False,
        "reconstruct the stream's paired target (e.g. an MLP's output) from the input instead "
        "of the input itself; the encoder then sees the raw input",
    )
    d_out: int | None = option(None, "the target's width (default d_in)", lo=1)
    skip: bool = option(False, "add a linear skip path x W_skip (skip transcoder)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.transcode and (self.skip or self.d_out not in (None, self.d_in)):
            raise ValueError("skip and d_out are transcoder options: set transcode=true")
        if self.d_out is not None and self.d_out < 1:
            raise ValueError(f"d_out must be >= 1, got {self.d_out}")


@dataclass
class AuxKConfig(SAEConfig):
    """AuxK on dead latents (Gao et al. 2024, arXiv 2406.04093)."""

    k_aux: int | None = option(
        None,
        "dead latents the AuxK term reconstructs the residual with (default d_in // 2, as "
        "sparsify, SAELens and dictionary_learning)",
        lo=1,
    )
    aux_coeff: float = option(1 / 32, "weight of the AuxK dead-latent term")


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
