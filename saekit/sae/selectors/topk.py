"""TopK: each token keeps its k largest pre-activations, ReLU'd (Gao et al. 2024, arXiv
2406.04093 eq. 2; Makhzani & Frey 2013)."""

from __future__ import annotations

from saekit.sae.selectors.base import Selector, knob, require_pre, topk_code


class TopK(Selector):
    """f = ReLU(TopK_k(π)). k: fixed here, else the config's k; the knob overrides both."""

    knobs = ("k",)

    def __init__(self, k: int | None = None):
        self.k = k

    def select(self, sae, x_centered, pre, extras, training=False, k=None):
        pre = require_pre(pre, self)
        k = knob(k, knob(self.k, getattr(sae.cfg, "k", None)))
        if k is None:
            raise ValueError("TopK needs k (none fixed, none in the config)")
        return topk_code(pre, pre.detached, int(k), sae.n_latents)
