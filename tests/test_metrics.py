"""Intrinsic metrics against values computed by hand (docs/evaluation.md#core)."""

import math

import numpy as np
import pytest
import torch

from saekit.evaluation.metrics import (
    ReconstructionMetrics,
    density_histogram,
    max_cos_to_others,
    plot_density_histogram,
    weight_geometry,
)

# Two tokens in 2 dimensions, 3 latents:
#   x     = [1, 0], [0, 2]
#   x_hat = [1, 0], [1, 2]      e = x − x_hat = [0, 0], [−1, 0]  ->  ‖e‖² = 0, 1
#   codes = [1, 0, 0], [0, −2, 0]
X = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
X_HAT = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
CODES = torch.tensor([[1.0, 0.0, 0.0], [0.0, -2.0, 0.0]])

# By hand:
#   l0 = (1 + 1)/2 = 1;  l1 = (1 + 2)/2 = 1.5 (|f| summed: the −2 counts as 2)
#   mse = (0 + 1)/2 = 0.5
#   x̄ = [0.5, 1];  Σ‖x − x̄‖² = (0.25 + 1) + (0.25 + 1) = 2.5  ->  fvu = 1/2.5 = 0.4, ev = 0.6
#   SAEBench 0.6.0: E‖x‖² = (1 + 4)/2 = 2.5, s = 2.5/2 = 1.25, total = 2.5 − 1.5625 = 0.9375
#     ev_saebench = 1 − 0.5/0.9375 = 0.4666...
#   cosine: token 1 = 1; token 2 = ⟨[0,2],[1,2]⟩/(2·√5) = 4/(2√5) = 0.894427  -> mean 0.947214
#   l2 ratio: 1/1 = 1; √5/2 = 1.118034  -> mean 1.059017
#   density = [1/2, 1/2, 0]: alive 2/3, dead 1/3, dense(>1%) 2/3, dense(>10%) 2/3
HAND = {
    "n_tokens": 2.0,
    "l0": 1.0,
    "l1": 1.5,
    "mse": 0.5,
    "fvu": 0.4,
    "ev": 0.6,
    "ev_saebench_v060": 1 - 0.5 / 0.9375,
    "cosine": (1 + 4 / (2 * math.sqrt(5))) / 2,
    "l2_ratio": (1 + math.sqrt(5) / 2) / 2,
    "frac_alive": 2 / 3,
    "frac_dead": 1 / 3,
    "frac_dense_1pct": 2 / 3,
    "frac_dense_10pct": 2 / 3,
}


def test_one_batch_by_hand():
    m = ReconstructionMetrics(n_latents=3)
    m.update(X, X_HAT, CODES)
    out = m.compute()
    for key, value in HAND.items():
        assert out[key] == pytest.approx(value, rel=1e-9), key
    # One batch of N = 2: mse_saebench = mean(0/2, 1/2) = 0.25.
    assert out["mse_saebench_v060"] == pytest.approx(0.25)
    # γ = Σ‖x̂‖² / Σ⟨x, x̂⟩ = (1 + 5)/(1 + 4) = 1.2.
    assert out["relative_reconstruction_bias"] == pytest.approx(1.2)
    torch.testing.assert_close(m.density(), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))


def test_streaming_over_batches_matches_and_per_batch_metrics_change():
    m = ReconstructionMetrics(n_latents=3)
    m.update(X[:1], X_HAT[:1], CODES[:1])
    m.update(X[1:], X_HAT[1:], CODES[1:])
    out = m.compute()
    # Ratio-of-sums metrics do not depend on how tokens are batched.
    for key, value in HAND.items():
        assert out[key] == pytest.approx(value, rel=1e-9), key
    # Batches of 1 token: mse_saebench = mean(0/1, 1/1) = 0.5;
    # γ per batch = 1/1 and 5/4 -> mean 1.125.
    assert out["mse_saebench_v060"] == pytest.approx(0.5)
    assert out["relative_reconstruction_bias"] == pytest.approx(1.125)


def test_mask_excludes_tokens():
    # A third, huge token is masked out: every metric equals the two-token values.
    x = torch.cat([X, torch.tensor([[100.0, -50.0]])])
    x_hat = torch.cat([X_HAT, torch.zeros(1, 2)])
    codes = torch.cat([CODES, torch.tensor([[0.0, 0.0, 9.0]])])
    m = ReconstructionMetrics(n_latents=3)
    m.update(x, x_hat, codes, mask=torch.tensor([True, True, False]))
    out = m.compute()
    for key, value in HAND.items():
        assert out[key] == pytest.approx(value, rel=1e-9), key
    assert out["mse_saebench_v060"] == pytest.approx(0.25)


def test_tiny_input_norm_uses_denominator_one():
    # ‖x‖ = 0 < 1e-4: l2 ratio = ‖x̂‖/1 = ‖[0.3, 0.4]‖ = 0.5; cosine with a zero vector = 0.
    m = ReconstructionMetrics(n_latents=1)
    m.update(torch.zeros(1, 2), torch.tensor([[0.3, 0.4]]), torch.ones(1, 1))
    out = m.compute()
    assert out["l2_ratio"] == pytest.approx(0.5)
    assert out["cosine"] == pytest.approx(0.0)
    assert math.isnan(out["fvu"])  # one token: zero centred variance, FVU undefined


def test_ev_variants_differ_on_anisotropic_data():
    # A large mean direction: the corrected EV centres it away, SAEBench 0.6.0 does not.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 8, generator=gen) + torch.tensor([10.0] + [0.0] * 7)
    x_hat = x + 0.1 * torch.randn(1000, 8, generator=gen)
    m = ReconstructionMetrics(n_latents=4)
    m.update(x, x_hat, torch.zeros(1000, 4))
    out = m.compute()
    x64, e64 = x.double(), (x - x_hat).double()
    fvu = e64.pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum()
    assert out["ev"] == pytest.approx(1 - fvu.item(), rel=1e-9)
    assert out["ev_saebench_v060"] > out["ev"] + 1e-3


def test_bad_input_raises():
    m = ReconstructionMetrics(n_latents=3)
    with pytest.raises(ValueError, match="x_hat shape"):
        m.update(X, X_HAT[:, :1], CODES)
    with pytest.raises(ValueError, match="n_latents=3"):
        m.update(X, X_HAT, CODES[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        m.update(X, torch.full_like(X, float("nan")), CODES)
    with pytest.raises(ValueError, match="mask"):
        m.update(X, X_HAT, CODES, mask=torch.ones(2))
    with pytest.raises(ValueError, match="no tokens"):
        m.compute()


def test_density_histogram_by_hand():
    # log10 of the alive densities: −3, −2, −1, −1; range [−3, −1] in 3 bins of width 2/3:
    # [−3, −2.33) holds −3; [−2.33, −1.67) holds −2; [−1.67, −1] holds −1, −1. One dead.
    hist = density_histogram(torch.tensor([0.0, 0.001, 0.01, 0.1, 0.1]), bins=3)
    assert hist.n_dead == 1
    assert hist.counts.tolist() == [1, 1, 2]
    np.testing.assert_allclose(hist.edges, [-3, -3 + 2 / 3, -3 + 4 / 3, -1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        density_histogram(torch.tensor([0.5, 1.5]))


def test_plot_density_histogram_writes_png(tmp_path):
    path = plot_density_histogram(torch.tensor([0.0, 0.001, 0.01, 0.1]), tmp_path / "d.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("chunk", [1, 2, 4096])
def test_weight_geometry_by_hand(chunk):
    # Decoder atoms d0 = [1, 0], d1 = [0.6, 0.8], d2 = [0, 1]:
    #   cos(d0, d1) = 0.6, cos(d0, d2) = 0, cos(d1, d2) = 0.8
    #   max to another atom: 0.6, 0.8, 0.8  -> mean 2.2/3
    # Encoder rows [2, 0], [0, 1], [0, 1] (norms do not matter) -> [1, 0], [0, 1], [0, 1]:
    #   max to another row: 0, 1, 1  -> mean 2/3
    #   cos(e_i, d_i): 1, 0.8, 1  -> mean 2.8/3
    W_dec = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    W_enc = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    out = weight_geometry(W_dec, W_enc, chunk=chunk)
    assert out["dec_max_cos"] == pytest.approx(2.2 / 3, rel=1e-6)
    assert out["enc_max_cos"] == pytest.approx(2 / 3, rel=1e-6)
    assert out["enc_dec_cos"] == pytest.approx(2.8 / 3, rel=1e-6)
    torch.testing.assert_close(max_cos_to_others(W_dec, chunk), torch.tensor([0.6, 0.8, 0.8]))
    assert set(weight_geometry(W_dec)) == {"dec_max_cos"}
