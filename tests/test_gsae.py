"""g-SAE: gradient-informed TopK selection (saekit.sae.gsae) and its synthetic recipe. Its two
inference modes in the model loop: test_eval_suite.py."""

import pytest
import torch

import saekit
from saekit.data.stream import TensorStream
from saekit.data.synthetic import SyntheticStream, make_recipe
from saekit.formats import native
from saekit.sae import TrainContext
from saekit.sae.selectors import TopK
from saekit.training.trainer import TrainConfig, Trainer

D, P, K = 12, 48, 4


def pair(**gsae_kw):
    """A TopK SAE and a g-SAE with identical weights (same seed), non-trivial biases."""
    topk = saekit.create("topk", d_in=D, n_latents=P, k=K, seed=3)
    gsae = saekit.create("gsae", d_in=D, n_latents=P, k=K, seed=3, **gsae_kw)
    gen = torch.Generator().manual_seed(0)
    b_dec, b_enc = torch.randn(D, generator=gen), 0.3 * torch.randn(P, generator=gen)
    for sae in (topk, gsae):
        with torch.no_grad():
            sae.b_dec.copy_(b_dec)
            sae.b_enc.copy_(b_enc)
    return topk, gsae


def data(n=64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=gen), 5 * torch.randn(n, D, generator=gen)


def test_beta_zero_is_topk_exactly():
    topk, gsae = pair(beta=0.0)
    x, g = data()
    assert torch.equal(gsae.encode(x, extras={"grad": g}), topk.encode(x))
    ctx = TrainContext(extras={"grad": g}, dead_mask=torch.arange(P) < 10)
    a, b = topk.training_forward(x, ctx), gsae.training_forward(x, ctx)
    assert torch.equal(a.codes, b.codes)
    assert all(torch.equal(a.losses[k], b.losses[k]) for k in ("mse", "auxk"))


def test_beta_zero_trains_identically_to_topk():
    x, g = data(n=512)
    stream = lambda: TensorStream(x, batch_size=64, extras={"grad": g})  # noqa: E731
    cfg = TrainConfig(steps=6, warmup_steps=2, progress_bar=False, dead_window_tokens=128)
    topk, gsae = pair(beta=0.0)
    Trainer({"t": topk}, stream(), cfg).fit()
    Trainer({"g": gsae}, stream(), cfg).fit()
    for (name, p), q in zip(topk.named_parameters(), gsae.parameters()):
        assert torch.equal(p, q), name


def test_gradient_promotes_small_high_impact_latent():
    """Latent 0 has a small activation but the gradient lies along its atom; with β large
    enough it replaces the larger latent 1 (k = 1); the kept value is the plain activation."""
    sae = saekit.create("gsae", d_in=2, n_latents=2, k=1, beta=1.0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(2))
        sae.W_enc.copy_(torch.eye(2))
    x = torch.tensor([[0.2, 1.0]])
    g = torch.tensor([[10.0, 0.0]])  # score: 0.2·(1 + 10) = 2.2 vs 1.0·(1 + 0) = 1.0
    assert torch.allclose(sae.encode(x, extras={"grad": g}), torch.tensor([[0.2, 0.0]]))
    sae.cfg.beta = 0.3  # 0.2·(1 + 3) = 0.8 < 1.0
    assert torch.allclose(sae.encode(x, extras={"grad": g}), torch.tensor([[0.0, 1.0]]))
    sae.cfg.beta, sae.cfg.clip = 1.0, 2.0  # |W g| clipped to 2: 0.2·3 = 0.6 < 1.0
    assert torch.allclose(sae.encode(x, extras={"grad": g}), torch.tensor([[0.0, 1.0]]))
    sae.cfg.clip, sae.cfg.grad_norm, sae.cfg.beta = None, "unit", 5.0  # 0.2·6 = 1.2 > 1.0
    assert torch.allclose(sae.encode(x, extras={"grad": g * 1e-3}), torch.tensor([[0.2, 0.0]]))


def test_inactive_latents_are_never_promoted():
    sae = saekit.create("gsae", d_in=2, n_latents=2, k=1, beta=1e6)
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(2))
        sae.W_enc.copy_(torch.eye(2))
    codes = sae.encode(torch.tensor([[-0.5, 0.1]]), extras={"grad": torch.tensor([[1e3, 0.0]])})
    assert torch.allclose(codes, torch.tensor([[0.0, 0.1]]))


def test_topk_mode_and_missing_gradient_error():
    topk, gsae = pair(beta=2.0)
    x, g = data()
    assert torch.equal(gsae.with_selector(TopK()).encode(x), topk.encode(x))
    assert not torch.equal(gsae.encode(x, extras={"grad": g}), topk.encode(x))
    with pytest.raises(ValueError, match=r"'grad': \[batch, d_in\].*with_selector\(.*TopK\(\)\)"):
        gsae.encode(x)
    with pytest.raises(ValueError, match="'grad'"):
        gsae.training_forward(x, TrainContext())
    with pytest.raises(ValueError, match="shape of x"):
        gsae.encode(x, extras={"grad": g[:, :3]})
    with pytest.raises(ValueError, match="no inference knob.*mode; its knobs: k"):
        gsae.encode(x, extras={"grad": g}, mode="dense")
    gsae.cfg.inference = "topk"
    assert torch.equal(gsae.encode(x), topk.encode(x))


@pytest.mark.parametrize("kw", [{}, {"clip": 0.7}, {"grad_norm": "unit", "clip": 0.3}])
def test_fold_input_scale_acts_on_raw_activations_and_gradients(kw):
    """Trained on x' = s·x with g' = g/s (what the trainer feeds); after folding,
    encode(x, g) = encode_trained(s·x, g/s) / s."""
    _, sae = pair(beta=3.0, **kw)
    sae = sae.double()
    x, g = (t.double() for t in data())
    s = 0.37
    ref = sae.encode(x * s, extras={"grad": g / s}) / s
    sae.fold_input_scale(s)
    assert torch.allclose(sae.encode(x, extras={"grad": g}), ref, atol=1e-12)
    assert sae.cfg.beta == pytest.approx(3.0 if kw.get("grad_norm") == "unit" else 3.0 / s)


def test_save_load_round_trip(tmp_path):
    _, sae = pair(beta=0.5, clip=2.0, inference="topk")
    x, g = data()
    native.save(sae, tmp_path / "g")
    back = native.load(tmp_path / "g")
    assert back.cfg.beta == 0.5 and back.cfg.clip == 2.0 and back.cfg.inference == "topk"
    back.cfg.inference = sae.cfg.inference = "gradient"
    assert torch.equal(back.encode(x, extras={"grad": g}), sae.encode(x, extras={"grad": g}))


def test_config_validation():
    with pytest.raises(ValueError, match="beta"):
        saekit.create("gsae", d_in=4, n_latents=8, k=2, beta=-1.0)
    with pytest.raises(ValueError, match="grad_norm"):
        saekit.create("gsae", d_in=4, n_latents=8, k=2, grad_norm="l1")
    with pytest.raises(ValueError, match="inference"):
        saekit.create("gsae", d_in=4, n_latents=8, k=2, inference="batch")


# ---- the planted-readout recipe ---------------------------------------------------------


def test_readout_recipe_gradient_is_the_readout_loss_gradient():
    recipe = make_recipe("readout:n_features=64,d_in=16,n_planted=4", seed=2)
    batch = SyntheticStream(recipe, batch_size=32, seed=1).batch(0)
    x = batch.x.clone().requires_grad_(True)
    recipe.loss(x).sum().backward()
    assert torch.allclose(batch.extras["grad"], x.grad, atol=1e-5)
    G = recipe.dictionary
    # Planted directions are orthonormal and orthogonal to every ordinary feature.
    assert torch.allclose(G[:4] @ G[:4].T, torch.eye(4), atol=1e-6)
    assert (G[:4] @ G[4:].T).abs().max() < 1e-6
    codes = batch.extras["codes"]
    assert codes[:, :4].max() <= recipe.scale and codes[:, 4:].max() > 0.5
    # The gradient sees the planted features only.
    assert torch.allclose(batch.extras["grad"], (codes[:, :4] * recipe.gain**2) @ G[:4], atol=1e-4)
