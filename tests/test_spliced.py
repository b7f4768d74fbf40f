"""Spliced-in CE/KL on a tiny random Llama: exact identities, masking and token sums."""

import pytest
import torch
from tiny_model import random_batch, tiny_model

from saekit import create
from saekit.data.hooks import capture
from saekit.data.masking import token_mask
from saekit.evaluation.spliced import estimate_mean_activation, splice, spliced_metrics

HOOK = "model.layers.1"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def batch():
    ids, am = random_batch(5, 14, seed=2)
    am[1, 9:] = 0  # right padding
    am[3, :4] = 0  # left padding
    return ids, am


@pytest.fixture(scope="module")
def mean(model):
    ids, am = random_batch(4, 14, seed=7)  # separate tokens
    return estimate_mean_activation(model, ids, am, HOOK)


def manual_ce(model, ids, am):
    """Mean next-token CE over positions the metric scores, from a plain forward."""
    logits = model(input_ids=ids, attention_mask=am).logits
    pred = token_mask(ids, am)[:, :-1] & am[:, 1:].bool()
    lp = torch.log_softmax(logits[:, :-1][pred].double(), -1)
    return -lp.gather(1, ids[:, 1:][pred].unsqueeze(1)).mean().item(), int(pred.sum())


def test_identity_reproduces_clean_and_zero_reproduces_ablation(model, batch, mean):
    ids, am = batch
    same = spliced_metrics(model, ids, am, HOOK, lambda x: x, mean, batch_size=2)
    assert same["ce_spliced"] == same["ce_clean"] and same["kl_spliced"] == 0.0
    assert same["delta_ce"] == 0.0
    assert same["ce_loss_score"] == 1.0 and same["kl_div_score"] == 1.0
    assert same["ce_loss_score_mean_ablation"] == 1.0
    zero = spliced_metrics(model, ids, am, HOOK, torch.zeros_like, mean, batch_size=2)
    assert zero["ce_spliced"] == zero["ce_zero_ablation"] != zero["ce_clean"]
    assert zero["kl_spliced"] == zero["kl_zero_ablation"] > 0
    assert zero["ce_loss_score"] == 0.0 and zero["kl_div_score"] == 0.0
    as_mean = spliced_metrics(model, ids, am, HOOK, lambda x: mean.expand_as(x), mean)
    assert as_mean["ce_spliced"] == as_mean["ce_mean_ablation"]
    ce, n = manual_ce(model, ids, am)
    assert same["ce_clean"] == pytest.approx(ce, rel=1e-6) and same["n_tokens"] == n
    # 13 predictions per row; row 1 loses 5 (padded targets) + its first position, row 3
    # loses its 4 padded positions + its first real one, the 3 other rows their position 0.
    assert n == 5 * 13 - 6 - 5 - 3


def test_averages_are_token_sums_independent_of_batching(model, batch, mean):
    ids, am = batch
    fn = lambda x: 0.5 * x  # noqa: E731
    a = spliced_metrics(model, ids, am, HOOK, fn, mean, batch_size=1)
    b = spliced_metrics(model, ids, am, HOOK, fn, mean, batch_size=5)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_only_unmasked_tokens_are_replaced(model, batch):
    ids, am = batch
    mask = token_mask(ids, am)
    clean = capture(model, ids, am, [HOOK])[HOOK]
    with splice(model, HOOK, "output", mask, lambda x: x + 1.0):
        spliced = capture(model, ids, am, [HOOK])[HOOK]  # runs after the splice hook
    assert torch.equal(spliced[~mask], clean[~mask])
    torch.testing.assert_close(spliced[mask], clean[mask] + 1.0)


def test_input_splice_and_an_sae(model, batch, mean):
    ids, am = batch
    same = spliced_metrics(model, ids, am, "model.layers.2", lambda x: x, which="input")
    assert same["ce_spliced"] == same["ce_clean"]
    assert same["ce_mean_ablation"] is None and same["ce_loss_score_mean_ablation"] is None
    sae = create("topk", d_in=32, n_latents=64, k=4)
    out = spliced_metrics(model, ids, am, HOOK, sae, mean)
    assert all(v is not None and v == v for v in out.values())  # no None / NaN with a mean
    assert out["kl_spliced"] > 0


def test_bad_reconstructions_raise(model, batch):
    ids, am = batch
    with pytest.raises(ValueError, match="shape"):
        spliced_metrics(model, ids, am, HOOK, lambda x: x[:, :4])
    with pytest.raises(FloatingPointError, match="non-finite"):
        spliced_metrics(model, ids, am, HOOK, lambda x: x * float("nan"))
    with pytest.raises(KeyError, match="close matches"):
        spliced_metrics(model, ids, am, "model.layers.10", lambda x: x)


def test_saebench_convention_replaces_and_scores_every_attended_position(model, batch, mean):
    ids, am = batch
    same = spliced_metrics(model, ids, am, HOOK, lambda x: x, mean, convention="saebench")
    assert same["convention"] == "saebench" and same["ce_spliced"] == same["ce_clean"]
    # predictions with an attended target: 13 in each full row, 8 in row 1 (attended 0..8),
    # 9 in row 3 (attended 4..13); position 0 is scored and replaced too
    assert same["n_tokens"] == 3 * 13 + 8 + 9 and same["n_spliced"] == int(am.sum())
    logits = model(input_ids=ids, attention_mask=am).logits
    pred = am[:, :-1].bool() & am[:, 1:].bool()
    lp = torch.log_softmax(logits[:, :-1][pred].double(), -1)
    ce = -lp.gather(1, ids[:, 1:][pred].unsqueeze(1)).mean().item()
    assert same["ce_clean"] == pytest.approx(ce, rel=1e-6)
    zero = spliced_metrics(model, ids, am, HOOK, torch.zeros_like, mean, convention="saebench")
    assert zero["ce_spliced"] == zero["ce_zero_ablation"] and zero["ce_loss_score"] == 0.0
    with pytest.raises(ValueError, match="unknown convention"):
        spliced_metrics(model, ids, am, HOOK, lambda x: x, convention="both")


def test_variants_share_baselines_and_a_label_informed_one_gets_the_gradient(model, batch):
    from saekit.data.gradients import capture_gradients
    from saekit.evaluation.spliced import SpliceVariant, spliced_scores

    ids, am = batch
    seen: list[torch.Tensor] = []

    def reads_gradient(x, g):
        seen.append(g)
        return x, None, {}

    variants = [
        SpliceVariant.of_function(lambda x: x, "identity"),
        SpliceVariant.of_function(torch.zeros_like, "zero"),
        SpliceVariant("oracle", reads_gradient, label_informed=True),
    ]
    out = spliced_scores(model, ids, am, HOOK, variants, batch_size=5)
    assert list(out["variants"]) == ["identity", "zero", "oracle"]
    assert out["variants"]["identity"]["ce_loss_score"] == 1.0
    assert out["variants"]["zero"]["ce_spliced"] == out["ce_zero_ablation"]
    assert out["variants"]["oracle"]["label_informed"] and len(seen) == 1
    _, grad = capture_gradients(model, ids, am, HOOK)
    assert torch.equal(seen[0], grad[HOOK][token_mask(ids, am)])
    with pytest.raises(ValueError, match="needs an SAE hookpoint, not a pair"):
        spliced_scores(model, ids, am, "model.layers.1.mlp:in->out", variants[2:])
