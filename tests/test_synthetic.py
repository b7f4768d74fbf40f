"""Synthetic recipes and the synthetic stream (docs/evaluation.md#recipes)."""

import json

import pytest
import torch

from saekit.data.stream import ActivationStream
from saekit.data.synthetic import (
    CorrelatedRecipe,
    SuperpositionRecipe,
    SyntheticStream,
    TreeRecipe,
    expected_tree_l0,
    group_cosine,
    make_recipe,
    mixing_for_cosine,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- common properties ------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, n_features, d_in",
    [
        ("superposition", 512, 64),
        ("superposition:n_features=256,d_in=32,k_avg=4", 256, 32),
        ("correlated:n_features=128,d_in=16,rank=4,scale=0.3", 128, 16),
        ("tree:rho=0.3", 20, 20),
    ],
)
def test_shapes_unit_rows_and_description(spec, n_features, d_in):
    recipe = make_recipe(spec, seed=3)
    x, codes = recipe.sample(64, gen())
    assert recipe.dictionary.shape == (n_features, d_in)
    assert x.shape == (64, d_in) and x.dtype == torch.float32
    assert codes.shape == (64, n_features) and codes.dtype == torch.float32
    torch.testing.assert_close(recipe.dictionary.norm(dim=-1), torch.ones(n_features))
    torch.testing.assert_close(x, codes @ recipe.dictionary)  # x = a G, no bias or noise
    described = json.loads(json.dumps(recipe.describe()))
    assert described["seed"] == 3 and described["n_features"] == n_features


def test_dictionary_is_a_function_of_spec_and_seed():
    for spec in ("superposition:n_features=64,d_in=16", "correlated", "tree:rho=0.5"):
        a, b, c = make_recipe(spec, 1), make_recipe(spec, 1), make_recipe(spec, 2)
        assert torch.equal(a.dictionary, b.dictionary)
        assert not torch.allclose(a.dictionary, c.dictionary)
        assert torch.equal(a.sample(32, gen(5))[0], b.sample(32, gen(5))[0])


def test_spec_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid recipes: correlated, .*superposition, tree"):
        make_recipe("nope")
    with pytest.raises(ValueError, match="valid options: d_in, decay, k_avg, n_features"):
        make_recipe("superposition:width=3")
    with pytest.raises(ValueError, match="valid options: rho, rho_child, rho_parent"):
        make_recipe("tree:n_features=30")
    with pytest.raises(ValueError, match="not a valid int"):
        make_recipe("superposition:n_features=2.5")
    with pytest.raises(ValueError, match="too large"):
        make_recipe("superposition:n_features=8,k_avg=3,decay=0.5")


# ---- recipe A / correlated --------------------------------------------------------------


def test_superposition_probabilities_are_rescaled_to_k_avg():
    recipe = SuperpositionRecipe(n_features=100, d_in=10, k_avg=4.0, decay=0.9)
    p = recipe.probabilities.double()
    assert p.sum().item() == pytest.approx(4.0, rel=1e-6)
    assert p[1].item() / p[0].item() == pytest.approx(0.9, rel=1e-6)


@pytest.mark.parametrize("cls", [SuperpositionRecipe, CorrelatedRecipe])
def test_expected_l0_is_k_avg(cls):
    recipe = cls(n_features=256, d_in=32, k_avg=5.0)
    _, codes = recipe.sample(40_000, gen(1))
    # L0 variance <= 5 (sum of Bernoullis; the copula adds some), so the std of the mean
    # over 40k samples is about 0.012.
    assert (codes != 0).sum(1).float().mean().item() == pytest.approx(5.0, abs=0.07)
    assert codes.min() >= 0 and codes.max() <= 1  # values U[0, 1]


def test_correlated_shares_the_dictionary_and_correlates_firing():
    flat = SuperpositionRecipe(n_features=64, d_in=16, k_avg=8.0, seed=4)
    corr = CorrelatedRecipe(n_features=64, d_in=16, k_avg=8.0, rank=1, scale=0.9, seed=4)
    assert torch.equal(flat.dictionary, corr.dictionary)
    # With one strong shared factor, L0 varies much more than for independent firing.
    l0_flat = (flat.sample(20_000, gen(2))[1] != 0).sum(1).float()
    l0_corr = (corr.sample(20_000, gen(2))[1] != 0).sum(1).float()
    assert l0_corr.mean().item() == pytest.approx(8.0, abs=0.15)
    assert l0_corr.var().item() > 2 * l0_flat.var().item()


# ---- recipe C: tree ---------------------------------------------------------------------


def test_group_cosine_formula_by_hand():
    # s = 3, ε = 0.3: a = 0.7, b = 0.15; ρ = (2·0.7·0.15 + 0.15²)/(0.49 + 2·0.0225)
    # = 0.2325 / 0.535 = 0.434579...
    assert group_cosine(0.3, 3) == pytest.approx(0.2325 / 0.535, rel=1e-12)
    assert mixing_for_cosine(group_cosine(0.3, 3), 3) == pytest.approx(0.3, abs=1e-10)


def test_mixing_matches_published_epsilon_tables():
    # The MP-SAE toy's ε tables (arXiv:2506.03093) for ρ = 0.0, 0.1, ..., 0.8,
    # rounded to 3–4 digits.
    eps_child = [0, 0.0895, 0.163, 0.226, 0.282, 0.3335, 0.3825, 0.431, 0.482]
    eps_parent = [0, 0.3, 0.44, 0.529, 0.594, 0.6467, 0.692, 0.733, 0.7739]
    for level in range(9):
        assert mixing_for_cosine(level / 10, 3) == pytest.approx(eps_child[level], abs=1e-3)
        assert mixing_for_cosine(level / 10, 11) == pytest.approx(eps_parent[level], abs=1e-3)
    assert mixing_for_cosine(0.9, 3) == pytest.approx(0.5407, abs=1e-4)
    assert mixing_for_cosine(0.9, 11) == pytest.approx(0.8182, abs=1e-4)
    with pytest.raises(ValueError, match="rho"):
        mixing_for_cosine(1.0, 3)


def test_tree_geometry_cosines():
    recipe = make_recipe("tree:rho_child=0.6,rho_parent=0.3", seed=7)
    cos = recipe.dictionary.double() @ recipe.dictionary.double().T
    top = list(TreeRecipe.top_level)
    for i in top:
        for j in top:
            if i != j:
                assert cos[i, j].item() == pytest.approx(0.3, abs=1e-5)
    for p in (0, 4, 8):
        for i in range(p + 1, p + 4):
            for j in range(p + 1, p + 4):
                if i != j:
                    assert cos[i, j].item() == pytest.approx(0.6, abs=1e-5)
            # Cross-level cosines stay 0 (children are orthogonal to every top-level atom).
            assert cos[i, top].abs().max().item() < 1e-5
    # Children of different parents are orthogonal too.
    assert cos[1, 5].item() == pytest.approx(0.0, abs=1e-5)


def test_tree_rho_sets_both_and_explicit_values_override():
    both = make_recipe("tree:rho=0.4")
    assert (both.rho_child, both.rho_parent) == (0.4, 0.4)
    mixed = make_recipe("tree:rho=0.4,rho_parent=0.1")
    assert (mixed.rho_child, mixed.rho_parent) == (0.4, 0.1)
    assert TreeRecipe().eps_child == 0.0


def test_tree_parents_and_firing_rules():
    recipe = TreeRecipe(rho=0.3)
    expected_parents = [-1, 0, 0, 0, -1, 4, 4, 4, -1, 8, 8, 8] + [-1] * 8
    assert recipe.parents.tolist() == expected_parents
    _, codes = recipe.sample(100_000, gen(3))
    active = codes != 0
    top = list(TreeRecipe.top_level)
    # Exactly one of the 11 top-level nodes per sample.
    assert torch.all(active[:, top].sum(1) == 1)
    for p in (0, 4, 8):
        children = active[:, p + 1 : p + 4]
        assert torch.all(children.sum(1) <= 1)  # siblings are exclusive
        assert not torch.any(children.any(1) & ~active[:, p])  # children only with parent
        p_child = children.any(1)[active[:, p]].float().mean().item()
        assert p_child == pytest.approx(0.6, abs=0.02)
    rates = active.float().mean(0)
    assert rates[0].item() == pytest.approx(0.2, abs=0.01)
    assert rates[12].item() == pytest.approx(0.05, abs=0.005)
    # Expected L0 = 0.6·1.6 + 0.4 = 1.36; std of the mean over 1e5 samples ≈ 0.0015.
    assert expected_tree_l0() == pytest.approx(1.36)
    assert active.sum(1).float().mean().item() == pytest.approx(1.36, abs=0.01)
    values = codes[active]
    assert values.mean().item() == pytest.approx(1.5, abs=0.01)
    assert values.std().item() == pytest.approx(0.25, abs=0.01)


# ---- stream -----------------------------------------------------------------------------


def test_stream_resume_reproduces_batches():
    recipe = make_recipe("superposition:n_features=32,d_in=8,k_avg=3")
    stream = SyntheticStream(recipe, batch_size=16, seed=11)
    assert isinstance(stream, ActivationStream)
    assert stream.d_in == 8 and stream.batch_size == 16
    it = iter(stream)
    first = [next(it) for _ in range(5)]
    assert stream.state_dict() == {"batch_index": 5}

    resumed = SyntheticStream(recipe, batch_size=16, seed=11)
    resumed.load_state_dict({"batch_index": 3})
    again = next(iter(resumed))
    assert torch.equal(again.x, first[3].x)
    assert torch.equal(again.extras["codes"], first[3].extras["codes"])
    torch.testing.assert_close(first[0].x, first[0].extras["codes"] @ recipe.dictionary)
    assert not torch.equal(first[0].x, first[1].x)

    other_seed = next(iter(SyntheticStream(recipe, batch_size=16, seed=12)))
    assert not torch.equal(other_seed.x, first[0].x)
    info = json.loads(json.dumps(stream.describe()))
    assert info["seed"] == 11 and info["recipe"]["k_avg"] == 3.0


def test_stream_with_n_batches_ends():
    stream = SyntheticStream(TreeRecipe(), batch_size=4, seed=0, n_batches=3)
    assert len(list(stream)) == 3
    assert len(list(stream)) == 0  # exhausted until the position is reset
