"""Kills during activation capture: `saekit cache` and the capture phase of `saekit train`
on model data, SIGKILLed mid-capture (real subprocesses of the real CLI, the tiny model and
text). Re-running the same command must then succeed, and replace only capture files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_helpers import model_dir
from tiny_model import TEXTS

from saekit.data.cache import verify_cache

HOOK = "model.layers.1"


def popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "SAEKIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "saekit.cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def kill_when(proc: subprocess.Popen, path: Path, extra: float, timeout: float = 120) -> bool:
    """SIGKILL `proc` `extra` seconds after `path` appears; False if it finished first."""
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            proc.communicate()
            return False
        time.sleep(0.005)
    time.sleep(extra)
    if proc.poll() is not None:
        proc.communicate()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text(
        "\n\n".join(f"doc {i}: {TEXTS[i % 8]} {TEXTS[(i * 5) % 8]}" for i in range(400))
    )
    return path


def test_kill_during_saekit_cache_then_rerun(tmp_path, corpus_file):
    out = tmp_path / "acts"
    args = ["cache", "--model", str(model_dir()), "--hookpoint", HOOK, "--tokens", "20000",
            "--corpus", str(corpus_file), "--ctx-len", "16", "--shard-tokens", "1024",
            "--out", str(out), "--quiet", "--threads", "1"]  # fmt: skip
    killed = kill_when(popen(args), out / HOOK, random.Random(13).uniform(0.0, 0.2))
    assert killed, "the capture finished before the kill"
    assert not (out / "manifest.json").exists()
    # Without --overwrite: one line; with it: the half-written capture is replaced.
    r = subprocess.run([sys.executable, "-m", "saekit.cli.main", *args], capture_output=True,
                       text=True, env={**os.environ, "SAEKIT_THREADS": "1"})  # fmt: skip
    assert r.returncode == 2 and "--overwrite" in r.stderr and r.stderr.count("\n") == 1
    p = popen([*args, "--overwrite"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert verify_cache(out)["n_tokens"]["train"] == 20000


def test_kill_during_capture_phase_of_train_then_rerun(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", f"model:{model_dir()}@{HOOK}", "--cache-tokens", "2000",
            "--n-latents", "32", "--k", "2", "--steps", "5", "--batch-size", "32",
            "--eval-tokens", "64", "--no-progress", "--threads", "1", "--out", str(run)]  # fmt: skip
    assert kill_when(popen(args), run / "activations" / HOOK, 0.05)
    assert not (run / "run.json").exists()
    # --resume explains; the same command again continues (restarts the capture).
    r = subprocess.run([sys.executable, "-m", "saekit.cli.main", "train", "--resume", str(run)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "re-run the same 'saekit train' command" in r.stderr
    p = popen(args)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert (run / "saes" / "topk" / "weights.safetensors").is_file()
