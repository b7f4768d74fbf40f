"""ReLU: every positive pre-activation is kept (sparsity comes from an L1 penalty)."""

from __future__ import annotations

from saekit.sae.selectors.base import Selector, require_pre


class ReLU(Selector):
    """f = ReLU(π)."""

    def select(self, sae, x_centered, pre, extras, training=False):
        return require_pre(pre, self).full().relu()
