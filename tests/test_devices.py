"""Devices and precision: bf16 autocast keeps fp32 master weights and trains as well as fp32;
asking for CUDA where there is none is a one-line error; the CUDA path itself is checked by
benchmarks/gpu_check.py and by the CUDA-only test here, which skips without a GPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saekit
from saekit.cli.main import main
from saekit.data.stream import TensorStream
from saekit.training.trainer import TrainConfig, Trainer


def fvu_after_training(arch: str, autocast) -> tuple[float, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4096, 48, generator=gen) < 0.05).float() @ torch.randn(48, 16, generator=gen)
    cfg = TrainConfig(steps=60, lr=3e-3, warmup_steps=5, progress_bar=False, autocast=autocast)
    opts = {"k": 4} if arch == "topk" else {"n_steps": 4}
    trainer = Trainer({arch: saekit.create(arch, d_in=16, n_latents=64, **opts)},
                      TensorStream(x, batch_size=256), cfg)  # fmt: skip
    trainer.fit()
    sae = trainer.export(trainer.members[0])
    with torch.no_grad():
        fvu = float((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    return fvu, sae.W_dec


@pytest.mark.parametrize("arch", ["topk", "mpsae"])
def test_bf16_autocast_keeps_fp32_weights_and_trains_as_well(arch):
    fvu32, _ = fvu_after_training(arch, None)
    fvu16, W = fvu_after_training(arch, "bf16")
    assert W.dtype == torch.float32
    assert fvu16 < 0.5 and abs(fvu16 - fvu32) < 0.05 + 0.2 * fvu32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_one_line(capsys):
    assert main(["train", "--device", "cuda", "--data", "synthetic:superposition"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip() == "saekit train: error: --device cuda: CUDA is not available on this machine"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_for_every_architecture():
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    r = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if '"arch"' in line]
    assert len(rows) == len(saekit.architectures()) and all('"ok": true' in row for row in rows)
