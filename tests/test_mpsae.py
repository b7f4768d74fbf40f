"""The mpsae architecture (saekit/sae/mpsae.py)."""

import pickle

import pytest
import torch

import saekit.sae as sae_pkg
from saekit.sae import SAE, TrainContext, create
from saekit.sae.base import Forward
from saekit.sae.losses import auxk_loss
from saekit.sae.pursuit import gram_matrix, naive_pursuit, select_atoms


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


# ---- gram_refresh_every: the training pursuit's stale Gram -----------------------------------
def perturbed_steps(m, x, n_steps):
    """Training forwards, each on a new dictionary (as after an optimiser step): yields
    (the dictionary of that step, the training output)."""
    gen = torch.Generator().manual_seed(3)
    for t in range(n_steps):
        if t:
            with torch.no_grad():
                noise = torch.randn(m.W_dec.shape, generator=gen, dtype=m.W_dec.dtype)
                m.W_dec.add_(0.05 * noise)
            m.after_optimizer_step()
        yield m.W_dec.detach().clone(), m.training_forward(x, TrainContext())


def gram_model(gram_refresh_every: int = 1, **kw):  # large enough for the Gram path
    return model(d_in=64, n_latents=128, n_steps=8, gram_refresh_every=gram_refresh_every, **kw)


def test_gram_refresh_every_1_selects_with_the_exact_gram_every_step():
    m, x = gram_model(), inputs(256, d=64)
    for D, out in perturbed_steps(m, x, 3):
        assert torch.equal(m.selector._gram[1], gram_matrix(D))
        exact = select_atoms(D, x - m.b_dec.detach(), 8, method="gram", gram=gram_matrix(D))
        assert torch.equal(out.code.cols.view(256, 8), exact.indices)
    assert set(m.state_dict()) == set(gram_model().state_dict())


def test_stale_gram_is_the_one_built_at_the_last_refresh():
    m, x = gram_model(gram_refresh_every=3), inputs(256, d=64)
    built, changed = None, 0
    for t, (D, out) in enumerate(perturbed_steps(m, x, 7)):
        if t % 3 == 0:
            built = gram_matrix(D)
        assert torch.equal(m.selector._gram[1], built), t
        sel = select_atoms(D, x - m.b_dec.detach(), 8, method="gram", gram=built)
        assert torch.equal(out.code.cols.view(256, 8), sel.indices), t
        exact = select_atoms(D, x - m.b_dec.detach(), 8, method="gram", gram=gram_matrix(D))
        changed += int((sel.indices != exact.indices).any())
    assert changed >= 2  # the stale Gram really changed selections
    # Inference always selects with the exact Gram: the same codes as exact MP.
    ref = gram_model()
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("gram_")})
    with torch.no_grad():
        assert torch.equal(m.encode(x), ref.encode(x))


def test_replay_gradient_is_exact_over_the_stale_selection():
    """Autograd through the dense MP recursion along the selected indices, in fp64."""
    m, x = gram_model(gram_refresh_every=4).double(), inputs(64, d=64, dtype=torch.float64)
    *_, (_, out) = perturbed_steps(m, x, 3)  # the third step selects with a 2-step-old Gram
    out.losses["mse"].backward()
    ours = m.W_dec.grad.clone(), m.b_dec.grad.clone()
    m.zero_grad()
    J = out.code.cols.view(64, 8)
    r, x_hat = x - m.b_dec, m.b_dec.expand_as(x)
    for t in range(8):
        onehot = torch.nn.functional.one_hot(J[:, t], 128).double()
        atom = onehot @ m.W_dec
        alpha = (atom * r).sum(1, keepdim=True)
        r, x_hat = r - alpha * atom, x_hat + alpha * atom
    (x_hat - x).pow(2).sum(-1).mean().backward()
    torch.testing.assert_close(out.x_hat, x_hat, atol=1e-12, rtol=0)
    assert (ours[0] - m.W_dec.grad).abs().max() < 1e-10
    assert (ours[1] - m.b_dec.grad).abs().max() < 1e-10


def test_stale_gram_state_travels_in_checkpoints_not_in_copies():
    m, x = gram_model(gram_refresh_every=3), inputs(256, d=64)
    list(perturbed_steps(m, x, 2))
    state = m.state_dict()
    assert int(state["gram_age"]) == 1
    back = gram_model(gram_refresh_every=3)
    back.load_state_dict(state)
    a = m.training_forward(x, TrainContext()).code.cols
    b = back.training_forward(x, TrainContext()).code.cols
    assert torch.equal(a, b) and torch.equal(m.selector._gram[1], back.selector._gram[1])
    copy = pickle.loads(pickle.dumps(m))  # exports and held-out probes are copies
    assert not any(k.startswith("gram_") for k in copy.state_dict())
