"""Architectures (methods): each module is a config dataclass plus a composition of parts, registered
by name. Importing a module registers it."""

from saekit.sae.methods import (  # noqa: F401
    abstopk,
    batchtopk,
    feature_choice,
    gated,
    gsae,
    itda,
    jumprelu,
    matryoshka,
    mpsae,
    relu,
    topafa,
    topk,
    transcoder,
)
