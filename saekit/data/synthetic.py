"""Synthetic activations with a known dictionary and known codes (docs/evaluation.md#recipes).

A recipe owns the true dictionary G [n_features, d_in] (unit rows) and samples codes
a [n, n_features]; the activations are x = a G (no bias, no noise). Recipes:

- `superposition`: Sharkey et al. 2022 toy superposition (docs/evaluation.md#recipe-superposition).
- `correlated`: `superposition` with per-sample correlated firing through a Gaussian copula.
- `tree`: the MP-SAE 20-feature hierarchy with conditional orthogonality.

`make_recipe("tree:rho=0.3", seed)` builds one from a spec string; `SyntheticStream` turns a
recipe into a resumable `ActivationStream`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.optimize import brentq

from saekit.data.stream import Batch


class SyntheticRecipe:
    """Base class: a fixed true dictionary plus a code sampler.

    Attributes:
      name: registry name used by `make_recipe`.
      dictionary: true feature directions [n_features, d_in], float32, unit rows.
      parents: [n_features] int64, index of each feature's parent (-1 for none); None for
        recipes without a hierarchy.
      seed: the seed the dictionary (and any other fixed randomness) was drawn from.
    """

    name: ClassVar[str] = ""
    # Option name -> type, for parsing spec strings ("superposition:k_avg=4").
    options: ClassVar[dict[str, type]] = {}

    dictionary: torch.Tensor
    parents: torch.Tensor | None = None

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    @property
    def n_features(self) -> int:
        return self.dictionary.shape[0]

    @property
    def d_in(self) -> int:
        return self.dictionary.shape[1]

    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """True codes [n, n_features], float32. Implemented by each recipe."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n samples: activations x [n, d_in] and true codes [n, n_features], float32.
        The generator is required so that no caller silently reuses one default seed."""
        if n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n}")
        codes = self.sample_codes(n, generator)
        return codes @ self.dictionary, codes

    def params(self) -> dict[str, Any]:
        """The recipe's own parameters (JSON-able). Extended by each recipe."""
        return {}

    def extras(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample tensors beyond the codes that the stream attaches to each Batch
        (e.g. "grad" for g-SAE). Default: none."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Every parameter needed to rebuild the recipe, JSON-able."""
        return {
            "recipe": self.name,
            "seed": self.seed,
            "n_features": self.n_features,
            "d_in": self.d_in,
            **self.params(),
        }


def random_unit_rows(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """[n, d] Gaussian rows normalised to unit length, float32."""
    rows = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return (rows / rows.norm(dim=-1, keepdim=True)).float()


# ---- recipe A: toy superposition --------------------------------------------------------


class SuperpositionRecipe(SyntheticRecipe):
    """Sharkey et al. 2022 toy superposition (docs/evaluation.md#recipe-superposition).

    Directions: n_features Gaussian vectors in d_in dimensions, normalised.
    Firing: feature j fires independently with probability p_j = c · decay^j, where c is
    chosen so that sum_j p_j = k_avg, i.e. the expected L0 is exactly k_avg. (Sharkey et al.
    use c = k_avg / n_features, whose expected L0 is below k_avg; we rescale instead.)
    Values: an active feature takes a value drawn from U[0, 1].
    """

    name = "superposition"
    options = {"n_features": int, "d_in": int, "k_avg": float, "decay": float}

    def __init__(
        self,
        n_features: int = 512,
        d_in: int = 64,
        k_avg: float = 5.0,
        decay: float = 0.99,
        seed: int = 0,
    ):
        super().__init__(seed)
        if n_features < 1 or d_in < 1:
            raise ValueError(f"need n_features >= 1 and d_in >= 1, got {n_features}, {d_in}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if not 0 < k_avg <= n_features:
            raise ValueError(f"k_avg must be in (0, n_features={n_features}], got {k_avg}")
        self.k_avg = float(k_avg)
        self.decay = float(decay)
        powers = decay ** torch.arange(n_features, dtype=torch.float64)
        self.probabilities = (k_avg * powers / powers.sum()).float()  # [n_features]
        if self.probabilities.max() > 1:
            raise ValueError(
                f"k_avg={k_avg} is too large for n_features={n_features}, decay={decay}: "
                f"the most frequent feature would need probability "
                f"{self.probabilities.max():.3f} > 1"
            )
        self._generator = torch.Generator().manual_seed(self.seed)
        self.dictionary = random_unit_rows(n_features, d_in, self._generator)

    def firing_mask(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, n_features] bool: independent Bernoulli(p_j) firing."""
        return torch.rand(n, self.n_features, generator=generator) < self.probabilities

    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        active = self.firing_mask(n, generator)
        values = torch.rand(n, self.n_features, generator=generator)
        return values * active

    def params(self) -> dict[str, Any]:
        return {"k_avg": self.k_avg, "decay": self.decay, "values": "uniform[0,1]"}


class CorrelatedRecipe(SuperpositionRecipe):
    """`superposition` with per-sample correlated firing through a Gaussian copula
    (docs/evaluation.md#recipe-correlated; Chanin, Garriga-Alonso 2026, arXiv:2602.14687).

    A low-rank factor F [n_features, rank] with entries scale·N(0, 1) and a diagonal
    δ = 1 − rowsum(F²) (floored at 0.01) define, per sample, z = F ε₁ + √δ ⊙ ε₂. Feature j
    fires iff z_j / σ_j > Φ⁻¹(1 − p_j), σ_j² = rowsum(F²)_j + δ_j; dividing by σ_j keeps every
    marginal firing rate at p_j (and the expected L0 at k_avg) even where δ was floored.
    The dictionary equals the `superposition` one for the same parameters and seed.
    """

    name = "correlated"
    options = {**SuperpositionRecipe.options, "rank": int, "scale": float}

    def __init__(
        self,
        n_features: int = 512,
        d_in: int = 64,
        k_avg: float = 5.0,
        decay: float = 0.99,
        rank: int = 25,
        scale: float = 0.1,
        seed: int = 0,
    ):
        super().__init__(n_features, d_in, k_avg, decay, seed)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.rank = int(rank)
        self.scale = float(scale)
        # Drawn after the dictionary from the same generator: the dictionary stays the same.
        self.factor = scale * torch.randn(n_features, rank, generator=self._generator)
        loading = self.factor.pow(2).sum(-1)
        self.residual_std = (1 - loading).clamp_min(0.01).sqrt()  # √δ [n_features]
        self.total_std = (loading + self.residual_std.pow(2)).sqrt()  # σ [n_features]
        self.thresholds = torch.special.ndtri(1 - self.probabilities.double()).float()

    def firing_mask(self, n: int, generator: torch.Generator) -> torch.Tensor:
        shared = torch.randn(n, self.rank, generator=generator)
        own = torch.randn(n, self.n_features, generator=generator)
        z = (shared @ self.factor.T + own * self.residual_std) / self.total_std
        return z > self.thresholds

    def params(self) -> dict[str, Any]:
        return {**super().params(), "rank": self.rank, "scale": self.scale}


# ---- recipe C: the MP-SAE hierarchical tree ---------------------------------------------


def group_cosine(eps: float, size: int) -> float:
    """Pairwise cosine inside a group of `size` orthonormal vectors after mixing with ε:
    ρ(ε) = (2ab + (s − 2)b²) / (a² + (s − 1)b²), a = 1 − ε, b = ε/(s − 1)."""
    a, b = 1 - eps, eps / (size - 1)
    return (2 * a * b + (size - 2) * b * b) / (a * a + (size - 1) * b * b)


def mixing_for_cosine(rho: float, size: int) -> float:
    """Solve ρ(ε) = rho for ε in [0, (s − 1)/s]; ρ rises monotonically from 0 to 1 there
    (at ε = (s − 1)/s every member is the group mean)."""
    if size < 2:
        raise ValueError(f"a group needs at least 2 members, got {size}")
    if not 0 <= rho < 1:
        raise ValueError(f"within-group cosine rho must be in [0, 1), got {rho}")
    if rho == 0:
        return 0.0
    return brentq(lambda e: group_cosine(e, size) - rho, 0.0, (size - 1) / size, xtol=1e-14)


def mix_group(basis: torch.Tensor, group: list[int], eps: float) -> torch.Tensor:
    """Rows `group` of `basis` mixed: q_i <- (1 − ε) q_i + ε/(|S| − 1) Σ_{j∈S, j≠i} q_j,
    always from the original rows. Returns [len(group), d]."""
    q = basis[group]
    others = (q.sum(0, keepdim=True) - q) / (len(group) - 1)
    return (1 - eps) * q + eps * others


class TreeRecipe(SyntheticRecipe):
    """The MP-SAE toy hierarchy: 20 features in 20 dimensions (docs/evaluation.md#recipe-tree).

    An always-on root picks exactly one of 11 top-level nodes with probabilities
    [0.2, 0.2, 0.2, 0.05 × 8]: three parents (features 0, 4, 8) and eight singletons
    (12–19). A chosen parent picks one of its three children (1–3, 5–7, 9–11) with
    probability 0.2 each, or none with probability 0.4. Expected L0 = 0.6·1.6 + 0.4 = 1.36.
    Each active feature takes 1.5 + 0.25·N(0, 1), independently.

    Geometry (conditional orthogonality): an orthonormal basis Q (QR of a Gaussian); the 11
    top-level rows are mixed so that their pairwise cosine is `rho_parent`, each sibling
    triple so that its pairwise cosine is `rho_child`; cross-level cosines stay 0.
    `rho` sets both; `rho_child` / `rho_parent` override it.
    """

    name = "tree"
    options = {"rho": float, "rho_child": float, "rho_parent": float}

    d_model: ClassVar[int] = 20
    parent_ids: ClassVar[tuple[int, ...]] = (0, 4, 8)
    top_level: ClassVar[tuple[int, ...]] = (0, 4, 8, 12, 13, 14, 15, 16, 17, 18, 19)
    top_probabilities: ClassVar[tuple[float, ...]] = (0.2, 0.2, 0.2) + (0.05,) * 8
    # Given its parent: leaf 1, leaf 2, leaf 3, "none".
    child_probabilities: ClassVar[tuple[float, ...]] = (0.2, 0.2, 0.2, 0.4)
    magnitude_mean: ClassVar[float] = 1.5
    magnitude_std: ClassVar[float] = 0.25

    def __init__(
        self,
        rho: float | None = None,
        rho_child: float | None = None,
        rho_parent: float | None = None,
        seed: int = 0,
    ):
        super().__init__(seed)
        default = 0.0 if rho is None else rho
        self.rho_child = float(default if rho_child is None else rho_child)
        self.rho_parent = float(default if rho_parent is None else rho_parent)
        self.eps_child = mixing_for_cosine(self.rho_child, 3)
        self.eps_parent = mixing_for_cosine(self.rho_parent, len(self.top_level))
        self.dictionary = self._geometry()
        parents = torch.full((self.d_model,), -1, dtype=torch.long)
        for p in self.parent_ids:
            parents[p + 1 : p + 4] = p
        self.parents = parents

    def _geometry(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        gaussian = torch.randn(self.d_model, self.d_model, generator=gen, dtype=torch.float64)
        basis, _ = torch.linalg.qr(gaussian)
        basis = basis.T.contiguous()  # rows orthonormal
        atoms = basis.clone()
        top = list(self.top_level)
        atoms[top] = mix_group(basis, top, self.eps_parent)
        for p in self.parent_ids:
            siblings = [p + 1, p + 2, p + 3]
            atoms[siblings] = mix_group(basis, siblings, self.eps_child)
        return (atoms / atoms.norm(dim=-1, keepdim=True)).float()

    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        top = torch.tensor(self.top_level)
        choice = torch.multinomial(
            torch.tensor(self.top_probabilities), n, replacement=True, generator=generator
        )
        child_choice = torch.multinomial(
            torch.tensor(self.child_probabilities), n, replacement=True, generator=generator
        )
        active = torch.zeros(n, self.d_model, dtype=torch.bool)
        rows = torch.arange(n)
        active[rows, top[choice]] = True
        # Only the first three top-level choices are parents; child_choice 3 is "none".
        with_child = (choice < len(self.parent_ids)) & (child_choice < 3)
        child = top[choice] + 1 + child_choice
        active[rows[with_child], child[with_child]] = True
        noise = torch.randn(n, self.d_model, generator=generator)
        return (self.magnitude_mean + self.magnitude_std * noise) * active

    def params(self) -> dict[str, Any]:
        return {
            "rho_child": self.rho_child,
            "rho_parent": self.rho_parent,
            "eps_child": self.eps_child,
            "eps_parent": self.eps_parent,
            "top_probabilities": list(self.top_probabilities),
            "child_probabilities": list(self.child_probabilities),
            "magnitude": f"{self.magnitude_mean} + {self.magnitude_std}*N(0,1)",
        }


# ---- recipe G: planted low-magnitude, high-impact features (g-SAE) ----------------------


class PlantedReadoutRecipe(SyntheticRecipe):
    """Small features that a downstream readout depends on strongly (g-SAE: docs/methods.md#gsae).

    Directions: features 0..n_planted-1 are "planted": orthonormal directions spanning a
    random n_planted-dimensional subspace; the ordinary features are Gaussian unit vectors in
    its orthogonal complement (so the readout below sees the planted features only).
    Firing: each ordinary feature fires independently with probability k_avg / n_ordinary
    (expected L0 k_avg) and value U[0, 1]; each planted feature with probability p_planted
    and the small value scale·U[0.5, 1].
    Downstream: a linear readout y = R x with R = gain · G_planted [n_planted, d_in] and the
    loss L(x) = ½‖R x‖² (a readout that must stay at 0), so the readout is dominated by the
    planted features. Batches carry extras["grad"] = ∂L/∂x = Rᵀ R x [n, d_in].
    A TopK SAE whose k is below the number of active features drops the small planted ones.
    """

    name = "readout"
    options = {
        "n_features": int, "d_in": int, "k_avg": float, "n_planted": int,
        "p_planted": float, "scale": float, "gain": float,
    }  # fmt: skip

    def __init__(
        self,
        n_features: int = 256,
        d_in: int = 64,
        k_avg: float = 6.0,
        n_planted: int = 8,
        p_planted: float = 0.1,
        scale: float = 0.15,
        gain: float = 10.0,
        seed: int = 0,
    ):
        super().__init__(seed)
        if not 0 < n_planted < n_features:
            raise ValueError(f"n_planted must be in [1, n_features), got {n_planted}")
        if not 0 < k_avg <= n_features - n_planted:
            raise ValueError(f"k_avg must be in (0, {n_features - n_planted}], got {k_avg}")
        if not 0 < p_planted <= 1 or scale <= 0 or gain <= 0:
            raise ValueError("need 0 < p_planted <= 1, scale > 0 and gain > 0")
        self.k_avg, self.n_planted, self.p_planted = float(k_avg), int(n_planted), float(p_planted)
        self.scale, self.gain = float(scale), float(gain)
        if n_planted >= d_in:
            raise ValueError(f"n_planted must be < d_in={d_in}, got {n_planted}")
        self.dictionary = self._geometry(n_features, d_in, torch.Generator().manual_seed(seed))
        self.readout = gain * self.dictionary[:n_planted]  # R [n_planted, d_in]
        p_ordinary = k_avg / (n_features - n_planted)
        self.probabilities = torch.full((n_features,), p_ordinary)
        self.probabilities[:n_planted] = p_planted

    def _geometry(self, n_features: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
        gaussian = torch.randn(d_in, d_in, generator=generator, dtype=torch.float64)
        basis = torch.linalg.qr(gaussian)[0].T  # orthonormal rows
        planted, rest = basis[: self.n_planted], basis[self.n_planted :]
        coords = random_unit_rows(n_features - self.n_planted, len(rest), generator).double()
        return torch.cat([planted, coords @ rest]).float()

    @property
    def planted(self) -> torch.Tensor:
        """Indices of the planted features [n_planted]."""
        return torch.arange(self.n_planted)

    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        active = torch.rand(n, self.n_features, generator=generator) < self.probabilities
        values = torch.rand(n, self.n_features, generator=generator)
        values[:, : self.n_planted] = self.scale * (0.5 + 0.5 * values[:, : self.n_planted])
        return values * active

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample readout loss ½‖R x‖² [n]."""
        return 0.5 * (x @ self.readout.T).pow(2).sum(-1)

    def extras(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"grad": (x @ self.readout.T) @ self.readout}

    def params(self) -> dict[str, Any]:
        return {
            "k_avg": self.k_avg, "n_planted": self.n_planted, "p_planted": self.p_planted,
            "scale": self.scale, "gain": self.gain, "loss": "0.5*||R x||^2, R = gain*G[planted]",
        }  # fmt: skip


# ---- specs ------------------------------------------------------------------------------

RECIPES: dict[str, type[SyntheticRecipe]] = {
    cls.name: cls
    for cls in (SuperpositionRecipe, CorrelatedRecipe, TreeRecipe, PlantedReadoutRecipe)
}


def _parse_value(recipe: str, key: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(
            f"recipe {recipe!r}: option {key}={text!r} is not a valid {kind.__name__}"
        ) from None


def make_recipe(spec: str, seed: int = 0) -> SyntheticRecipe:
    """Build a recipe from "name" or "name:key=value,key=value", e.g.
    "superposition:n_features=256,d_in=32,k_avg=4" or "tree:rho=0.3". The dictionary is a
    deterministic function of (spec, seed)."""
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(sorted(RECIPES))}")
    cls = RECIPES[name]
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, text = (s.strip() for s in item.partition("="))
        if not sep or key not in cls.options:
            raise ValueError(
                f"recipe {name!r}: bad option {item!r}; valid options: "
                f"{', '.join(sorted(cls.options))} (as key=value)"
            )
        kwargs[key] = _parse_value(name, key, text, cls.options[key])
    return cls(**kwargs, seed=seed)


# ---- stream -----------------------------------------------------------------------------


def batch_seed(seed: int, index: int) -> int:
    """A 63-bit seed for batch `index` of a stream seeded with `seed`. SeedSequence mixes the
    pair, so (seed, index) pairs never collide the way seed * K + index can."""
    words = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class SyntheticStream:
    """An `ActivationStream` over a recipe: batch i is drawn from a generator seeded with
    (seed, i), so resuming at batch i reproduces the same batches exactly.

    Yields `Batch(x [batch_size, d_in], {"codes": [batch_size, n_features]})`; endless unless
    `n_batches` is given.
    """

    def __init__(
        self,
        recipe: SyntheticRecipe,
        batch_size: int,
        seed: int = 0,
        n_batches: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.recipe = recipe
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.n_batches = n_batches
        self.d_in = recipe.d_in
        self.batch_index = 0  # next batch to yield

    def batch(self, index: int) -> Batch:
        """Batch `index`, independent of the stream's position."""
        gen = torch.Generator().manual_seed(batch_seed(self.seed, index))
        x, codes = self.recipe.sample(self.batch_size, gen)
        return Batch(x, {"codes": codes, **self.recipe.extras(x, codes)})

    def __iter__(self) -> Iterator[Batch]:
        while self.n_batches is None or self.batch_index < self.n_batches:
            batch = self.batch(self.batch_index)
            self.batch_index += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_index = int(state["batch_index"])

    def describe(self) -> dict[str, Any]:
        return {
            "source": "synthetic",
            "recipe": self.recipe.describe(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n_batches": self.n_batches,
        }


def expected_tree_l0() -> float:
    """Closed form for `TreeRecipe`: P(parent) · (1 + P(child | parent)) + P(singleton)."""
    p_parent = sum(TreeRecipe.top_probabilities[: len(TreeRecipe.parent_ids)])
    p_child = sum(TreeRecipe.child_probabilities[:3])
    return p_parent * (1 + p_child) + (1 - p_parent)


__all__ = [
    "RECIPES",
    "CorrelatedRecipe",
    "PlantedReadoutRecipe",
    "SuperpositionRecipe",
    "SyntheticRecipe",
    "SyntheticStream",
    "TreeRecipe",
    "batch_seed",
    "expected_tree_l0",
    "group_cosine",
    "make_recipe",
    "mixing_for_cosine",
]
