"""AbsTopK: the k pre-activations largest in magnitude, signs kept, no ReLU (Zhu, Khalili,
Zhu 2025, arXiv 2510.00404): the proximal step of an ℓ0-ball constraint without the
non-negativity that splits a bipolar concept into two latents."""

from __future__ import annotations

from saekit.sae.selectors.base import Selector, knob, require_pre, topk_code


class AbsTopK(Selector):
    """f = π ⊙ 1[i among the k largest |π_i|]."""

    knobs = ("k",)
    signed = True

    def select(self, sae, x_centered, pre, extras, training=False, k=None):
        pre = require_pre(pre, self)
        k = int(knob(k, sae.cfg.k))
        return topk_code(pre, pre.detached.abs(), k, sae.n_latents, signed=True)
