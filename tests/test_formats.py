"""SAE directories: round trips and clear errors for every kind of bad file."""

import json

import pytest
import torch
from safetensors.torch import save_file

import saekit
from saekit.formats import native
from saekit.formats.native import SAEFileError
from saekit.sae import TrainContext

ARCHS = {
    "relu": {},
    "topk": {"k": 3},
    "batchtopk": {"k": 3},
    "jumprelu": {},
    "matryoshka": {"k": 3},
    "mpsae": {"n_steps": 4},
}


def trained(arch):
    torch.manual_seed(0)
    sae = saekit.create(arch, d_in=10, n_latents=40, **ARCHS[arch])
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        x = torch.randn(64, 10)
        out = sae.training_forward(x, TrainContext())
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
        sae.calibrate(out.codes)
    return sae.eval()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_save_load_round_trip_gives_identical_codes(arch, tmp_path):
    sae = trained(arch)
    native.save(sae, tmp_path / arch, {"note": "x"})
    back = native.load(tmp_path / arch)
    assert type(back) is type(sae) and back.cfg == sae.cfg
    x = torch.randn(50, 10)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back(x), sae(x))
    assert back.metadata == {"note": "x"}
    cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["d_in"] == 10 and cfg["format"] == "saekit"


@pytest.fixture
def saved(tmp_path):
    return native.save(trained("topk"), tmp_path / "sae")


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(SAEFileError, match="not a directory"):
        native.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFileError, match="missing cfg.json"):
        native.load(tmp_path / "empty")


def test_corrupt_config(saved):
    (saved / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFileError, match="not valid JSON"):
        native.load(saved)


def test_unknown_architecture_in_file(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["architecture"] = "gatedd"
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFileError, match="unknown architecture 'gatedd'; valid names: .*topk"):
        native.load(saved)


def test_shape_mismatch_names_the_tensor(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["n_latents"] = 41
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(
        SAEFileError, match=r"W_dec has shape \(40, 10\) but cfg.json \(d_in=10, n_latents=41\)"
    ):
        native.load(saved)


def test_truncated_weights(saved):
    data = (saved / "weights.safetensors").read_bytes()
    (saved / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEFileError, match="corrupt or truncated"):
        native.load(saved)


def test_missing_tensor_and_nan_weights(saved):
    from safetensors.torch import load_file

    tensors = load_file(str(saved / "weights.safetensors"))
    del tensors["b_enc"]
    save_file(tensors, str(saved / "weights.safetensors"))
    with pytest.raises(SAEFileError, match=r"missing \['b_enc'\]"):
        native.load(saved)
    tensors["b_enc"] = torch.full((40,), float("nan"))
    save_file(tensors, str(saved / "weights.safetensors"))
    with pytest.raises(SAEFileError, match="b_enc contains NaN"):
        native.load(saved)


def test_unknown_option_in_config(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["kk"] = 3
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFileError, match="no option"):
        native.load(saved)


def test_save_replaces_existing_directory_atomically(saved):
    other = trained("topk")
    with torch.no_grad():
        other.b_dec.fill_(7.0)
    native.save(other, saved)
    assert torch.all(native.load(saved).b_dec == 7.0)
    assert [p.name for p in saved.parent.iterdir()] == ["sae"]
