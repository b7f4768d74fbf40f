"""An MP-SAE trained with a stale Gram (gram_refresh_every > 1) and interrupted between two
Gram rebuilds resumes bit-identically: the checkpoint carries the dictionary the Gram was
built from and its age (saekit/sae/selectors/matching_pursuit.py)."""

import pytest
import torch
from train_helpers import InterruptAt

import saekit
from saekit.data.stream import TensorStream
from saekit.formats import native
from saekit.training import checkpoint as ckpt
from saekit.training.trainer import TrainConfig, Trainer


def stream() -> TensorStream:
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(96, 64, generator=gen)
    x = (
        (torch.rand(2048, 96, generator=gen) < 0.06) * torch.rand(2048, 96, generator=gen)
    ) @ directions
    return TensorStream(x + 1.0, batch_size=256, seed=0)


def trainer(out, data) -> Trainer:
    # Big enough for the Gram path; checkpoints every 4 steps, the Gram rebuilt every 3.
    sae = saekit.create("mpsae", d_in=64, n_latents=128, n_steps=8, gram_refresh_every=3)
    cfg = TrainConfig(steps=14, lr=1e-2, warmup_steps=2, log_every=5, checkpoint_every=4,
                      progress_bar=False)  # fmt: skip
    return Trainer({"mpsae": sae}, data, cfg, out)


def test_stale_gram_run_interrupted_between_rebuilds_resumes_bit_identical(tmp_path):
    trainer(tmp_path / "full", stream()).fit()
    part = trainer(tmp_path / "part", InterruptAt(stream(), 2 + 7))  # 2 init batches
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    _, state, _ = ckpt.load_latest(tmp_path / "part" / "checkpoints")
    assert state["step"] == 7 and int(state["members"][0]["model"]["gram_age"]) == 0
    resumed = Trainer.resume(tmp_path / "part", stream())
    resumed.fit()
    a = native.load(tmp_path / "full" / "saes" / "mpsae").state_dict()
    b = native.load(tmp_path / "part" / "saes" / "mpsae").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = "metrics.jsonl"
    assert (tmp_path / "full" / log).read_text() == (tmp_path / "part" / log).read_text()
