"""Loss terms, one module each (see base.py)."""

from saekit.sae.losses.aux_zipf import AuxZipf
from saekit.sae.losses.auxk import AuxK, auxk_loss, default_k_aux
from saekit.sae.losses.base import LossTerm, reconstruction_loss
from saekit.sae.losses.gated import GatedAuxiliary
from saekit.sae.losses.l0 import L0
from saekit.sae.losses.l1 import L1
from saekit.sae.losses.matryoshka import MatryoshkaPrefixes
from saekit.sae.losses.norm_matching import NormMatchingLoss
from saekit.sae.losses.reconstruction import Reconstruction

__all__ = [
    "AuxK",
    "AuxZipf",
    "GatedAuxiliary",
    "L0",
    "L1",
    "LossTerm",
    "MatryoshkaPrefixes",
    "NormMatchingLoss",
    "Reconstruction",
    "auxk_loss",
    "default_k_aux",
    "reconstruction_loss",
]
