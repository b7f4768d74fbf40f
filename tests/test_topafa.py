"""top-AFA: per-token k from the input norm (saekit.sae.topafa) against a brute-force loop."""

import math

import pytest
import torch

import saekit
from saekit.sae import TrainContext
from saekit.sae.selectors.norm_matching import afa_prefix_length

D, P = 10, 40


def make(**kw):
    sae = saekit.create("topafa", d_in=D, n_latents=P, seed=1, **kw)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.W_dec.mul_(0.5 + torch.rand(P, 1, generator=gen))  # free norms: scaling matters
        sae.b_dec.copy_(0.3 * torch.randn(D, generator=gen))
        sae.b_enc.copy_(0.2 * torch.randn(P, generator=gen))
    return sae


def brute_force_codes(sae, x, rule, cap):
    """Row by row with a full sort and a Python loop over prefix lengths."""
    out = torch.zeros(x.shape[0], sae.n_latents)
    norms = sae.W_dec.norm(dim=-1)
    for r in range(x.shape[0]):
        xc = x[r] - sae.b_dec
        a = (sae.W_enc @ xc + sae.b_enc).relu()
        order = sorted(range(sae.n_latents), key=lambda i: -float(a[i] * norms[i]))
        target = float(xc.norm())
        best_k, best_gap, total = None, math.inf, 0.0
        for k in range(1, cap + 1):
            total += float(a[order[k - 1]] * norms[order[k - 1]]) ** 2
            gap = abs(math.sqrt(total) - target)
            if rule == "nearest" and gap < best_gap:
                best_k, best_gap = k, gap
            if rule == "first_exceed" and math.sqrt(total) >= target:
                best_k = k
                break
        best_k = best_k or cap
        for i in order[:best_k]:
            out[r, i] = a[i]
    return out


@pytest.mark.parametrize("rule", ["nearest", "first_exceed"])
@pytest.mark.parametrize("k_max", [P, 6])
def test_per_input_k_matches_brute_force(rule, k_max):
    sae = make(rule=rule, k_max=k_max)
    x = 2 * torch.randn(50, D, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = sae.encode(x)
        ref = brute_force_codes(sae, x, rule, min(k_max, P - 1))
    assert torch.allclose(ours, ref, atol=1e-6)
    l0 = (ours != 0).sum(-1)
    assert l0.min() < l0.max()  # k really varies per input
    out = sae.training_forward(x, TrainContext())
    assert torch.allclose(out.codes, ref, atol=1e-6)


def test_prefix_rules_on_a_hand_example():
    # Prefix norms: √9 = 3, √(9+16) = 5, √(25+144) = 13.
    c = torch.tensor([[3.0, 4.0, 12.0]] * 4)
    target = torch.tensor([3.9, 4.1, 12.0, 20.0])
    assert afa_prefix_length(c, target, "nearest").tolist() == [1, 2, 3, 3]
    assert afa_prefix_length(c, target, "first_exceed").tolist() == [2, 2, 3, 3]


def test_afa_loss_and_cap_statistic():
    sae = make(afa_coeff=0.5, aux_coeff=0.0, k_max=2)
    x = 3 * torch.randn(8, D, generator=torch.Generator().manual_seed(8))
    out = sae.training_forward(x, TrainContext())
    f_norm = out.codes.norm(dim=-1)
    expected = 0.5 * D * (f_norm - x.norm(dim=-1)).pow(2).mean()
    assert torch.allclose(out.losses["afa"], expected, rtol=1e-5)
    assert 0 <= out.stats["cap_frac"] <= 1 and out.stats["cap_frac"] > 0
    sae.cfg.loss_target = "centred"
    centred = sae.training_forward(x, TrainContext()).losses["afa"]
    target = (x - sae.b_dec).norm(dim=-1)
    assert torch.allclose(centred, 0.5 * D * (f_norm - target).pow(2).mean(), rtol=1e-5)
    out.losses["afa"].backward()
    assert sae.W_enc.grad.abs().sum() > 0


def test_fold_input_scale_keeps_the_selection():
    sae = make().double()
    x = torch.randn(16, D, dtype=torch.float64) * 4
    s = 0.37
    ref = sae.encode(x * s) / s
    sae.fold_input_scale(s)
    assert torch.allclose(sae.encode(x), ref, atol=1e-10)


def test_config_validation():
    with pytest.raises(ValueError, match="rule"):
        saekit.create("topafa", d_in=4, n_latents=8, rule="closest")
    with pytest.raises(ValueError, match="k_max"):
        saekit.create("topafa", d_in=4, n_latents=8, k_max=0)


def test_default_cap_and_a_saved_cap_is_kept(tmp_path):
    from saekit.formats import native

    # the default sits above the L0 top-AFA reaches on LM activations (512 bound there)
    assert saekit.create("topafa", d_in=4, n_latents=8).cfg.k_max == 4096
    sae = make(k_max=6)
    native.save(sae, tmp_path / "afa")
    back = native.load(tmp_path / "afa")
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(2))
    assert back.cfg.k_max == 6
    with torch.no_grad():
        assert torch.equal(back.encode(x), sae.encode(x))
