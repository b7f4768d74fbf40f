"""The mpsae architecture (saekit/sae/mpsae.py)."""

import pytest
import torch

import saekit.sae as sae_pkg
from saekit.sae import SAE, TrainContext, create
from saekit.sae.base import Forward
from saekit.sae.losses import auxk_loss
from saekit.sae.pursuit import naive_pursuit


def steps_of(sae, x, **knobs):
    """(codes, pursuit steps per token)."""
    codes, stats = sae.encode_with_stats(x, **knobs)
    return codes, stats["pursuit_steps"]


def model(**kw) -> SAE:
    fields = dict(d_in=16, n_latents=96, n_steps=12, seed=0) | kw
    return create("mpsae", **fields)


def inputs(n: int, d: int = 16, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_registry_round_trip():
    m = create("mpsae", d_in=16, n_latents=96, n_steps=7, sign="abs")
    assert m.architecture == "mpsae" and "mpsae" in sae_pkg.architectures()
    assert m.encoder is None and not hasattr(m, "W_enc")
    cfg = m.config_dict()
    assert cfg["architecture"] == "mpsae" and cfg["n_steps"] == 7 and cfg["sign"] == "abs"
    name = cfg.pop("architecture")
    again = sae_pkg.get_architecture(name)(sae_pkg.make_config(name, **cfg))
    again.load_state_dict(m.state_dict())
    x = inputs(8)
    torch.testing.assert_close(again.encode(x), m.encode(x))
    with pytest.raises(ValueError, match="sign"):
        create("mpsae", d_in=4, n_latents=8, sign="relu")


def test_encode_steps_and_sparsity_override():
    m = model(n_steps=10)
    x = inputs(32)
    with torch.no_grad():
        codes, steps = steps_of(m, x)
        assert steps.tolist() == [10] * 32 and ((codes != 0).sum(1) <= 10).all()
        errors = [(m.decode(m.encode(x, n_steps=t)) - x).norm(dim=1) for t in (1, 2, 4, 8, 32)]
        for before, after in zip(errors, errors[1:]):
            assert (after <= before + 1e-5).all()  # more steps never increase the error
        assert ((m.encode(x, n_steps=1) != 0).sum(1) == 1).all()
        _, rel_steps = steps_of(m, x, n_steps=64, relative_threshold=0.5)
        assert len(set(rel_steps.tolist())) > 2 and rel_steps.max() < 64


def test_training_forward_matches_naive_loop_in_fp64():
    m = model(sign="signed").double()
    with torch.no_grad():
        m.b_dec.copy_(0.1 * inputs(1, dtype=torch.float64)[0])
    x = inputs(24, dtype=torch.float64)
    out = m.training_forward(x, TrainContext())
    out.losses["mse"].backward()
    ours = (m.W_dec.grad.clone(), m.b_dec.grad.clone())
    m.zero_grad()
    codes, x_hat, _ = naive_pursuit(m.W_dec, x, m.b_dec, 12, "signed")
    (x_hat - x).pow(2).sum(-1).mean().backward()
    torch.testing.assert_close(out.codes, codes.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.x_hat, x_hat, atol=1e-12, rtol=0)
    assert (ours[0] - m.W_dec.grad).abs().max() < 1e-10
    assert (ours[1] - m.b_dec.grad).abs().max() < 1e-10
    # decode of the training codes is the training reconstruction (b_pre is b_dec)
    torch.testing.assert_close(m.decode(out.codes), out.x_hat.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("budget_mb", [1024.0, 0.01])  # full Gram; rows of G only
def test_training_with_adaptive_stop_matches_naive_loop(budget_mb):
    m = model(d_in=64, n_latents=300, relative_threshold=0.3, gram_budget_mb=budget_mb).double()
    x = inputs(64, d=64, dtype=torch.float64)
    out = m.training_forward(x, TrainContext())
    assert 1.0 < out.stats["pursuit_steps"] < 12.0
    out.losses["mse"].backward()
    grad = m.W_dec.grad.clone()
    m.zero_grad()
    _, x_hat, _ = naive_pursuit(m.W_dec, x, m.b_dec, 12, "nonneg", relative_threshold=0.3)
    (x_hat - x).pow(2).sum(-1).mean().backward()
    torch.testing.assert_close(out.x_hat, x_hat, atol=1e-12, rtol=0)
    assert (grad - m.W_dec.grad).abs().max() < 1e-10


def test_unit_norm_after_optimizer_step():
    m = model()
    with torch.no_grad():
        m.W_dec.mul_(torch.rand(96, 1) * 3 + 0.1)
    m.after_optimizer_step()
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(96), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sign", ["nonneg", "abs"])
def test_dead_atom_term_reaches_dead_atoms_only(sign):
    m = model(sign=sign, k_aux=64)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::3] = True
    out = m.training_forward(inputs(64), TrainContext(dead_mask=dead))
    out.losses["auxk"].backward()
    grad_norms = m.W_dec.grad.norm(dim=1)
    assert (grad_norms[dead] > 0).all()
    assert (grad_norms[~dead] == 0).all()
    assert m.b_dec.grad is None or (m.b_dec.grad == 0).all()
    # nothing dead: no term
    quiet = m.training_forward(inputs(8), TrainContext(dead_mask=torch.zeros(96, dtype=bool)))
    assert float(quiet.losses["auxk"]) == 0.0


def dead_atom_loss(m, residual, dead):
    """The AuxK term of an encoder-less SAE on a given residual."""
    zero = torch.zeros_like(residual)
    fwd = Forward(residual, residual, residual, None, None, zero, TrainContext())
    return auxk_loss(m, fwd, dead)


def test_dead_atom_term_lowers_with_a_step_on_dead_atoms():
    m = model(k_aux=32)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[:48] = True
    x = inputs(128)
    with torch.no_grad():
        residual = x - m.training_forward(x, TrainContext()).x_hat
    before = dead_atom_loss(m, residual, dead)
    before.backward()
    with torch.no_grad():
        m.W_dec -= 0.5 * m.W_dec.grad
    m.after_optimizer_step()
    assert float(dead_atom_loss(m, residual, dead).detach()) < 0.9 * float(before.detach())


def test_fold_input_scale_makes_the_model_act_on_raw_inputs():
    s = 7.5
    m = model(residual_threshold=2.0, n_steps=20)
    with torch.no_grad():
        m.b_dec.copy_(inputs(1, seed=3)[0])
    x = inputs(32, seed=4)
    with torch.no_grad():
        scaled_codes, scaled_steps = steps_of(m, x * s)
        m.fold_input_scale(s)
        raw_codes, raw_steps = steps_of(m, x)
        assert len(set(raw_steps.tolist())) > 1  # the absolute threshold was folded too
        assert torch.equal(raw_steps, scaled_steps)
        torch.testing.assert_close(raw_codes, scaled_codes / s, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.decode(raw_codes), m.decode(scaled_codes / s))


def test_b_pre_switch_off():
    m = model(use_b_pre=False)
    out = m.training_forward(inputs(16), TrainContext())
    out.losses["mse"].backward()
    assert not m.b_dec.requires_grad and m.b_dec.grad is None
    assert (m.b_dec == 0).all()


def test_gram_cache_follows_the_dictionary():
    m = model(d_in=64, n_latents=300, n_steps=16)
    x = inputs(4, d=64)
    with torch.no_grad():
        m.encode(inputs(256, d=64))  # a batch large enough to pick (and cache) the Gram path
        assert m.selector._gram is not None
        first = m.encode(x)
        new = torch.randn(300, 64, generator=torch.Generator().manual_seed(5))
        m.W_dec.data.copy_(new / new.norm(dim=1, keepdim=True))  # bypasses _version
        fresh = model(d_in=64, n_latents=300, n_steps=16, cache_gram=False)
        fresh.load_state_dict(m.state_dict())
        torch.testing.assert_close(m.encode(x), fresh.encode(x))
        assert not torch.allclose(first, m.encode(x))
