"""Disk full: checkpoints written onto a tiny tmpfs that fills up mid-run. The last good
checkpoint survives, the run stops with one line (CLI) or an OSError (library), and once
space returns the run resumes to the result of an uninterrupted run. Needs permission to
mount tmpfs (root in a container that allows it); skipped with the reason otherwise."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from train_helpers import StreamWrapper

import saekit
from saekit.cli.main import main
from saekit.data.synthetic import SyntheticStream, make_recipe
from saekit.training import checkpoint as ckpt
from saekit.training.trainer import TrainConfig, Trainer

RECIPE = "superposition:n_features=64,d_in=16,k_avg=3"


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(fs: Path) -> Path:
    """Fill the file system until a write fails; returns the filler file."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # unbuffered: no late flush
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


class FillsDiskAt(StreamWrapper):
    """A real synthetic stream that fills the disk when batch `n` is read."""

    def __init__(self, fs: Path, n: int):
        super().__init__(SyntheticStream(make_recipe(RECIPE, seed=0), batch_size=64, seed=0))
        self.fs, self.n, self.filler = fs, n, None

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.n:
                self.filler = fill(self.fs)
            yield batch


def config():
    return TrainConfig(steps=30, lr=3e-3, warmup_steps=5, log_every=5, progress_bar=False,
                       checkpoint_every=5)  # fmt: skip


def sae():
    return {"topk": saekit.create("topk", d_in=16, n_latents=64, k=4)}


def test_checkpoint_on_a_full_disk_keeps_the_last_good_one_and_resumes(tiny_fs, tmp_path):
    ref = tmp_path / "ref"
    Trainer(sae(), FillsDiskAt(tmp_path, -1), config(), ref).fit()

    run = tiny_fs / "run"
    stream = FillsDiskAt(tiny_fs, 2 + 12)  # after the step-10 checkpoint, before step 15's
    # safetensors reports the full disk in its own error type; saekit names the checkpoint
    with pytest.raises((OSError, ckpt.CheckpointError), match="No space left on device"):
        Trainer(sae(), stream, config(), run).fit()
    root = run / "checkpoints"
    latest = ckpt.latest_checkpoint(root)
    assert latest is not None and latest.name == "step-000000010"
    assert ckpt.read_checkpoint(latest)["step"] == 10  # complete, checksums verified
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]

    stream.filler.unlink()  # space returns
    fresh = SyntheticStream(make_recipe(RECIPE, seed=0), batch_size=64, seed=0)
    Trainer.resume(run, fresh).fit()
    name = "saes/topk/weights.safetensors"
    assert (run / name).read_bytes() == (ref / name).read_bytes()


def test_cli_on_a_full_disk_says_so_in_one_line(tiny_fs, capsys):
    filler = fill(tiny_fs)
    os.truncate(filler, filler.stat().st_size - 16384)  # leave a few KiB: run.json fits
    argv = ["train", "--data", f"synthetic:{RECIPE}", "--steps", "20", "--n-latents", "64",
            "--k", "4", "--batch-size", "64", "--checkpoint-every", "5", "--no-progress",
            "--out", str(tiny_fs / "run")]  # fmt: skip
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
