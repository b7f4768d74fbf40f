"""The AFA diagnostic (saekit.evaluation.afa): the three ε_LBO forms by hand, decoder
coherence, over/under-activation, top-AFA's capped tokens, and the afa group via `saekit eval`."""

import json
import math

import pytest
import torch

import saekit
from saekit.data.stream import TensorStream
from saekit.evaluation.afa import afa_diagnostic, afa_quantities, decoder_coherence, summarise
from saekit.evaluation.base import EvalSettings
from saekit.evaluation.evaluate import evaluate_sae
from saekit.formats import native


def orthogonal_sae(d_in=10, n_latents=6, k=6):
    """TopK SAE whose atoms are exactly orthonormal and whose b_dec is orthogonal to them."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))[0].T
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
    q, summary = afa_diagnostic(sae, x, batch_size=64)
    assert q["nmse"].max() < 1e-10  # exact reconstruction
    assert torch.allclose(q["code_norm"], q["input_norm"], atol=1e-6)
    for form in ("width", "active", "l1"):
        assert summary[f"median_eps_lbo_{form}"] < 1e-6
    assert summary["frac_outside_band_0.25"] == 0.0
    assert summary["coherence"]["eps_max"] < 1e-6
    assert "selection" not in summary  # TopK reports no per-token selection stats


def test_hand_computed_example():
    """Atoms (1, 0) and (cos 60°, sin 60°), codes (2, 1), no bias: x = (2.5, √3/2),
    ‖x‖² = 7, ‖f‖² = 5, ‖f‖₁² = 9, h = 2: ε_active = 2/(1·5) = 0.4, ε_l1 = 2/(9 − 5) = 0.5
    (the true cosine); with p = 2 latents ε_width = 2/((2 − 1)·5) = 0.4 too."""
    c, s = 0.5, math.sqrt(3) / 2
    W = torch.tensor([[1.0, 0.0], [c, s]], dtype=torch.float64)
    codes = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    x = codes @ W
    q = afa_quantities(x, codes, W, torch.zeros(2, dtype=torch.float64))
    assert float(q["input_norm"][0]) == pytest.approx(math.sqrt(7))
    assert float(q["code_norm"][0]) == pytest.approx(math.sqrt(5))
    assert float(q["n_atoms"][0]) == 2
    assert float(q["eps_lbo_active"][0]) == pytest.approx(0.4)
    assert float(q["eps_lbo_width"][0]) == pytest.approx(0.4)
    assert float(q["eps_lbo_l1"][0]) == pytest.approx(0.5)
    # Three more latents that stay silent: h is still 2, the width p = 5.
    wide = torch.cat([W, torch.eye(2, dtype=torch.float64), W[:1]])
    q5 = afa_quantities(
        x, torch.cat([codes, torch.zeros(1, 3, dtype=torch.float64)], 1), wide, None
    )
    assert float(q5["eps_lbo_active"][0]) == pytest.approx(0.4)
    assert float(q5["eps_lbo_width"][0]) == pytest.approx(2 / (4 * 5))
    # Free norms: atom 2 twice as long with half the code is the same f̃.
    q2 = afa_quantities(x, codes * torch.tensor([1.0, 0.5]), W * torch.tensor([[1.0], [2.0]]), None)
    assert float(q2["eps_lbo_l1"][0]) == pytest.approx(0.5)
    # The decoder bias is one more atom: b = (0, 1) with coefficient 1, h = 3, p = 2.
    b = torch.tensor([0.0, 1.0], dtype=torch.float64)
    q3 = afa_quantities(x + b, codes, W, b)
    # ‖x + b‖² = 2.5² + (√3/2 + 1)² ; ‖f̃‖² = 6 ; ‖f̃‖₁² = 16.
    gap = abs(2.5**2 + (s + 1) ** 2 - 6)
    assert float(q3["n_atoms"][0]) == 3
    assert float(q3["eps_lbo_active"][0]) == pytest.approx(gap / (2 * 6))
    assert float(q3["eps_lbo_width"][0]) == pytest.approx(gap / (1 * 6))
    assert float(q3["eps_lbo_l1"][0]) == pytest.approx(gap / (16 - 6))
    # One active atom: ε_active and ε_l1 are undefined, ε_width is not.
    q4 = afa_quantities(torch.tensor([[3.0, 1.0]]), torch.tensor([[3.0, 0.0]]), W.float(), None)
    assert math.isnan(float(q4["eps_lbo_active"][0])) and math.isnan(float(q4["eps_lbo_l1"][0]))
    assert float(q4["eps_lbo_width"][0]) == pytest.approx(1 / 9)


def test_decoder_coherence():
    W = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, -2.0]])
    coh = decoder_coherence(W, chunk=2)
    # cosines: (0,1) 0.5, (0,2) 0, (1,2) -√3/2.
    assert coh["eps_max"] == pytest.approx(math.sqrt(3) / 2)
    assert coh["mean_offdiag_cos"] == pytest.approx((0.5 - math.sqrt(3) / 2) / 3)
    assert coh["mean_abs_offdiag_cos"] == pytest.approx((0.5 + math.sqrt(3) / 2) / 3)


def test_over_and_under_activation_fractions():
    sae = orthogonal_sae()
    with torch.no_grad():
        sae.b_dec.zero_()
    x = torch.tensor([[1.0] * 10, [2.0] * 10])
    codes = torch.zeros(2, 6)
    codes[0, 0] = 10.0  # ‖f̃‖ = 10 > ‖x‖ = √10
    codes[1, 0] = 1.0  # ‖f̃‖ = 1 < ‖x‖ = √40
    s = summarise(afa_quantities(x, codes, sae.W_dec.detach(), sae.b_dec.detach()))
    assert s["frac_over_activated"] == 0.5 and s["frac_under_activated"] == 0.5
    assert s["frac_outside_band_1"] == 0.5  # only the lower edge exists at ε(h−1) = 1


def capping_topafa():
    """top-AFA on orthonormal atoms e1..e4 with k_max = 1: a token needing two atoms to reach
    its norm is capped, one needing a single atom is not."""
    sae = saekit.create("topafa", d_in=4, n_latents=4, k_max=1)
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(4))
        sae.W_enc.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.tensor([[3.0, 0, 0, 0], [3.0, 4.0, 0, 0], [0, 0, 5.0, 0], [1.0, 1.0, 1.0, 0]])
    return sae, x  # capped: tokens 1 and 3 -> 1/2


def test_topafa_capped_tokens_are_reported_by_core_and_afa():
    sae, x = capping_topafa()
    doc = evaluate_sae(
        sae, TensorStream(x, 4, shuffle=False), EvalSettings(groups=("core", "afa"), n_tokens=4)
    )
    assert doc["core"]["selection"] == {"cap_frac": 0.5}
    assert doc["afa"]["selection"] == {"cap_frac": 0.5}


def test_afa_group_through_saekit_eval(tmp_path):
    from saekit.cli.main import main

    sae = saekit.create("topk", d_in=64, n_latents=128, k=4)
    native.save(sae, tmp_path / "sae")
    out = tmp_path / "all.json"
    args = ["eval", str(tmp_path / "sae"), "--data", "synthetic:superposition", "-g", "core,afa",
            "--tokens", "512", "--batch-size", "256", "--out", str(out), "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    afa = json.loads(out.read_text())[str(tmp_path / "sae")]["afa"]
    assert afa["n_tokens"] == 512 and 0 <= afa["frac_over_activated"] <= 1
    assert len(afa["zf_sample"]["input_norm"]) == len(afa["zf_sample"]["code_norm"]) == 512
    # h − 1 ≤ k = 4 < p − 1 = 127 on every token, so the width form is the smaller
    assert afa["median_eps_lbo_width"] < afa["median_eps_lbo_active"]


def test_a_standardised_sae_is_diagnosed_on_the_tokens_its_coder_reads():
    """A per-token standardised SAE codes (x − mean)/std: its ε_LBO and norm ratio on raw x
    are those of the same weights without standardisation on the standardised tokens, not
    of raw tokens whose norm is ~20x the code's."""
    from saekit.sae.standardise import standardise

    gen = torch.Generator().manual_seed(0)
    x = 7 + 20 * torch.randn(128, 16, generator=gen)
    std_sae = saekit.create("topk", d_in=16, n_latents=32, k=4, standardise_tokens=True, seed=1)
    plain = saekit.create("topk", d_in=16, n_latents=32, k=4, seed=1)
    plain.load_state_dict(std_sae.state_dict())
    _, got = afa_diagnostic(std_sae, x)
    _, want = afa_diagnostic(plain, standardise(x)[0])
    for key in ("median_eps_lbo_width", "median_norm_ratio", "frac_over_activated"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert 0.2 < got["median_norm_ratio"] < 5  # raw tokens would give ~0.05
