"""The SAE protocol per architecture: registry, training paths against dense references,
normalisation folding, pseudo-gradients, auxiliary losses."""

import math

import pytest
import torch

import saekit
from saekit.sae import TrainContext, make_config
from saekit.sae.losses import reconstruction_loss
from saekit.sae.selectors.jumprelu import JumpReLUFunction as _JumpReLU
from saekit.sae.selectors.jumprelu import StepFunction as _Step

BASELINES = ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]


def make(arch, d_in=12, n_latents=48, **kw):
    if arch in {"topk", "batchtopk", "matryoshka"}:
        kw.setdefault("k", 4)
    return saekit.create(arch, d_in=d_in, n_latents=n_latents, **kw)


def test_registry_lists_baselines():
    assert set(BASELINES) <= set(saekit.architectures())


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError) as e:
        saekit.create("topkk", d_in=4, n_latents=8)
    msg = str(e.value)
    assert "unknown architecture 'topkk'" in msg
    for name in BASELINES:
        assert name in msg


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError) as e:
        make_config("topk", d_in=4, n_latents=8, kk=3)
    assert "no option(s) kk" in str(e.value) and "k_aux" in str(e.value)


def test_topk_rejects_k_larger_than_width():
    with pytest.raises(ValueError, match="k must be in"):
        make("topk", n_latents=8, k=9)


def test_topk_sparse_training_path_matches_dense_autograd():
    """Select-then-gather training gives the same loss and gradients as autograd through a
    dense TopK encode/decode (float64)."""
    torch.manual_seed(0)
    sae = make("topk", aux_coeff=0.0).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(32, 12, dtype=torch.float64)
    out = sae.training_forward(x, TrainContext())
    sum(out.losses.values()).backward()
    sparse_grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    codes = sae.encode(x)
    dense_loss = reconstruction_loss(x, sae.decode(codes))
    dense_loss.backward()
    assert torch.allclose(out.losses["mse"], dense_loss, atol=1e-12)
    assert torch.equal(out.codes != 0, codes != 0)
    for n, p in sae.named_parameters():
        assert torch.allclose(sparse_grads[n], p.grad, atol=1e-10), n


def test_batchtopk_keeps_k_times_batch_entries_and_calibrates():
    torch.manual_seed(1)
    sae = make("batchtopk", k=3)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive, so exactly k*B are kept
    x = torch.randn(20, 12)
    out = sae.training_forward(x, TrainContext())
    per_row = (out.codes != 0).sum(-1)
    assert int(per_row.sum()) == 3 * 20
    with pytest.raises(RuntimeError, match="not calibrated"):
        sae.encode(x)
    sae.calibrate(out.codes)
    assert float(sae.threshold) == pytest.approx(float(out.codes[out.codes > 0].min()))
    codes = sae.encode(x)
    pre = sae.pre_activations(x)
    assert torch.equal(codes != 0, pre > sae.threshold)


@pytest.mark.parametrize("arch", BASELINES)
def test_fold_input_scale_makes_sae_act_on_raw_activations(arch):
    """Trained on x*s; after folding, encode(x) = encode_trained(x*s)/s and decode matches."""
    torch.manual_seed(2)
    sae = make(arch).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.3)
        if arch in {"batchtopk", "matryoshka"}:
            sae.threshold.fill_(0.2)
    x = torch.randn(16, 12, dtype=torch.float64) * 7
    s = 0.37
    ref_codes = sae.encode(x * s) / s
    ref_recon = sae.decode(sae.encode(x * s)) / s
    sae.fold_input_scale(s)
    assert torch.allclose(sae.encode(x), ref_codes, atol=1e-10)
    assert torch.allclose(sae.decode(sae.encode(x)), ref_recon, atol=1e-10)


def test_relu_fold_decoder_norms_is_exact_and_unit_norm():
    torch.manual_seed(3)
    sae = make("relu").double()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(48, 1, dtype=torch.float64) * 3 + 0.1)
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(10, 12, dtype=torch.float64)
    before = sae(x)
    sae.fold_decoder_norms()
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(48, dtype=torch.float64))
    assert torch.allclose(sae(x), before, atol=1e-10)


def test_jumprelu_pseudo_gradients_match_hand_computation():
    # pre = [0.30, 0.52, 0.70], θ = 0.5, ε = 0.1: K((pre-θ)/ε) = 1 only where |pre-θ| < 0.05,
    # i.e. only for 0.52. ∂f/∂θ = -(θ/ε)·K = -5 there; ∂H/∂θ = -(1/ε)·K = -10 there.
    pre = torch.tensor([[0.30, 0.52, 0.70]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    f = _JumpReLU.apply(pre, theta, 0.1)
    assert torch.allclose(f, torch.tensor([[0.0, 0.52, 0.70]]))
    f.sum().backward()
    assert torch.allclose(theta.grad, torch.tensor([0.0, -5.0, 0.0]))
    assert torch.allclose(pre.grad, torch.tensor([[0.0, 1.0, 1.0]]))
    theta.grad = None
    pre.grad = None
    _Step.apply(pre, theta, 0.1).sum().backward()
    assert torch.allclose(theta.grad, torch.tensor([0.0, -10.0, 0.0]))
    assert pre.grad is None or torch.all(pre.grad == 0)


def test_jumprelu_target_l0_raises_pressure_when_too_dense():
    sae = make("jumprelu", target_l0=2.0, sparsity_coeff=0.1, target_lr=0.05, init_threshold=0.0)
    x = torch.randn(64, 12) * 3
    c0 = float(sae.sparsity_coeff)
    out = sae.training_forward(x, TrainContext())
    assert (out.codes != 0).sum(-1).float().mean() > 2.0
    assert float(sae.sparsity_coeff) == pytest.approx(c0 * math.exp(0.05), rel=1e-5)


def test_auxk_sends_gradient_to_dead_latents_only():
    torch.manual_seed(4)
    sae = make("topk", aux_coeff=1.0, k_aux=6)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:10] = True
    x = torch.randn(32, 12)
    out = sae.training_forward(x, TrainContext(dead_mask=dead))
    assert out.losses["auxk"].item() > 0
    out.losses["auxk"].backward()
    grad_rows = sae.W_enc.grad.abs().sum(-1)
    assert (grad_rows[:10] > 0).any()
    assert torch.all(grad_rows[10:] == 0)
    none_dead = sae.training_forward(x, TrainContext(dead_mask=torch.zeros(48, dtype=torch.bool)))
    assert float(none_dead.losses["auxk"]) == 0.0


def test_matryoshka_loss_is_mean_of_prefix_losses():
    torch.manual_seed(5)
    sae = make("matryoshka", n_latents=8, k=2, group_sizes=[3, 5], aux_coeff=0.0)
    x = torch.randn(6, 12)
    out = sae.training_forward(x, TrainContext())
    codes = out.codes
    first = codes.clone()
    first[:, 3:] = 0
    terms = [
        reconstruction_loss(x, sae.b_dec.expand_as(x)),
        reconstruction_loss(x, sae.decode(first)),
        reconstruction_loss(x, sae.decode(codes)),
    ]
    assert torch.allclose(out.losses["matryoshka_mse"], torch.stack(terms).mean(), atol=1e-5)
    with pytest.raises(ValueError, match="sum to n_latents"):
        make("matryoshka", n_latents=8, k=2, group_sizes=[3, 3])


def test_parallel_gradient_removed_for_unit_norm_decoders():
    torch.manual_seed(6)
    sae = make("topk")
    out = sae.training_forward(torch.randn(16, 12), TrainContext())
    sum(out.losses.values()).backward()
    sae.remove_parallel_decoder_grad()
    radial = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert radial.abs().max() < 1e-6


@pytest.mark.parametrize("shuffle", [False, True])
def test_gather_values_gradients_match_autograd_for_any_entry_order(shuffle):
    from saekit.sae.sparse import gather_values

    torch.manual_seed(7)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    W = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 0, 1, 2, 2, 2, 4, 5])
    cols = torch.tensor([1, 3, 3, 0, 4, 8, 2, 2])
    if shuffle:
        perm = torch.randperm(len(rows))
        rows, cols = rows[perm], cols[perm]
    weights = torch.randn(len(rows), dtype=torch.float64)
    (gather_values(x, W, b, rows, cols) * weights).sum().backward()
    ours = [t.grad.clone() for t in (x, W, b)]
    for t in (x, W, b):
        t.grad = None
    (((x[rows] * W[cols]).sum(-1) + b[cols]) * weights).sum().backward()
    for mine, ref in zip(ours, (x.grad, W.grad, b.grad)):
        assert torch.allclose(mine, ref, atol=1e-12)
