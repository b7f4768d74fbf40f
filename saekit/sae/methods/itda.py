"""ITDA: inference-time decomposition of activations (Leask, Nanda, Al Moubayed 2025, arXiv
2505.17769 alg. 1). No gradient training: the dictionary is made of stored activations.

Each training batch is encoded by a k-step matching pursuit over the current atoms (the
MP-SAE pursuit and its kernels; classic signed MP by default, as in the paper). A token whose
pursuit error ‖x − x̂‖² divided by the batch's mean ‖x − x̄‖² exceeds `loss_threshold` (τ) is
appended, centred and normalised, as a new atom, until `n_latents` atoms exist. τ, not the
width, sets how large the dictionary grows; `n_latents` is a cap. b_dec is set from the data
by the trainer (the activations' geometric median, subtracted before the pursuit) and not
trained. Saved files hold only the atoms found; `atom_token` records which training token
(index in the stream) each atom came from, and `tokens_seen` the token budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from saekit.options import option
from saekit.sae.dictionary import Dictionary
from saekit.sae.losses import Reconstruction
from saekit.sae.methods.mpsae import SIGN_HELP, PursuitOptions
from saekit.sae.pursuit import SIGNS
from saekit.sae.registry import Composition, architecture
from saekit.sae.selectors import MatchingPursuit
from saekit.sae.sparse import SparseCode


@dataclass
class ITDAConfig(PursuitOptions):
    """n_latents: the cap on atoms; n_steps: pursuit steps k."""

    sign: str = option("abs", SIGN_HELP, choices=SIGNS)
    loss_threshold: float = option(
        0.2, "ITDA: τ, a token becomes an atom when its pursuit error exceeds it", lo=0
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.loss_threshold > 0:
            raise ValueError(f"loss_threshold must be > 0, got {self.loss_threshold}")


class GrowingDictionary(Dictionary):
    """Atoms appended from the data; never optimised."""

    def __init__(self) -> None:
        super().__init__(learn_bias=False, bias_from_data=True, trainable=False)

    def attach(self, sae, atoms, gen):
        super().attach(sae, atoms, gen)
        with torch.no_grad():
            sae.W_dec.zero_()
        sae.register_buffer("n_atoms", torch.tensor(0))
        sae.register_buffer("atom_token", torch.full((atoms.shape[0],), -1))
        sae.register_buffer("tokens_seen", torch.tensor(0))

    @torch.no_grad()
    def observe(self, sae, fwd, stats):
        """Append the badly reconstructed tokens of this batch as atoms."""
        err = (fwd.target - fwd.x_hat).pow(2).sum(-1)
        variance = (fwd.target - fwd.target.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        candidates = fwd.x_centered
        norms = candidates.norm(dim=-1)
        add = ((err / variance > sae.cfg.loss_threshold) & (norms > 0)).nonzero().squeeze(1)
        n = int(sae.n_atoms)
        add = add[: sae.n_latents - n]
        sae.W_dec[n : n + add.numel()] = candidates[add] / norms[add, None]
        sae.atom_token[n : n + add.numel()] = sae.tokens_seen + add
        sae.n_atoms += add.numel()
        sae.tokens_seen += fwd.x.shape[0]
        stats["n_atoms"] = float(sae.n_atoms)

    @torch.no_grad()
    def compact(self, sae):
        n = int(sae.n_atoms)
        sae.W_dec = nn.Parameter(sae.W_dec[:n].clone(), requires_grad=False)
        sae.atom_token = sae.atom_token[:n].clone()
        sae.cfg.n_latents = n


class ITDAPursuit(MatchingPursuit):
    """Matching pursuit over the atoms found so far."""

    def atoms(self, sae) -> torch.Tensor:
        return sae.W_dec[: int(sae.n_atoms)]

    def select(self, sae, x_centered, pre, extras, training=False, **knobs):
        if int(sae.n_atoms) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=x_centered.device)
            batch = x_centered.shape[0]
            zeros = x_centered.new_zeros(batch, sae.d_out)
            steps = torch.zeros(batch, dtype=torch.long, device=x_centered.device)
            return SparseCode(
                empty, empty, x_centered.new_zeros(0), batch, sae.n_latents, zeros,
                {"pursuit_steps": steps},
            )  # fmt: skip
        return super().select(sae, x_centered, pre, extras, training, **knobs)

    def compact(self, sae):
        self._gram = None


@architecture("itda", ITDAConfig)
def itda(cfg: ITDAConfig) -> Composition:
    """Atoms are stored activations, added when a k-step pursuit misses them by more than τ;
    no optimiser."""
    return Composition(GrowingDictionary(), None, ITDAPursuit(cfg.sign), losses=[Reconstruction()])
