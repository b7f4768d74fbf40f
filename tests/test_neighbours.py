"""The defining behaviour of each neighbouring method: AbsTopK, Feature/Mutual Choice with
aux_zipf, Gated, ITDA and transcoders."""

import math

import pytest
import torch

import saekit
from saekit.data.stream import TensorStream
from saekit.sae import MissingExtrasError, TrainContext
from saekit.sae.losses.aux_zipf import dying_mask, zipf_fit
from saekit.sae.selectors.feature_choice import capacities
from saekit.training.trainer import TrainConfig, Trainer


def test_abstopk_keeps_the_largest_magnitudes_with_their_signs():
    sae = saekit.create("abstopk", d_in=3, n_latents=4, k=2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    codes = sae.encode(torch.tensor([[-5.0, 0.5, 2.0]]))
    # pre = [-5, 0.5, 2, -2.5]: the two largest |pre| are -5 and -2.5
    assert torch.equal(codes, torch.tensor([[-5.0, 0.0, 0.0, -2.5]]))
    assert sae.signed_codes
    topk = saekit.create("topk", d_in=3, n_latents=4, k=2)
    topk.load_state_dict(sae.state_dict())
    assert (topk.encode(torch.tensor([[-5.0, 0.5, 2.0]])) >= 0).all()


@pytest.mark.parametrize("rule", ["uniform", "zipf"])
def test_capacities_sum_to_the_budget(rule):
    density = torch.rand(50, generator=torch.Generator().manual_seed(0))
    m = capacities(8 * 100, 100, density, rule)
    assert int(m.sum()) == 800 and int(m.max()) <= 100
    if rule == "zipf":  # denser latents get at least as many tokens
        order = density.argsort(descending=True)
        assert (m[order][:-1] >= m[order][1:]).all() and m.max() > m.min()
    else:
        assert int(m.max() - m.min()) <= 1


@pytest.mark.parametrize("rule", ["uniform", "zipf"])
def test_every_feature_choice_latent_takes_exactly_its_capacity(rule):
    torch.manual_seed(0)
    sae = saekit.create("feature_choice", d_in=16, n_latents=40, k=4, capacity=rule)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every activation positive: capacities bind, not positivity
        sae.topk_density.copy_(torch.rand(40))
    x = torch.randn(100, 16)
    out = sae.training_forward(x, TrainContext())
    taken = (out.codes != 0).sum(0)
    expected = capacities(400, 100, sae.topk_density, rule)
    assert torch.equal(taken, expected)
    assert (out.codes != 0).sum() == 400  # average L0 exactly k, however it is spread
    per_token = (out.codes != 0).sum(1)
    assert per_token.min() != per_token.max()  # tokens get different numbers of latents


def synthetic_stream(n=4096, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(64, d, generator=gen)
    x = ((torch.rand(n, 64, generator=gen) < 0.06) * torch.rand(n, 64, generator=gen)) @ directions
    return TensorStream(x + 1.0, batch_size=128, seed=0)


def train(arch, steps=60, **opts):
    sae = saekit.create(arch, d_in=16, n_latents=64, **opts)
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=5, progress_bar=False,
                      dead_window_tokens=2048)  # fmt: skip
    trainer = Trainer({arch: sae}, synthetic_stream(), cfg)
    trainer.fit()
    return trainer


def test_feature_choice_inference_thresholds_give_about_k_per_token():
    trainer = train("feature_choice", k=4)
    sae = trainer.export(trainer.members[0])
    assert (sae.threshold >= 0).all()
    x = next(iter(synthetic_stream(seed=5))).x
    l0 = float((sae.encode(x) != 0).sum(1).float().mean())
    assert 2.5 < l0 < 6.0
    with pytest.raises(ValueError, match="no inference knob"):
        sae.encode(x, k=4)
    assert float((sae.encode(x, threshold_scale=0.5) != 0).sum(1).float().mean()) > l0


def test_mutual_choice_selects_as_batchtopk_does():
    mc = saekit.create("mutual_choice", d_in=16, n_latents=64, k=4)
    bt = saekit.create("batchtopk", d_in=16, n_latents=64, k=4)
    bt.load_state_dict({k: v for k, v in mc.state_dict().items() if k in bt.state_dict()})
    x = torch.randn(32, 16)
    a = mc.training_forward(x, TrainContext())
    b = bt.training_forward(x, TrainContext())
    assert torch.equal(a.codes, b.codes) and "aux_zipf" in a.losses and "auxk" in b.losses


def test_zipf_fit_recovers_the_exponent_and_flags_the_tail():
    rank = torch.arange(200, dtype=torch.float64)
    density = 0.3 * (rank + 1).pow(-0.8)
    log_c, a = zipf_fit(density, tail=0.2)
    assert a == pytest.approx(0.8, abs=1e-9) and log_c == pytest.approx(math.log(0.3), abs=1e-9)
    starved = density.clone()
    starved[-10:] *= 0.01  # the rarest ten far below the law
    dying = dying_mask(starved, tail=0.2, slack=0.1)
    assert dying[-10:].all() and not dying[:-10].any()


def test_aux_zipf_trains_dying_latents():
    sae = saekit.create("mutual_choice", d_in=16, n_latents=64, k=4)
    with torch.no_grad():
        density = 0.3 * torch.arange(1, 65, dtype=torch.float32).pow(-0.8)
        density[-5:] = 1e-6
        sae.latent_density.copy_(density)
    out = sae.training_forward(torch.randn(64, 16), TrainContext())
    assert out.stats["dying_frac"] == pytest.approx(5 / 64)
    out.losses["aux_zipf"].backward()
    reached = sae.W_dec.grad.norm(dim=1) > 0
    assert reached[-5:].all() and not reached[:-5].any()


def test_gated_magnitude_path_is_unpenalised():
    torch.manual_seed(0)
    sae = saekit.create("gated", d_in=16, n_latents=64)
    with torch.no_grad():
        sae.r_mag.normal_(std=0.3)
        sae.b_mag.normal_(std=0.3)
        sae.b_gate.normal_(std=0.3)
    out = sae.training_forward(torch.randn(64, 16) + 0.5, TrainContext(progress=1.0))
    assert set(out.losses) == {"mse", "l1", "gated_aux"}
    out.losses["l1"].backward(retain_graph=True)
    for p in (sae.r_mag, sae.b_mag):
        assert p.grad is None or (p.grad == 0).all()
    assert sae.b_gate.grad.abs().sum() > 0 and sae.W_enc.grad.abs().sum() > 0
    sae.zero_grad()
    # Frozen decoder: the atoms learn nothing from it (b_dec still does, as the encoder's
    # input centring, like every other term).
    out.losses["gated_aux"].backward(retain_graph=True)
    assert sae.W_dec.grad is None and sae.b_gate.grad.abs().sum() > 0
    sae.zero_grad()
    out.losses["mse"].backward()  # the magnitude path learns from reconstruction only
    assert sae.r_mag.grad.abs().sum() > 0 and sae.b_mag.grad.abs().sum() > 0
    assert sae.b_gate.grad is None or (sae.b_gate.grad == 0).all()


def test_gated_code_is_gate_times_magnitude():
    torch.manual_seed(1)
    sae = saekit.create("gated", d_in=8, n_latents=16)
    with torch.no_grad():
        for p in (sae.r_mag, sae.b_mag, sae.b_gate, sae.b_dec):
            p.normal_(std=0.5)
    x = torch.randn(10, 8)
    xc = x - sae.b_dec
    gate = xc @ sae.W_enc.T + sae.b_gate
    mag = (xc @ sae.W_enc.T) * sae.r_mag.exp() + sae.b_mag
    assert torch.allclose(sae.encode(x), (gate > 0) * mag.relu(), atol=1e-6)


def test_itda_adds_atoms_only_above_threshold_and_has_no_optimiser():
    sae = saekit.create("itda", d_in=4, n_latents=8, n_steps=1, loss_threshold=0.2).train()
    x = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [1.0, 0.1, 0, 0], [0, 0, 3.0, 0]])
    out = sae.training_forward(x, TrainContext())
    assert int(sae.n_atoms) == 4 and out.stats["n_atoms"] == 4.0  # empty dictionary: all miss
    assert torch.allclose(sae.W_dec[:4], x / x.norm(dim=1, keepdim=True))
    assert sae.atom_token[:4].tolist() == [0, 1, 2, 3]
    # Seen again, every token is its own atom: nothing exceeds τ, nothing is added.
    sae.training_forward(x, TrainContext())
    assert int(sae.n_atoms) == 4 and int(sae.tokens_seen) == 8
    # A near-copy of an atom is explained (loss ≪ τ); a new direction is not.
    new = torch.tensor([[1.0, 0.01, 0, 0], [0, 0, 0, 5.0]])
    sae.training_forward(new, TrainContext())
    assert int(sae.n_atoms) == 5 and torch.allclose(sae.W_dec[4], torch.tensor([0, 0, 0, 1.0]))
    assert not sae.learns_by_gradient


def test_itda_trains_on_a_stream_and_saves_only_its_atoms(tmp_path):
    trainer = train("itda", steps=20, n_steps=4, loss_threshold=0.3)
    member = trainer.members[0]
    assert member.optimizer is None and member.scheduler is None
    sae = member.sae
    grown = int(sae.n_atoms)
    assert 4 < grown <= 64 and int(sae.tokens_seen) == 20 * 128
    exported = trainer.export(member)
    assert exported.n_latents == grown and exported.W_dec.shape == (grown, 16)
    from saekit.formats import native

    native.save(exported, tmp_path / "itda")
    back = native.load(tmp_path / "itda")
    x = next(iter(synthetic_stream(seed=3))).x
    assert torch.equal(back.encode(x), exported.encode(x))
    assert (back.encode(x) != 0).sum(1).max() <= 4


def test_transcoder_reconstructs_its_target_through_the_skip_path():
    torch.manual_seed(0)
    sae = saekit.create("skip_transcoder", d_in=6, n_latents=24, k=3, d_out=5)
    assert sae.is_transcoder and sae.W_dec.shape == (24, 5) and sae.W_skip.shape == (6, 5)
    x, target = torch.randn(32, 6), torch.randn(32, 5)
    with pytest.raises(MissingExtrasError, match="extras\\['target'\\]"):
        sae.training_forward(x, TrainContext())
    out = sae.training_forward(x, TrainContext(extras={"target": target}))
    expected = (out.x_hat - target).pow(2).sum(-1).mean()
    assert torch.allclose(out.losses["mse"], expected) and out.x_hat.shape == (32, 5)
    out.losses["mse"].backward()
    assert sae.W_skip.grad.abs().sum() > 0
    # Any encoder architecture transcodes with transcode=true; its input is not centred.
    jump = saekit.create("jumprelu", d_in=6, n_latents=24, transcode=True, d_out=5)
    assert jump.is_transcoder and not jump.encoder.centre_input
    with pytest.raises(ValueError, match="transcoder options"):
        saekit.create("topk", d_in=6, n_latents=24, k=3, skip=True)


def test_transcoder_learns_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 8, generator=gen)
    M = torch.randn(8, 8, generator=gen)
    stream = TensorStream(x, batch_size=128, extras={"target": x @ M + 2.0})
    sae = saekit.create("skip_transcoder", d_in=8, n_latents=32, k=4)
    cfg = TrainConfig(steps=150, lr=1e-2, warmup_steps=5, progress_bar=False)
    trainer = Trainer({"t": sae}, stream, cfg)
    trainer.fit()
    out = trainer.export(trainer.members[0])
    y = x[:512] @ M + 2.0
    with torch.no_grad():
        fvu = float((out(x[:512]) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert fvu < 0.05
