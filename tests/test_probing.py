"""k-sparse probing: AUC, ranking, the L1 solver's optimality conditions, splits, a planted
task, last-token activations and their cache, and the probing group end to end."""

import numpy as np
import pytest
import torch
from eval_helpers import HOOKPOINT, model_dir
from tiny_model import tiny_model, tiny_tokenizer

from saekit.evaluation import probing
from saekit.evaluation.probing import (
    ProbeSettings,
    ProbeTask,
    balanced_split,
    fit_logistic,
    k_sparse_probe,
    last_token_activations,
    rank_latents,
    roc_auc,
)


def test_roc_auc_hand_computed():
    # Pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both) -> 3 of 4.
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # A tie counts one half.
    assert roc_auc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.ones(4), np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.arange(3.0), np.zeros(3)))


def test_rank_latents_normalised_mean_difference():
    y = np.array([1, 1, 0, 0])
    f = np.array(
        [
            [2.0, 10.0, 0.0],
            [2.0, 10.0, 0.0],
            [0.0, 30.0, 0.0],
            [0.0, 30.0, 0.0],
        ]
    )
    # latent 0: scale 2 -> |1 - 0| = 1; latent 1: scale 20 -> |0.5 - 1.5| = 1 (tie, lower id
    # first); latent 2 never fires -> 0.
    assert rank_latents(f, y).tolist() == [0, 1, 2]
    f[2:, 0] = 1.0  # latent 0: scale 1.5 -> |4/3 - 2/3| = 2/3 < 1
    assert rank_latents(f, y).tolist() == [1, 0, 2]


@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
def test_l1_logistic_satisfies_kkt(C):
    """At the L1 optimum: |∂L/∂w_j| <= 1 where w_j = 0, and ∂L/∂w_j = −sign(w_j) elsewhere
    (L = C · logistic loss), and ∂L/∂b = 0."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.normal(size=200) > 0).astype(int)
    w, b = fit_logistic(X, y, C, "l1")
    s = 2 * y - 1
    margin = s * (X @ w + b)
    grad_w = C * X.T @ (-s / (1 + np.exp(margin)))
    grad_b = C * np.sum(-s / (1 + np.exp(margin)))
    assert grad_b == pytest.approx(0, abs=1e-2)  # solver tolerance, vs a loss of ~C·n
    for j in range(6):
        if abs(w[j]) > 1e-6:
            assert grad_w[j] == pytest.approx(-np.sign(w[j]), abs=1e-2)
        else:
            assert abs(grad_w[j]) <= 1 + 1e-2
    if C < 0.1:
        assert np.count_nonzero(np.abs(w) > 1e-6) < 6  # strong regularisation drops features


def test_l1_tiny_C_gives_zero_weights_and_l2_matches_closed_form_gradient():
    X = np.array([[1.0], [2.0], [-1.0], [-2.0]])
    y = np.array([1, 1, 0, 0])
    w, b = fit_logistic(X, y, 1e-4, "l1")
    assert abs(w[0]) < 1e-8 and abs(b) < 1e-3
    w2, b2 = fit_logistic(X, y, 1.0, "l2")
    # Symmetric data: b = 0 and w solves w = Σ_i s_i x_i σ(−s_i x_i w).
    assert b2 == pytest.approx(0, abs=1e-5)
    rhs = sum(xi * (1 / (1 + np.exp(xi * w2[0]))) for xi in (1.0, 2.0)) * 2
    assert w2[0] == pytest.approx(rhs, rel=1e-4)


def test_balanced_split_sizes_and_disjointness():
    balanced = np.array([0] * 500 + [1] * 500)
    train, test = balanced_split(balanced, n_train_max=1024, n_test_max=5000, seed=42)
    assert len(train) == 900 and balanced[train].sum() == 450  # min(N − 100, 1024), balanced
    assert len(test) == 100 and balanced[test].sum() == 50
    assert not set(train) & set(test)
    # imbalanced: the smaller class keeps 50 for the test split
    skewed = np.array([0] * 600 + [1] * 400)
    train, test = balanced_split(skewed, 1024, 5000)
    assert len(train) == 700 and skewed[train].sum() == 350
    assert len(test) == 100 and skewed[test].sum() == 50
    # caps, and the seed fixes the split
    train, test = balanced_split(balanced, 64, 40, seed=1)
    assert len(train) == 64 and len(test) == 40 and balanced[test].mean() == 0.5
    assert np.array_equal(balanced_split(balanced, 64, 40, seed=1)[0], train)
    assert not np.array_equal(balanced_split(balanced, 64, 40, seed=2)[0], train)


def test_planted_latent_is_found_at_k1():
    rng = np.random.default_rng(0)
    n, p, planted = 400, 50, 17
    y = rng.integers(0, 2, n)
    f = np.maximum(rng.normal(size=(n, p)), 0) * (rng.random((n, p)) < 0.1)
    f[:, planted] = y  # equal to the label
    train, test = balanced_split(y, 256, 1000)
    res = k_sparse_probe(f[train], y[train], f[test], y[test], ks=(1, 4))
    assert res["1"]["latents"] == [planted]
    assert res["1"]["test_auc"] > 0.999 and res["1"]["test_accuracy"] > 0.99
    assert res["4"]["latents"][0] == planted and res["4"]["test_auc"] > 0.99


def test_last_token_activations_match_single_prompt_forwards():
    model, tok = tiny_model(), tiny_tokenizer()
    prompts = [
        "The quick brown fox",
        "Held-out",
        "Numbers like 12, 345 and 6789 appear in text too.",
    ]
    acts = last_token_activations(model, tok, prompts, HOOKPOINT, batch_size=2, max_length=8)
    assert acts.shape == (3, 32)
    from saekit.data.hooks import capture

    for i, p in enumerate(prompts):
        ids = tok(p)["input_ids"][-8:]  # left truncation keeps the end
        x = torch.tensor([ids])
        ref = capture(model, x, torch.ones_like(x), [HOOKPOINT])[HOOKPOINT][0, -1]
        torch.testing.assert_close(acts[i], ref, atol=1e-5, rtol=1e-4)


def test_one_token_prompts_are_found():
    tok = tiny_tokenizer()
    prompts = ["The", "The quick brown fox", "", "Held-out"]
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    assert lengths[0] == 1 and lengths[2] == 0 and min(lengths[1], lengths[3]) > 1  # premise
    keep = probing.multi_token(tok, prompts, max_length=8)
    assert keep.tolist() == [False, True, False, True]
    # truncation keeps the end, so a long prompt never becomes one token unless max_length is 1
    assert probing.multi_token(tok, prompts, max_length=1).tolist() == [False] * 4


def test_activation_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    model, tok = tiny_model(), tiny_tokenizer()
    task = ProbeTask("toy", ["a b", "c d", "e f"], np.array([0, 1, 0]), "1")
    first = probing.cached_task_activations(model, tok, task, HOOKPOINT, "tiny", cache_dir=tmp_path)
    calls = []
    real = probing.last_token_activations
    monkeypatch.setattr(
        probing, "last_token_activations", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    again = probing.cached_task_activations(model, tok, task, HOOKPOINT, "tiny", cache_dir=tmp_path)
    assert calls == [] and torch.equal(first, again)
    changed = ProbeTask("toy", ["a b", "c d", "e g"], task.labels, "1")
    probing.cached_task_activations(model, tok, changed, HOOKPOINT, "tiny", cache_dir=tmp_path)
    assert calls == [1]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1


def test_sae_probes_data_reads():
    pytest.importorskip("pandas")
    names = probing.binary_datasets()
    assert len(names) == 113 and "118_us_state_CA" in names
    task = probing.load_task("118_us_state_CA")
    assert len(task.prompts) == 1000 and task.labels.mean() == 0.5 and task.positive_class == "1"
    assert probing.load_task("41_truthqa_tf").positive_class == "incorrect"  # sorted string labels
    with pytest.raises(FileNotFoundError):
        probing.load_task("nope")


def test_probing_group_end_to_end_on_tiny_model(tmp_path):
    from eval_helpers import trained_sae

    from saekit.evaluation.evaluate import EvalSettings, evaluate_sae
    from saekit.formats.native import load

    sae = load(trained_sae())
    settings = EvalSettings(
        groups=("probing",),
        probe=ProbeSettings(
            datasets=("118_us_state_CA",),
            ks=(1, 4),
            n_train_max=64,
            n_test_max=64,
            C_grid=(10.0, 1.0, 0.1),
            cache_dir=tmp_path / "probing",
        ),
    )
    doc = evaluate_sae(sae, None, settings)
    res = doc["probing"]["datasets"]["118_us_state_CA"]
    assert res["n_train"] == 64 and res["n_test"] == 64
    task = probing.load_task("118_us_state_CA")
    one_token = int((~probing.multi_token(tiny_tokenizer(), task.prompts, 256)).sum())
    assert res["n_prompts"] == 1000 and res["n_skipped_one_token"] == one_token
    assert set(res["sae"]) == {"1", "4"} and set(res["raw"]) == {"1", "4"}
    assert 0 <= res["sae"]["1"]["test_auc"] <= 1 and "raw_dense_l2" in res
    mean = doc["probing"]["mean"]
    assert mean["sae_top_1_test_accuracy"] == res["sae"]["1"]["test_accuracy"]
    assert (
        doc["saebench"]["sparse_probing"]["llm"]["llm_test_accuracy"]
        == res["raw_dense_l2"]["test_accuracy"]
    )
    assert list((tmp_path / "probing").rglob("118_us_state_CA.safetensors"))
    assert str(model_dir()) in doc["data"]["model_source"]["model"]
