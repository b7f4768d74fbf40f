"""One regression test per defect of issue 13 (each failed before its fix)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from eval_helpers import model_dir
from tiny_model import TEXTS, tiny_model, tiny_tokenizer
from train_helpers import StreamWrapper

import saekit
from saekit.cli.main import main
from saekit.data.cache import write_cache
from saekit.data.synthetic import SyntheticStream, make_recipe
from saekit.formats import atomic, native
from saekit.training import checkpoint as ckpt
from saekit.training.trainer import NonFiniteTrainingError, TrainConfig, Trainer

RECIPE = "superposition:n_features=64,d_in=16,k_avg=3"
TINY = f"synthetic:{RECIPE}"
DOCS = [f"doc {i}: {TEXTS[i % 8]} {TEXTS[(i * 3) % 8]}" for i in range(120)]


def stream():
    return SyntheticStream(make_recipe(RECIPE, seed=0), batch_size=64, seed=0)


def saes():
    return {"topk": saekit.create("topk", d_in=16, n_latents=64, k=4)}


def config(**kw):
    base = dict(steps=30, lr=3e-3, warmup_steps=5, log_every=5, progress_bar=False)
    return TrainConfig(**{**base, **kw})


def weights(run: Path) -> bytes:
    return (run / "saes" / "topk" / "weights.safetensors").read_bytes()


def one_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


# ---- 1. cache --overwrite deletes only a cache ----------------------------------------------
def test_1_overwrite_never_deletes_a_directory_that_is_not_a_cache(tmp_path):
    victim = tmp_path / "thesis"
    (victim / "model").mkdir(parents=True)
    (victim / "notes.txt").write_text("years of work")
    (victim / "thesis.tex").write_text("\\section{}")
    (victim / "model" / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(FileExistsError, match="not a saekit cache file"):
        write_cache(victim, tiny_model(), tiny_tokenizer(), DOCS, ["model.layers.1"], 50,
                    ctx_len=16, overwrite=True)  # fmt: skip
    assert sorted(p.name for p in victim.rglob("*")) == [
        "model", "model.safetensors", "notes.txt", "thesis.tex"
    ]  # fmt: skip


def test_1_overwrite_replaces_a_cache_and_a_half_written_capture(tmp_path):
    out = tmp_path / "acts"
    args = (tiny_model(), tiny_tokenizer(), DOCS, ["model.layers.1"], 50)
    write_cache(out, *args, ctx_len=16, shard_tokens=16)
    write_cache(out, *args, ctx_len=16, shard_tokens=16, overwrite=True)  # a cache: replaced
    (out / "manifest.json").unlink()  # as if the capture was interrupted before its manifest
    write_cache(out, *args, ctx_len=16, shard_tokens=16, overwrite=True)
    assert (out / "manifest.json").is_file()


# ---- 2. a second signal never corrupts a checkpoint -----------------------------------------
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_2_double_sigint_mid_step_keeps_checkpoint_consistent(tmp_path):
    full = Trainer(saes(), stream(), config(), tmp_path / "full")
    full.fit()

    part = Trainer(saes(), stream(), config(checkpoint_every=5), tmp_path / "part")
    opt = part.members[0].optimizer
    real_step = opt.step

    def step_then_two_signals(*a, **kw):
        out = real_step(*a, **kw)
        if part.step == 12:  # both arrive after the update, before the step is finished
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    opt.step = step_then_two_signals
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    assert part.step == 13  # the step finished, then the loop stopped
    state = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "part" / "checkpoints"))
    assert state["step"] == 13
    Trainer.resume(tmp_path / "part", stream()).fit()
    assert weights(tmp_path / "part") == weights(tmp_path / "full")


# ---- 3. divergence stops the run and never writes NaN ----------------------------------------
def test_3_infinite_lr_stops_at_the_step_without_nan_checkpoints(tmp_path):
    trainer = Trainer(saes(), stream(), config(lr=float("inf"), checkpoint_every=1), tmp_path)
    with pytest.raises(NonFiniteTrainingError, match="training diverged at step 0"):
        trainer.fit()
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints") is None
    assert not (tmp_path / "saes").exists()


def test_3_one_extreme_row_is_detected_and_the_good_checkpoint_kept(tmp_path):
    class Extreme(StreamWrapper):
        def __iter__(self):
            for i, batch in enumerate(self.inner):
                if i == 2 + 12:  # init batches, then step 12
                    batch.x[5] = 1e30
                yield batch

    trainer = Trainer(saes(), Extreme(stream()), config(checkpoint_every=5), tmp_path)
    with pytest.raises(NonFiniteTrainingError, match="step 12"):
        trainer.fit()
    path = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    state = ckpt.read_checkpoint(path)
    assert state["step"] == 10
    assert all(torch.isfinite(t).all() for t in state["members"][0]["model"].values())
    assert not (tmp_path / "saes").exists()


def test_3_cli_divergence_is_one_line_exit_2(tmp_path, capsys):
    code = main(["train", "--data", TINY, "--steps", "20", "--lr", "1e30", "--n-latents", "64",
                 "--k", "4", "--batch-size", "64", "--no-progress", "--out", str(tmp_path / "r")])  # fmt: skip
    assert code == 2
    assert "training diverged" in one_line(capsys)
    assert not (tmp_path / "r" / "saes").exists()


# ---- 4. loading checks shapes against the header before building ----------------------------
@pytest.mark.parametrize("n_latents", [10**7, 10**12])
def test_4_absurd_n_latents_in_cfg_fails_fast_without_allocating(tmp_path, n_latents):
    d = native.save(saekit.create("topk", d_in=16, n_latents=32, k=4), tmp_path / "sae")
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["n_latents"] = n_latents
    (d / "cfg.json").write_text(json.dumps(cfg))
    start = time.perf_counter()
    with pytest.raises(native.SAEFileError, match=r"W_dec has shape \(32, 16\)"):
        native.load(d)
    assert time.perf_counter() - start < 1.0  # was 10 s and 2.1 GB at 10^7


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("k", 4.5, "'k' must be an integer"),
        ("aux_coeff", "abc", "'aux_coeff' must be a finite number"),
        ("aux_coeff", float("nan"), "'aux_coeff' must be a finite number"),
        ("d_in", True, "'d_in' must be an integer"),
    ],
)
def test_4_9_cfg_values_are_checked_by_type(tmp_path, field, value, message):
    d = native.save(saekit.create("topk", d_in=16, n_latents=32, k=4), tmp_path / "sae")
    cfg = json.loads((d / "cfg.json").read_text())
    cfg[field] = value
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(native.SAEFileError, match=message):
        native.load(d)


def test_9_integer_weights_are_rejected(tmp_path):
    sae = saekit.create("topk", d_in=16, n_latents=32, k=4)
    d = native.save(sae, tmp_path / "sae")
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.int32) for k, v in sae.state_dict().items()}
    save_file(tensors, str(d / "weights.safetensors"))
    with pytest.raises(native.SAEFileError, match="expected floating point"):
        native.load(d)


# ---- 5. an interrupted capture does not leave the run stuck -----------------------------------
def test_5_rerun_after_capture_interrupted_before_first_shard(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "activations" / "model.layers.1").mkdir(parents=True)  # what a kill there leaves
    code = main(["train", "--resume", str(run)])
    assert code == 2 and "re-run the same 'saekit train' command" in one_line(capsys)
    argv = ["train", "--data", f"model:{model_dir()}@model.layers.1", "--cache-tokens", "300",
            "--n-latents", "32", "--k", "2", "--steps", "5", "--batch-size", "32",
            "--eval-tokens", "64", "--no-progress", "--threads", "1", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (run / "activations" / "manifest.json").is_file()


# ---- 6. gap-free directory replacement, fallback, leftovers -----------------------------------
def test_6_replacing_a_directory_is_one_atomic_exchange(tmp_path, monkeypatch):
    target = tmp_path / "step-000000010"
    with atomic.atomic_directory(target) as tmp:
        (tmp / "f").write_text("old")
    renames = []
    real = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (renames.append((a, b)), real(a, b)))
    with atomic.atomic_directory(target) as tmp:
        (tmp / "f").write_text("new")
    assert (target / "f").read_text() == "new"
    assert renames == []  # no window in which the target was renamed away
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000010"]


def test_6_resume_falls_back_when_latest_names_a_missing_checkpoint(tmp_path):
    Trainer(saes(), stream(), config(checkpoint_every=10), tmp_path / "full").fit()
    part = tmp_path / "part"
    Trainer(saes(), stream(), config(checkpoint_every=10), part).fit()
    root = part / "checkpoints"
    # A kill between the renames of the old fallback replace: newest gone, `latest` names it,
    # and temporary directories are left behind.
    os.rename(root / "step-000000030", root / ".old-step-000000030-123")
    (root / ".tmp-step-000000030-xyz").mkdir()
    resumed = Trainer.resume(part, stream())
    assert resumed.step == 20
    resumed.fit()
    assert weights(part) == weights(tmp_path / "full")
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000000020", "step-000000030"]


# ---- 7. checkpoints carry checksums and validated fields --------------------------------------
def _run_with_checkpoints(path: Path) -> Path:
    Trainer(saes(), stream(), config(checkpoint_every=10), path).fit()
    return path / "checkpoints"


def test_7_flipped_byte_is_detected_and_resume_uses_the_previous_checkpoint(tmp_path, capsys):
    root = _run_with_checkpoints(tmp_path / "run")
    data = bytearray((root / "step-000000030" / "state.safetensors").read_bytes())
    data[-7] ^= 0x10
    (root / "step-000000030" / "state.safetensors").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="does not match its checksum"):
        ckpt.read_checkpoint(root / "step-000000030")
    assert Trainer.resume(tmp_path / "run", stream()).step == 20
    assert "skipping checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("step", [-100, 10**12])
def test_7_out_of_range_step_is_rejected_even_when_re_signed(tmp_path, step):
    import hashlib

    root = _run_with_checkpoints(tmp_path / "run")
    for p in root.glob("step-*"):
        doc = json.loads((p / "state.json").read_text())
        dict(doc["skeleton"]["__dict__"])  # the layout: [[key, value], ...]
        for pair in doc["skeleton"]["__dict__"]:
            if pair[0] == "step":
                pair[1] = step
        doc["step"] = step
        body = json.dumps(doc["skeleton"], separators=(",", ":")).encode()
        doc["skeleton_sha256"] = hashlib.sha256(body).hexdigest()
        (p / "state.json").write_text(json.dumps(doc))
    with pytest.raises(ckpt.CheckpointError, match=r"step must be an integer in \[0, 30\]"):
        Trainer.resume(tmp_path / "run", stream())


# ---- 8. every remaining error is one line, tracebacks behind --debug --------------------------
def test_8_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from saekit.cli import info

    def boom(args):
        raise KeyError("hookpoints")

    monkeypatch.setattr(info, "run", boom)
    assert main(["info", "x"]) == 2
    line = one_line(capsys)
    assert "KeyError" in line and "--debug" in line
    with pytest.raises(KeyError):
        main(["--debug", "info", "x"])


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: (d / "afile").write_text("x") and ["--out", str(d / "afile" / "run")],
         "is a file, not a directory"),
        (lambda d: (d / "c.toml").write_text("option = 5") and ["--config", str(d / "c.toml")],
         "--option must be"),
        (lambda d: ["-o", "aux_coeff=abc"], "'aux_coeff' must be a finite number"),
    ],
)  # fmt: skip
def test_8_train_input_errors_are_one_line(tmp_path, capsys, make, expect):
    extra = make(tmp_path)
    argv = ["train", "--data", TINY, "--steps", "2", "--no-progress",
            "--out", str(tmp_path / "out"), *extra]  # fmt: skip
    assert main(argv) == 2
    assert expect in one_line(capsys)


# ---- 10. resume does not depend on the working directory --------------------------------------
def test_10_resume_from_another_directory(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    from saekit.data.models import load_model

    model, tok = load_model(str(model_dir()))  # recorded by path, so the report can reload it
    write_cache(work / "acts", model, tok, DOCS, ["model.layers.1"], 300, ctx_len=16,
                heldout_tokens=64)  # fmt: skip
    monkeypatch.chdir(work)
    argv = ["train", "--data", "cache:acts", "--n-latents", "32", "--k", "2", "--steps", "10",
            "--batch-size", "32", "--eval-tokens", "64", "--no-progress", "--out", "run"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    train_data = json.loads((work / "run" / "run.json").read_text())["train_data"]
    assert Path(train_data.removeprefix("cache:").split("@")[0]).is_absolute()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(work / "run"), "--no-progress"]) == 0
