"""L1 weighted by atom norms (Anthropic, "Circuits Updates – April 2024"): λ Σ_i f_i ‖d_i‖,
with λ warmed up from 0. The norm weighting makes the penalty invariant to moving scale
between a latent and its atom, so free atom norms cannot cheat it."""

from __future__ import annotations

from saekit.sae.losses.base import LossTerm, warmed_up


class L1(LossTerm):
    """on="codes": the code itself (ReLU SAE); on="gate": ReLU(π_gate) (Gated SAE, whose
    magnitude path is left unpenalised). Config: l1_coeff, l1_warmup."""

    def __init__(self, on: str = "codes"):
        self.on = on

    def compute(self, sae, fwd, stats):
        coeff = warmed_up(sae.cfg.l1_coeff, fwd.ctx.progress, sae.cfg.l1_warmup)
        acts = fwd.code if self.on == "codes" else fwd.pre.full().relu()
        stats["l1_coeff"] = coeff
        return {"l1": coeff * (acts * sae.W_dec.norm(dim=-1)).sum(-1).mean()}
