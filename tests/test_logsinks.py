"""Training metric sinks: metrics.jsonl, TensorBoard event files and W&B offline runs all
receive the same numbers; optional packages that are missing give a one-line error."""

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

import saekit
from saekit.data.synthetic import SyntheticStream, make_recipe
from saekit.training import logsinks
from saekit.training.trainer import TrainConfig, Trainer

TINY = "synthetic:superposition:n_features=64,d_in=16,k_avg=3"


def train(out, sinks, steps=20):
    stream = SyntheticStream(
        make_recipe("superposition:n_features=64,d_in=16,k_avg=3", seed=0), batch_size=128, seed=0
    )
    saes = {
        "topk": saekit.create("topk", d_in=16, n_latents=64, k=4),
        "relu": saekit.create("relu", d_in=16, n_latents=64),
    }
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=5, log_every=5, progress_bar=False)
    trainer = Trainer(saes, stream, cfg, out)
    trainer.log_sinks = sinks
    trainer.fit()
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {(r["sae"], r["step"]): r for r in rows}


def test_parse_sinks_names_and_errors(monkeypatch):
    assert logsinks.parse_sinks(None) == ("jsonl",)
    assert logsinks.parse_sinks("jsonl, tensorboard,jsonl") == ("jsonl", "tensorboard")
    with pytest.raises(logsinks.LogSinkError, match="unknown log sink 'mlflow'"):
        logsinks.parse_sinks("jsonl,mlflow")
    # A machine without the package: the error names the extra to install.
    real = logsinks.importlib.util.find_spec
    monkeypatch.setattr(
        logsinks.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n)
    )
    with pytest.raises(logsinks.LogSinkError, match=r"pip install 'saekit\[wandb\]'"):
        logsinks.parse_sinks("wandb")


def test_tensorboard_events_hold_the_jsonl_values(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = train(tmp_path, ("jsonl", "tensorboard"))
    (event_dir,) = {os.path.dirname(p) for p in glob.glob(str(tmp_path / "tensorboard" / "*"))}
    acc = EventAccumulator(event_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"topk/fvu", "topk/l0", "relu/loss_l1", "relu/l1_coeff"} <= tags
    for sae, metric in [("topk", "fvu"), ("topk", "loss"), ("relu", "l0"), ("relu", "lr")]:
        events = acc.Scalars(f"{sae}/{metric}")
        assert [e.step for e in events] == [5, 10, 15, 20]
        for e in events:
            assert e.value == pytest.approx(rows[(sae, e.step)][metric], rel=1e-6, abs=1e-7)


def _wandb_history(run_file):
    """History rows of an offline .wandb file: a LevelDB-style log (32 KiB blocks of
    [crc32, length, type] records) of wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    buf = open(run_file, "rb").read()
    assert buf[:4] == b":W&B"
    pos, pending, rows = 7, b"", []
    while pos + 7 <= len(buf):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", buf[pos : pos + 7])
        data, pos = buf[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = data
        elif kind in (3, 4):
            pending += data
        if kind in (1, 4) and pending:
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                )
            pending = b""
    return rows


def test_wandb_offline_run_holds_the_jsonl_values(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    # No network: offline mode never contacts a server; make sure no key is even consulted.
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    rows = train(tmp_path, ("jsonl", "wandb"))
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    history = _wandb_history(run_file)
    assert [h["_step"] for h in history] == [5, 10, 15, 20]
    for h in history:
        assert h["tokens"] == 128 * h["_step"]
        for sae in ("topk", "relu"):
            assert h[f"{sae}/fvu"] == pytest.approx(rows[(sae, h["_step"])]["fvu"], rel=1e-6)


def test_cli_log_flag_validates_before_training(tmp_path):
    env = {**os.environ, "SAEKIT_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "saekit.cli.main", "train", "--data", TINY, "--steps", "5",
         "--log", "jsonl,nope", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2
    assert "unknown log sink 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
