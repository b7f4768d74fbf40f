"""The AFA diagnostic (saekit.evaluation.afa) and its CLI command."""

import argparse
import json
import math

import pytest
import torch

import saekit
from saekit.data.stream import TensorStream
from saekit.evaluation.afa import afa_diagnostic, afa_quantities, decoder_coherence, zf_plot
from saekit.formats import native


def orthogonal_sae(d_in=10, n_latents=6, k=6):
    """TopK SAE whose atoms are exactly orthonormal and whose b_dec is orthogonal to them."""
    basis = torch.linalg.qr(torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(0)))[
        0
    ].T
    sae = saekit.create("topk", d_in=d_in, n_latents=n_latents, k=k)
    with torch.no_grad():
        sae.W_dec.copy_(basis[:n_latents])
        sae.W_enc.copy_(basis[:n_latents])
        sae.b_enc.zero_()
        sae.b_dec.copy_(2.0 * basis[n_latents])
    return sae


def test_orthogonal_atoms_give_zero_eps():
    sae = orthogonal_sae()
    gen = torch.Generator().manual_seed(1)
    codes = torch.rand(256, 6, generator=gen) * (torch.rand(256, 6, generator=gen) < 0.4)
    x = codes @ sae.W_dec.detach() + sae.b_dec.detach()
    q, summary = afa_diagnostic(sae, TensorStream(x, batch_size=64, shuffle=False), 256)
    assert q["nmse"].max() < 1e-10  # exact reconstruction
    assert torch.allclose(q["code_norm"], q["input_norm"], atol=1e-6)
    assert summary["median_eps_lbo_h"] < 1e-6 and summary["median_eps_lbo_l1"] < 1e-6
    assert summary["frac_outside_band_0.25"] == 0.0
    assert summary["coherence"]["eps_max"] < 1e-6


def test_hand_computed_example():
    """Atoms (1, 0) and (cos 60°, sin 60°), codes (2, 1), no bias: x = (2.5, √3/2),
    ‖x‖² = 7, ‖f‖² = 5, ‖f‖₁² = 9, h = 2: ε_h = 2/(1·5) = 0.4, ε_l1 = 2/(9 − 5) = 0.5 (the
    true cosine)."""
    c, s = 0.5, math.sqrt(3) / 2
    W = torch.tensor([[1.0, 0.0], [c, s]], dtype=torch.float64)
    codes = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    x = codes @ W
    q = afa_quantities(x, codes, W, torch.zeros(2, dtype=torch.float64))
    assert float(q["input_norm"][0]) == pytest.approx(math.sqrt(7))
    assert float(q["code_norm"][0]) == pytest.approx(math.sqrt(5))
    assert float(q["n_atoms"][0]) == 2
    assert float(q["eps_lbo_h"][0]) == pytest.approx(0.4)
    assert float(q["eps_lbo_l1"][0]) == pytest.approx(0.5)
    # Free norms: atom 2 twice as long with half the code is the same f̃.
    q2 = afa_quantities(x, codes * torch.tensor([1.0, 0.5]), W * torch.tensor([[1.0], [2.0]]), None)
    assert float(q2["eps_lbo_l1"][0]) == pytest.approx(0.5)
    # The decoder bias is one more atom: b = (0, 1) with coefficient 1, h = 3.
    b = torch.tensor([0.0, 1.0], dtype=torch.float64)
    q3 = afa_quantities(x + b, codes, W, b)
    # ‖x + b‖² = 2.5² + (√3/2 + 1)² ; ‖f̃‖² = 6 ; ‖f̃‖₁² = 16.
    gap = abs(2.5**2 + (s + 1) ** 2 - 6)
    assert float(q3["n_atoms"][0]) == 3
    assert float(q3["eps_lbo_h"][0]) == pytest.approx(gap / (2 * 6))
    assert float(q3["eps_lbo_l1"][0]) == pytest.approx(gap / (16 - 6))
    # One active atom: ε is undefined.
    q4 = afa_quantities(torch.tensor([[3.0, 0.0]]), torch.tensor([[3.0, 0.0]]), W.float(), None)
    assert math.isnan(float(q4["eps_lbo_h"][0]))


def test_decoder_coherence():
    W = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, -2.0]])
    coh = decoder_coherence(W, chunk=2)
    # cosines: (0,1) 0.5, (0,2) 0, (1,2) -√3/2.
    assert coh["eps_max"] == pytest.approx(math.sqrt(3) / 2)
    assert coh["mean_offdiag_cos"] == pytest.approx((0.5 - math.sqrt(3) / 2) / 3)
    assert coh["mean_abs_offdiag_cos"] == pytest.approx((0.5 + math.sqrt(3) / 2) / 3)


def test_over_and_under_activation_fractions_and_plot(tmp_path):
    sae = orthogonal_sae()
    with torch.no_grad():
        sae.b_dec.zero_()
    x = torch.tensor([[1.0] * 10, [2.0] * 10])
    codes = torch.zeros(2, 6)
    codes[0, 0] = 10.0  # ‖f̃‖ = 10 > ‖x‖ = √10
    codes[1, 0] = 1.0  # ‖f̃‖ = 1 < ‖x‖ = √40
    from saekit.evaluation.afa import summarise

    q = afa_quantities(x, codes, sae.W_dec.detach(), sae.b_dec.detach())
    s = summarise(q)
    assert s["frac_over_activated"] == 0.5 and s["frac_under_activated"] == 0.5
    assert s["frac_outside_band_1"] == 0.5  # only the lower edge exists at ε(h−1) = 1
    path = zf_plot(q, tmp_path / "zf.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_plot_and_summary(tmp_path):
    from saekit.cli import afa

    sae = saekit.create("topk", d_in=64, n_latents=128, k=4)
    native.save(sae, tmp_path / "sae")
    parser = argparse.ArgumentParser()
    afa.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["afa", str(tmp_path / "sae"), "--data", "synthetic:superposition", "--tokens", "512",
         "--batch-size", "256", "--out", str(tmp_path / "out"), "--threads", "1"]
    )  # fmt: skip
    assert afa.run(args) == 0
    summary = json.loads((tmp_path / "out" / "sae" / "afa.json").read_text())
    assert summary["n_tokens"] == 512 and 0 <= summary["frac_over_activated"] <= 1
    assert (tmp_path / "out" / "sae" / "zf.png").stat().st_size > 1000
