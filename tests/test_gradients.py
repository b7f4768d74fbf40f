"""Per-token downstream-loss gradients (saekit.data.gradients) on the tiny random Llama."""

import pytest
import torch
from tiny_model import SPECIAL, TEXTS, random_batch, tiny_model, tiny_tokenizer

from saekit.data.corpora import tokenize_corpus
from saekit.data.gradients import (
    GradientModelStream,
    NextTokenCE,
    PooledCosineLoss,
    capture_gradients,
)
from saekit.data.hooks import capture, get_module
from saekit.data.masking import token_mask
from saekit.data.model_stream import ModelStream

HOOK = "model.layers.1"
EOS = SPECIAL.index("<eos>")
SPECIAL_IDS = tuple(range(len(SPECIAL)))


@pytest.fixture(scope="module")
def model():
    return tiny_model().double()


def loss_with_delta(model, ids, am, delta, loss, hookpoint=HOOK):
    """The downstream loss with delta [batch, seq, d] added to the hookpoint's output."""
    handle = get_module(model, hookpoint).register_forward_hook(
        lambda _m, _a, o: (o[0] + delta, *o[1:]) if isinstance(o, tuple) else o + delta
    )
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=am, use_cache=False)
            return float(loss(out, ids, am, token_mask(ids, am)))
    finally:
        handle.remove()


def finite_difference(model, ids, am, x_shape, entries, loss, h=1e-3, hookpoint=HOOK):
    # h=1e-3: RMSNorm computes in float32 even in a float64 model, so a tiny h only measures
    # rounding; the O(h²) truncation error stays far below the tolerance.
    out = []
    for b, t, j in entries:
        delta = torch.zeros(x_shape, dtype=torch.float64)
        delta[b, t, j] = h
        plus = loss_with_delta(model, ids, am, delta, loss, hookpoint)
        minus = loss_with_delta(model, ids, am, -delta, loss, hookpoint)
        out.append((plus - minus) / (2 * h))
    return torch.tensor(out)


ENTRIES = [(0, 0, 3), (0, 4, 0), (1, 2, 17), (1, 6, 31), (0, 8, 5)]


def gradient(model, ids, am, hookpoint=HOOK, **kwargs):
    """(x, g) at one hookpoint."""
    acts, grads = capture_gradients(model, ids, am, [hookpoint], **kwargs)
    return acts[hookpoint], grads[hookpoint]


def test_gradient_equals_finite_difference(model):
    ids, am = random_batch(2, 10, seed=1)
    x, g = gradient(model, ids, am)
    fd = finite_difference(model, ids, am, x.shape, ENTRIES, NextTokenCE())
    ours = torch.tensor([float(g[b, t, j]) for b, t, j in ENTRIES])
    assert ours.abs().min() > 1e-4  # the checked entries are not trivially zero
    assert torch.allclose(ours, fd, rtol=1e-3, atol=1e-4)


def test_gradient_of_the_counted_predictions_by_hand(model):
    """The loss counts the predictions made at kept tokens whose next token is attended:
    here listed by hand, and differentiated by autograd through a zero added at the hookpoint."""
    ids, am = random_batch(2, 10, seed=6)
    ids[0, 4] = EOS  # a separator: no prediction is counted there
    am[1, 7:] = 0  # right padding in row 1
    counted = [(0, t) for t in (1, 2, 3, 5, 6, 7, 8)] + [(1, t) for t in (1, 2, 3, 4, 5)]
    delta = torch.zeros(2, 10, model.config.hidden_size, dtype=torch.float64, requires_grad=True)
    handle = get_module(model, HOOK).register_forward_hook(lambda _m, _a, o: o + delta)
    try:
        logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits
    finally:
        handle.remove()
    log_p = torch.log_softmax(logits, dim=-1)
    ce = -sum(log_p[b, t, ids[b, t + 1]] for b, t in counted)
    (want,) = torch.autograd.grad(ce, delta)
    x, g = gradient(model, ids, am, special_ids=SPECIAL_IDS)
    torch.testing.assert_close(x, capture(model, ids, am, [HOOK])[HOOK])
    torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    assert g[0, 4].abs().sum() > 0  # the separator's activation still feeds later predictions
    assert g[0, 9].abs().sum() == 0 and g[1, 6:].abs().sum() == 0  # feeds none


def test_masked_tokens_get_zero_gradient(model):
    ids, am = random_batch(2, 10, seed=2)
    am[1, 6:] = 0  # right padding in row 1
    _, g = gradient(model, ids, am)
    norms = g.norm(dim=-1)
    assert torch.all(norms[:, -1] == 0)  # the last position predicts nothing
    assert torch.all(norms[1, 5:] == 0)  # padding, and the last real token (target is padding)
    assert torch.all(norms[0, :-1] > 0) and torch.all(norms[1, :5] > 0)
    # The padded row's gradient equals the gradient of the unpadded, truncated row.
    _, g_short = gradient(model, ids[1:, :6], am[1:, :6])
    assert torch.allclose(g[1, :5], g_short[0, :5], atol=1e-10)


def test_several_sites_in_one_pass_equal_one_site_each(model):
    ids, am = random_batch(2, 8, seed=3)
    sites = ["model.layers.2", "model.layers.0", "model.layers.1.mlp:in", "model.layers.2:in"]
    acts, grads = capture_gradients(model, ids, am, sites)
    for site in sites:
        x, g = gradient(model, ids, am, site)
        assert torch.equal(acts[site], x)
        torch.testing.assert_close(grads[site], g, rtol=1e-9, atol=1e-12)
    # layer 1's output is layer 2's input: one tensor, one gradient
    x, g = gradient(model, ids, am, "model.layers.1")
    assert torch.equal(acts["model.layers.2:in"], x) and torch.equal(grads["model.layers.2:in"], g)


def test_parameters_get_no_gradient(model):
    ids, am = random_batch(2, 8, seed=3)
    for p in model.parameters():
        p.requires_grad_(True)  # even trainable weights get no .grad
    try:
        _, g = gradient(model, ids, am)
        assert all(p.grad is None for p in model.parameters()) and g.abs().sum() > 0
    finally:
        for p in model.parameters():
            p.requires_grad_(False)


def test_pooled_cosine_loss_for_a_model_without_lm_head(model):
    base = model.model  # LlamaModel: hidden states only
    ids, am = random_batch(2, 8, seed=5)
    target = torch.randn(2, base.config.hidden_size, generator=torch.Generator().manual_seed(0))
    loss = PooledCosineLoss(target.double())
    x, g = gradient(base, ids, am, "layers.1", loss=loss)
    entries = [(0, 0, 1), (1, 7, 9), (0, 5, 30)]
    fd = finite_difference(base, ids, am, x.shape, entries, loss, hookpoint="layers.1")
    ours = torch.tensor([float(g[b, t, j]) for b, t, j in entries])
    assert torch.allclose(ours, fd, rtol=1e-3, atol=1e-5)
    assert g[:, -1].abs().sum() > 0  # pooling counts every attended token, the last too
    _, g_mean = gradient(base, ids, am, "layers.1", loss=PooledCosineLoss())
    assert g_mean.abs().sum() > 0


def test_gradient_stream_matches_activation_stream():
    model = tiny_model()
    contexts = tokenize_corpus(tiny_tokenizer(), TEXTS, n_contexts=6, ctx_len=12)
    kw = dict(batch_size=20, seed=3, contexts_per_chunk=4, forward_batch=2)
    plain = ModelStream(model, contexts, HOOK, **kw)
    with_grad = GradientModelStream(model, contexts, HOOK, **kw)
    batches = [b for b, _ in zip(with_grad, range(3))]
    for b, ref in zip(batches, plain):
        assert torch.allclose(b.x, ref.x) and b.extras["grad"].shape == b.x.shape
    assert all(b.extras["grad"].norm(dim=-1).gt(0).float().mean() > 0.5 for b in batches)
    # Exact resume: the state after two batches reproduces the third.
    resumed = GradientModelStream(model, contexts, HOOK, **kw)
    replay = GradientModelStream(model, contexts, HOOK, **kw)
    it = iter(replay)
    next(it), next(it)
    resumed.load_state_dict(replay.state_dict())
    third = next(iter(resumed))
    assert torch.equal(third.x, batches[2].x)
    assert torch.equal(third.extras["grad"], batches[2].extras["grad"])
    assert with_grad.describe()["gradient"]["loss"] == "next_token_ce"
