"""The contract every registered architecture keeps, parametrised over saekit.architectures(),
so a new architecture is tested without editing a list: file round trip, input-scale
folding, unit atoms, gradients against a dense autograd reference, exact resume, config
errors. Options are chosen by field name (k, n_steps, target_l0, k_max), not by architecture.
"""

import dataclasses
import functools

import pytest
import torch
from train_helpers import InterruptAt

import saekit
from saekit.data.stream import TensorStream
from saekit.formats import native
from saekit.sae import TrainContext, get_architecture
from saekit.sae.losses import reconstruction_loss
from saekit.sae.pursuit import naive_pursuit
from saekit.training.trainer import TrainConfig, Trainer

ARCHS = saekit.architectures()
D_IN, N_LATENTS, BATCH = 8, 32, 64


def options(arch: str) -> dict:
    fields = {f.name for f in dataclasses.fields(get_architecture(arch).Config)}
    wanted = {"k": 4, "n_steps": 4, "target_l0": 4.0, "k_max": 16}
    return {name: value for name, value in wanted.items() if name in fields}


def make(arch: str, **kw):
    return saekit.create(arch, d_in=D_IN, n_latents=N_LATENTS, **{**options(arch), **kw})


def data(n: int = 2048, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sparse sums of random directions on a mean offset, with a gradient and a linear target
    (for g-SAE and transcoders; the rest ignore them)."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(48, D_IN, generator=gen)
    active = torch.rand(n, 48, generator=gen) < 0.08
    x = (active * torch.rand(n, 48, generator=gen)) @ directions + 3.0
    grad = torch.randn(n, D_IN, generator=gen)
    target = x @ torch.randn(D_IN, D_IN, generator=gen) * 0.3 + 1.0
    return x, {"grad": grad, "target": target}


def stream() -> TensorStream:
    x, extras = data()
    return TensorStream(x, batch_size=BATCH, seed=0, extras=extras)


def train_config(**kw) -> TrainConfig:
    base = dict(steps=30, lr=3e-3, warmup_steps=3, log_every=5, progress_bar=False)
    return TrainConfig(**{**base, "dead_window_tokens": 256, **kw})


@functools.cache
def trained(arch: str) -> Trainer:
    trainer = Trainer({arch: make(arch)}, stream(), train_config())
    trainer.fit()
    return trainer


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, tmp_path):
    sae = trained(arch).export(trained(arch).members[0])
    native.save(sae, tmp_path / arch)
    back = native.load(tmp_path / arch)
    assert back.architecture == arch and back.cfg == sae.cfg
    for key, value in sae.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x, extras = data(256, seed=1)
    with torch.no_grad():
        assert torch.equal(back.encode(x, extras=extras), sae.encode(x, extras=extras))


@pytest.mark.parametrize("arch", ARCHS)
def test_input_scale_folds_into_the_saved_sae(arch):
    """Trained on s·x (a target on s_out·y, gradients g/s): the exported SAE gives on raw x
    the trained SAE's output / s_out, and (unit-norm dictionaries) its codes / s_out."""
    trainer = trained(arch)
    member, s = trainer.members[0], trainer.scale
    s_out = trainer.target_scale if member.sae.is_transcoder else s  # a target's own scale
    assert s != pytest.approx(1.0) and s_out != pytest.approx(1.0)
    exported = trainer.export(member)
    x, extras = data(256, seed=2)
    scaled_extras = {"grad": extras["grad"] / s, "target": extras["target"] * s_out}
    with torch.no_grad():
        sae = member.sae.eval()
        ref_codes = sae.encode(x * s, extras=scaled_extras) / s_out
        ref_out = sae(x * s, extras=scaled_extras) / s_out
        codes = exported.encode(x, extras=extras)
        out = exported(x, extras=extras)
    assert torch.allclose(out, ref_out, atol=1e-4, rtol=1e-4)
    width = exported.n_latents  # ITDA keeps only the atoms it found
    assert (ref_codes[:, width:] == 0).all()
    if sae.dictionary.unit_norm:
        assert torch.allclose(codes, ref_codes[:, :width], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_atoms_have_unit_norm(arch):
    """After training every exported dictionary has unit atoms (free norms are folded)."""
    exported = trained(arch).export(trained(arch).members[0])
    norms = exported.W_dec.norm(dim=-1)
    assert norms.numel() > 0 and torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def dense_reconstruction(sae, x: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The training reconstruction recomputed densely with autograd on the training support."""
    if sae.encoder is None:  # pursuit: unroll the textbook loop
        _, x_hat, _ = naive_pursuit(sae.W_dec, x, sae.b_dec, sae.cfg.n_steps, sae.cfg.sign)
        return x_hat
    pre = sae.encoder.pre_activations(sae, sae.encoder.centre(sae, x))
    values = pre.magnitude() if hasattr(pre, "magnitude") else pre.full()
    code = support * (values if sae.signed_codes else values.relu())
    return sae._output(x, code @ sae.W_dec + sae.b_dec), code


def reference_loss(sae, x, target, support) -> torch.Tensor:
    if sae.encoder is None:
        return reconstruction_loss(target, dense_reconstruction(sae, x, support))
    x_hat, code = dense_reconstruction(sae, x, support)
    if not hasattr(sae.cfg, "group_sizes"):
        return reconstruction_loss(target, x_hat)
    prefix, terms = sae.b_dec.expand_as(target), []  # Matryoshka: every prefix
    terms.append(reconstruction_loss(target, prefix))
    start = 0
    for size in sae.cfg.group_sizes:
        prefix = prefix + code[:, start : start + size] @ sae.W_dec[start : start + size]
        terms.append(reconstruction_loss(target, prefix))
        start += size
    return torch.stack(terms).mean()


@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruction_gradients_match_a_dense_autograd_reference(arch):
    torch.manual_seed(0)
    sae = make(arch).double()
    x, extras = data(48)
    x, extras = x.double(), {k: v.double() for k, v in extras.items()}
    if not sae.learns_by_gradient:  # ITDA: nothing may carry gradient
        out = sae.training_forward(x, TrainContext(extras=extras))
        assert all(not p.requires_grad for p in sae.parameters())
        assert all(v.grad_fn is None for v in out.losses.values())
        return
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        sae.after_optimizer_step()
    out = sae.training_forward(x, TrainContext(extras=extras))
    key = "matryoshka_mse" if "matryoshka_mse" in out.losses else "mse"
    out.losses[key].backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    sae.zero_grad()
    target = extras["target"] if sae.is_transcoder else x
    reference_loss(sae, x, target, out.codes != 0).backward()
    compared = 0
    for name, p in sae.named_parameters():
        if name == "threshold":  # JumpReLU's θ gets a straight-through pseudo-gradient
            continue
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(ours.get(name, torch.zeros_like(p)), ref, atol=1e-9), name
        compared += 1
    assert compared >= 2


@pytest.mark.parametrize("arch", ARCHS)
def test_interrupted_run_resumes_bit_identical(arch, tmp_path):
    full = Trainer({arch: make(arch)}, stream(), train_config(), tmp_path / "full")
    full.fit()
    part = Trainer({arch: make(arch)}, InterruptAt(stream(), 14), train_config(), tmp_path / "p")
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    resumed = Trainer.resume(tmp_path / "p", stream())
    assert 0 < resumed.step < 30
    resumed.fit()
    a = native.load(tmp_path / "full" / "saes" / arch).state_dict()
    b = native.load(tmp_path / "p" / "saes" / arch).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_configs_are_named(arch):
    with pytest.raises(ValueError, match="no option.*bogus.*valid options"):
        make(arch, bogus=1)
    with pytest.raises(ValueError, match="n_latents must be a positive integer"):
        saekit.create(arch, d_in=D_IN, n_latents=0, **options(arch))
    with pytest.raises(ValueError, match="d_in must be a positive integer"):
        saekit.create(arch, d_in=-3, n_latents=N_LATENTS, **options(arch))


@pytest.mark.parametrize("arch", ARCHS)
def test_declared_properties_match_the_parts(arch):
    """The registry's needs_extras and every declared knob are what the SAE really takes."""
    sae = make(arch)
    assert get_architecture(arch).needs_extras == sae.needs_extras
    with pytest.raises(ValueError, match="no inference knob"):
        sae.encode(torch.randn(2, D_IN), bogus_knob=3)
