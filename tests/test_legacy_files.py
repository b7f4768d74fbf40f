"""SAE files written before the seam refactor (saekit 0.1.0, tests/data/legacy, made by
make_legacy.py there) load and give identical codes; one training step gives the same losses
and gradients."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saekit.formats import native
from saekit.sae import TrainContext
from saekit.sae.selectors import TopK

LEGACY = Path(__file__).parent / "data" / "legacy"
ARCHS = ["topk", "batchtopk", "matryoshka", "gsae", "relu", "jumprelu", "mpsae", "topafa"]


@pytest.fixture(scope="module")
def stored():
    return load_file(LEGACY / "codes.safetensors"), load_file(LEGACY / "training.safetensors")


@pytest.mark.parametrize("arch", ARCHS)
def test_legacy_file_gives_identical_codes(arch, stored):
    codes, _ = stored
    x, g = codes["x"], codes["grad"]
    sae = native.load(LEGACY / arch)
    with torch.no_grad():
        assert torch.equal(sae.encode(x, extras={"grad": g}), codes[f"{arch}.codes"])
        # What used to be encode modes and knobs: selector views and declared knobs.
        if arch == "gsae":
            assert torch.equal(sae.with_selector(TopK()).encode(x), codes["gsae.codes_topk"])
        if arch in ("batchtopk", "matryoshka"):
            view = sae.with_selector(TopK(6))
            assert torch.equal(view.encode(x), codes[f"{arch}.codes_topk"])
        if arch == "topk":
            assert torch.equal(sae.encode(x, k=7), codes["topk.codes_k7"])
        if arch == "mpsae":
            assert torch.equal(sae.encode(x, n_steps=3), codes["mpsae.codes_t3"])


@pytest.mark.parametrize("arch", ARCHS)
def test_legacy_training_step_is_unchanged(arch, stored):
    codes, ref = stored
    x, g = codes["x"], codes["grad"]
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    sae = native.load(LEGACY / arch).train()
    out = sae.training_forward(x, TrainContext(dead_mask=dead, progress=0.5, extras={"grad": g}))
    sum(out.losses.values()).backward()
    for name, value in out.losses.items():
        assert float(value) == pytest.approx(float(ref[f"{arch}.loss.{name}"]), rel=1e-5)
    assert torch.allclose(out.codes, ref[f"{arch}.train_codes"], atol=1e-5)
    for name, p in sae.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, ref[f"{arch}.grad.{name}"], atol=1e-5), name
