"""Steering: the hookpoint sees exactly x + α·d, at the right positions, for outputs and
inputs; generation is unchanged at α = 0 and changed by a large α; hooks are removed. The
steering effect (saekit.evaluation.steering_effect): none at α = 0, linear for small α."""

import pytest
import torch
from tiny_model import random_batch, tiny_model, tiny_tokenizer

import saekit
from saekit.data.hooks import capture
from saekit.steering import generate_steered, steer, steering_vector

HOOK = "model.layers.1"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def sae():
    return saekit.create("topk", d_in=32, n_latents=16, k=2, seed=3)


def test_steering_vector_is_the_unit_atom():
    s = sae()
    with torch.no_grad():
        s.W_dec[4] *= 3.0
    v = steering_vector(s, 4)
    assert v.norm().item() == pytest.approx(1.0)
    torch.testing.assert_close(steering_vector(s, 4, unit=False), s.W_dec[4].detach())
    with pytest.raises(ValueError, match="latent must be in"):
        steering_vector(s, 16)


def test_output_is_shifted_by_alpha_times_vector(model):
    ids, am = random_batch(2, 10)
    v = steering_vector(sae(), 5)
    clean = capture(model, ids, am, [HOOK, "model.layers.2"])
    with steer(model, HOOK, v, alpha=2.5):
        steered = capture(model, ids, am, [HOOK, "model.layers.2"])
    torch.testing.assert_close(steered[HOOK], clean[HOOK] + 2.5 * v, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(steered["model.layers.2"], clean["model.layers.2"])  # it propagates
    after = capture(model, ids, am, [HOOK])  # the hook is gone
    torch.testing.assert_close(after[HOOK], clean[HOOK])


def test_start_position_and_input_hook(model):
    ids, am = random_batch(1, 8)
    v = steering_vector(sae(), 1)
    clean = capture(model, ids, am, [HOOK])[HOOK]
    with steer(model, HOOK, v, alpha=1.0, start=5):
        part = capture(model, ids, am, [HOOK])[HOOK]
    torch.testing.assert_close(part[:, :5], clean[:, :5])
    torch.testing.assert_close(part[:, 5:], clean[:, 5:] + v, atol=1e-5, rtol=1e-5)
    # steering the input of layer 2 == steering the output of layer 1
    with steer(model, "model.layers.2", v, alpha=1.5, which="input"):
        via_input = capture(model, ids, am, ["model.layers.2"])["model.layers.2"]
    with steer(model, HOOK, v, alpha=1.5):
        via_output = capture(model, ids, am, ["model.layers.2"])["model.layers.2"]
    torch.testing.assert_close(via_input, via_output, atol=1e-5, rtol=1e-5)


def test_wrong_width_is_an_error(model):
    ids, am = random_batch(1, 4)
    with steer(model, HOOK, torch.ones(7)), pytest.raises(ValueError, match="width 7"):
        capture(model, ids, am, [HOOK])


def test_generation(model):
    tok = tiny_tokenizer()
    s = sae()
    enc = tok("The quick brown", return_tensors="pt")
    plain = model.generate(**enc, do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id)
    plain_text = tok.decode(plain[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    same = generate_steered(
        model, tok, "The quick brown", s, 2, alpha=0.0, hookpoint=HOOK, max_new_tokens=6
    )
    assert same == plain_text
    pushed = generate_steered(
        model, tok, "The quick brown", s, 2, alpha=200.0, hookpoint=HOOK, max_new_tokens=6
    )
    assert pushed != plain_text


def test_steering_effect_is_zero_at_zero_and_linear_for_small_alpha(model):
    from tiny_model import TEXTS

    from saekit.data.corpora import tokenize_corpus
    from saekit.evaluation.steering_effect import steering_effect, steering_positions

    ctx = tokenize_corpus(tiny_tokenizer(), TEXTS, n_contexts=4, ctx_len=12)
    ids, am = ctx.input_ids, ctx.attention_mask
    pos = steering_positions(ids, am, ctx.special_ids, max_position=8)
    assert (pos >= 1).all() and (pos < 8).all()  # never position 0, never past the cap
    atoms = sae().W_dec.detach()[:3]
    none = steering_effect(model, ids, am, HOOK, atoms, 0.0, pos)
    assert none["mean_kl"] == 0.0 and max(none["logit_shift"]) == 0.0
    small = steering_effect(model, ids, am, HOOK, atoms, 1e-3, pos)
    double = steering_effect(model, ids, am, HOOK, atoms, 2e-3, pos)
    assert small["mean_kl"] > 0 and small["n_atoms"] == 3 and small["n_contexts"] == 4
    ratio = double["logit_shift"][0] / small["logit_shift"][0]
    assert ratio == pytest.approx(2.0, rel=1e-2)
    # steering the input of layer 2 is steering the output of layer 1
    via_input = steering_effect(model, ids, am, "model.layers.2", atoms, 0.5, pos, "input")
    via_output = steering_effect(model, ids, am, HOOK, atoms, 0.5, pos)
    assert via_input["kl"] == pytest.approx(via_output["kl"], rel=1e-4)
