"""The gate of a Gated SAE (Rajamanoharan et al. 2024a, arXiv 2404.16014 eq. 6): which
latents fire is decided by the gate path, how much by the magnitude path,
f = 1[π_gate > 0] ⊙ ReLU(π_mag)."""

from __future__ import annotations

from saekit.sae.selectors.base import Selector, require_pre


class Gate(Selector):
    def select(self, sae, x_centered, pre, extras, training=False):
        pre = require_pre(pre, self)
        fires = pre.full() > 0  # Heaviside: no gradient reaches the gate through the code
        return fires * pre.magnitude().relu()
