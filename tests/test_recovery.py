"""Ground-truth recovery metrics (docs/evaluation.md#synthetic) against hand-computed values."""

import math

import pytest
import torch

from saekit.data.synthetic import TreeRecipe, make_recipe
from saekit.evaluation.recovery import (
    absorption_score,
    activation_matching,
    feature_recovery_rate,
    hungarian_mcc,
    latent_classification,
    mmcs,
    recovery_report,
    uniqueness,
)


def test_true_dictionary_scores_one():
    g = make_recipe("superposition:n_features=64,d_in=16").dictionary
    scores = mmcs(g, g)
    for value in scores.values():
        assert value == pytest.approx(1.0, abs=1e-6)
    assert hungarian_mcc(g, g) == pytest.approx(1.0, abs=1e-6)
    assert feature_recovery_rate(g, g, 0.9) == 1.0
    assert uniqueness(g, g) == 1.0


def test_permuted_sign_flipped_dictionary():
    # G = I4; D = rows of G permuted (3, 0, 1, 2) with the atoms for g_0 and g_2 negated.
    # |cos| metrics ignore the sign: all 1. Signed MMCS GT -> learned: g_1, g_3 find +1;
    # g_0, g_2 find only −1 (own atom) and 0 (others), so max = 0  ->  (1 + 1 + 0 + 0)/4.
    g = torch.eye(4)
    d = g[[3, 0, 1, 2]] * torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    scores = mmcs(g, d)
    assert scores["mmcs_gt_to_learned"] == pytest.approx(0.5)
    assert scores["mmcs_learned_to_gt"] == pytest.approx(0.5)
    assert scores["mmcs_gt_to_learned_abs"] == pytest.approx(1.0)
    assert hungarian_mcc(g, d) == pytest.approx(1.0)
    assert feature_recovery_rate(g, d, 0.8) == 1.0
    assert uniqueness(g, d) == 1.0


def test_hungarian_2x2_by_hand():
    # G = e1, e2 in R³. d0 = [0.6, 0.5, √0.39], d1 = [0.5, 0.1, √0.74] (unit norm), so
    # C = |G Dᵀ| = [[0.6, 0.5], [0.5, 0.1]].
    # Greedy (g0 -> d0 at 0.6, then g1 -> d1 at 0.1) totals 0.7; the optimal assignment
    # g0 -> d1, g1 -> d0 totals 1.0  ->  MCC = 1.0/2 = 0.5.
    g = torch.eye(3)[:2]
    d = torch.tensor([[0.6, 0.5, math.sqrt(0.39)], [0.5, 0.1, math.sqrt(0.74)]])
    assert hungarian_mcc(g, d) == pytest.approx(0.5, rel=1e-6)
    # MMCS GT -> learned: max(0.6, 0.5) = 0.6, max(0.5, 0.1) = 0.5  ->  0.55.
    # MMCS learned -> GT: d0 max(0.6, 0.5) = 0.6, d1 max(0.5, 0.1) = 0.5  ->  0.55.
    scores = mmcs(g, d)
    assert scores["mmcs_gt_to_learned"] == pytest.approx(0.55, rel=1e-6)
    assert scores["mmcs_learned_to_gt"] == pytest.approx(0.55, rel=1e-6)
    # FRR(0.55): only g0 (0.6) passes  ->  1/2. Uniqueness: both atoms pick g0  ->  1/2.
    assert feature_recovery_rate(g, d, 0.55) == 0.5
    assert uniqueness(g, d) == 0.5


def test_hungarian_rectangular():
    # 2 features, 3 atoms: atom 2 duplicates nothing; pairs (g0, d1), (g1, d0) at |cos| 1, 0.8.
    g = torch.eye(2)
    d = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.6, -0.8]])
    # Optimal: g0 -> d1 (1.0), g1 -> d0 or d2 (0.8)  ->  MCC = 0.9.
    assert hungarian_mcc(g, d) == pytest.approx(0.9, rel=1e-6)
    assert hungarian_mcc(d, g) == pytest.approx(0.9, rel=1e-6)  # SAE-vs-SAE, either order


def test_latent_classification_by_hand():
    # G = D = I2 (latent i matched to feature i); a third latent d2 = [0.6, 0.8] matches g1
    # (|cos| 0.8 > 0.6) and never fires. Four samples:
    #   feature 0 active: 1 1 0 0     latent 0 fires: 1 0 1 0  -> TP 1, FP 1, FN 1, TN 1
    #   feature 1 active: 0 1 1 0     latent 1 fires: 0 1 1 1  -> TP 2, FP 1, FN 0, TN 1
    #                                 latent 2 fires: 0 0 0 0  -> TP 0, FP 0, FN 2, TN 2
    # precision: 1/2, 2/3, 0 (undefined -> 0)    mean = 7/18
    # recall:    1/2, 1,   0                     mean = 1/2
    # F1:        1/2, 0.8, 0                     mean = 1.3/3
    # accuracy:  2/4, 3/4, 2/4                   mean = 7/12
    g = torch.eye(2)
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    true_codes = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    codes = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [5.0, 1.0, 0], [0, -1.0, 0]])
    out = latent_classification(d, g, codes, true_codes)
    assert out["precision"] == pytest.approx(7 / 18)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["f1"] == pytest.approx(1.3 / 3)
    assert out["accuracy"] == pytest.approx(7 / 12)


def test_activation_matching_by_hand():
    # True codes (3 samples) scaled by their max: f0 [1,0,1]/1, f1 [0,2,2]/2 = [0,1,1].
    # Latents scaled: l0 [0,3,0]/3 = [0,1,0], l1 [0,5,5]·... take l1 = [5,0,5]/5 = [1,0,1].
    # S = A_saeᵀ A_gt: S[l0,f0] = 0, S[l0,f1] = 1, S[l1,f0] = 2, S[l1,f1] = 1.
    # Identity totals 0 + 1 = 1; swap totals 2 + 1 = 3  ->  f0 -> l1, f1 -> l0.
    true_codes = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
    codes = torch.tensor([[0.0, 5.0], [3.0, 0.0], [0.0, 5.0]])
    assert activation_matching(codes, true_codes).tolist() == [1, 0]
    # Fewer latents than features: the unmatched feature gets −1 (l1 takes f0, S = 2 > 1).
    assert activation_matching(codes[:, 1:], true_codes).tolist() == [0, -1]


def test_absorption_on_hand_built_absorbed_dictionary():
    # Tree at ρ = 0: G is orthonormal. Learned dictionary = G, except the atoms of P1's
    # children (features 1–3) are absorbed: d_c = (g_c + g_0)/√2, so cos(d_c, g_0) = 1/√2.
    # The other six children keep cos(d_c, g_parent) = 0  ->  score = 3·(1/√2)/9 = 0.2357.
    # Latents fire exactly like their features (codes = true codes), with the learned
    # latents permuted to check that matching goes through activations.
    recipe = TreeRecipe(rho=0.0, seed=1)
    g = recipe.dictionary
    d = g.clone()
    d[1:4] = (g[1:4] + g[0]) / math.sqrt(2)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    _, true_codes = recipe.sample(4000, torch.Generator().manual_seed(2))
    score = absorption_score(d[perm], g, recipe.parents, true_codes[:, perm], true_codes)
    assert score == pytest.approx(3 / math.sqrt(2) / 9, abs=1e-5)
    # Unabsorbed dictionary: 0.
    clean = absorption_score(g[perm], g, recipe.parents, true_codes[:, perm], true_codes)
    assert clean == pytest.approx(0.0, abs=1e-5)


class OrthogonalEncoder:
    """A perfect SAE for an orthonormal dictionary: codes = x Gᵀ = the true codes (the
    threshold removes float round-off, which would otherwise count as firing)."""

    def __init__(self, dictionary: torch.Tensor):
        self.W_dec = dictionary.clone()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        codes = x @ self.W_dec.T
        return codes * (codes > 1e-4)


def test_recovery_report_on_a_perfect_sae():
    recipe = TreeRecipe(rho=0.0, seed=3)
    report = recovery_report(OrthogonalEncoder(recipe.dictionary), recipe, n_samples=2000)
    for key in (
        "mmcs_gt_to_learned",
        "hungarian_mcc",
        "frr_0.9",
        "uniqueness",
        "precision",
        "recall",
        "f1",
        "accuracy",
        "activation_match_cos",
    ):
        assert report[key] == pytest.approx(1.0, abs=1e-5), key
    assert report["absorption_score"] == pytest.approx(0.0, abs=1e-5)
    assert report["l0"] == pytest.approx(report["true_l0"])
    assert report["frac_dead"] == 0.0
    # Flat recipes have no absorption score.
    flat = make_recipe("superposition:n_features=16,d_in=16,k_avg=2")
    assert "absorption_score" not in recovery_report(
        OrthogonalEncoder(flat.dictionary), flat, n_samples=500
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="d_in"):
        hungarian_mcc(torch.eye(3), torch.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        mmcs(torch.eye(2), torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="same n_samples"):
        activation_matching(torch.ones(3, 2), torch.ones(4, 2))
