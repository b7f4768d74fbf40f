"""The command line as a user runs it: real subprocesses, exit codes, files written."""

import json
import os
import subprocess
import sys

import pytest

TINY = "synthetic:superposition:n_features=64,d_in=16,k_avg=3"


def saekit(*args, cwd=None):
    env = {**os.environ, "SAEKIT_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "saekit.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_help_explains_every_command():
    r = saekit("--help")
    assert r.returncode == 0
    for cmd in ("train", "eval", "info"):
        assert cmd in r.stdout
    r = saekit("train", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout and "--data" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
        (
            ["train", "-a", "topkk", "--data", TINY, "--steps", "1"],
            "unknown architecture 'topkk'; valid names:",
        ),
        (
            ["train", "--data", "synthetic:nope", "--steps", "1"],
            "unknown recipe 'nope'; valid recipes:",
        ),
        (["train", "--data", "ftp:x"], "unknown data source"),
        (["train", "--data", TINY, "-o", "bogus=1"], "option 'bogus' does not apply"),
        (["info", "/nonexistent/sae"], "not a directory"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, message):
    r = saekit(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert message in lines[0]


def test_train_sweep_eval_info_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = saekit(
        "train",
        "--data",
        TINY,
        "-a",
        "topk,batchtopk",
        "--k",
        "2,4",
        "--steps",
        "150",
        "--batch-size",
        "256",
        "--out",
        str(out),
        "--eval-tokens",
        "1024",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (out / "saes").iterdir())
    assert names == ["batchtopk-k2", "batchtopk-k4", "topk-k2", "topk-k4"]
    for name in names:
        ev = json.loads((out / "saes" / name / "eval.json").read_text())
        expected_k = int(name[-1])
        assert ev["core"]["l0"] == pytest.approx(expected_k, abs=0.3 if "batch" in name else 1e-6)
        assert 0 < ev["core"]["fvu"] < 0.7
        assert "mmcs_gt_to_learned" in ev["synthetic"]
    report = (out / "report.md").read_text()
    assert "topk-k4" in report and "FVU" in report
    assert (out / "training_curves.png").stat().st_size > 1000
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(ln)["sae"] for ln in lines} == set(names)

    r = saekit("info", str(out / "saes" / "topk-k4"))
    assert r.returncode == 0 and "architecture  topk" in r.stdout and "n_latents=128" in r.stdout
    r = saekit(
        "eval", str(out / "saes" / "topk-k2"), str(out / "saes" / "topk-k4"), "--tokens", "512"
    )
    assert r.returncode == 0, r.stderr
    assert "topk-k2" in r.stdout and "FVU" in r.stdout


def test_resume_from_cli_after_sigint(tmp_path):
    """Start a run, interrupt it with SIGINT, resume it with --resume: same SAE as one
    uninterrupted run."""
    import signal
    import time

    import torch

    from saekit.formats.native import load

    args = [
        "train",
        "--data",
        TINY,
        "--k",
        "3",
        "--steps",
        "1500",
        "--batch-size",
        "128",
        "--eval-tokens",
        "256",
        "--no-progress",
    ]
    full = saekit(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr

    env = {**os.environ, "SAEKIT_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "saekit.cli.main", *args, "--out", str(tmp_path / "part")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log = tmp_path / "part" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Resume with: saekit train --resume" in stdout
    r = saekit("train", "--resume", str(tmp_path / "part"), "--no-progress")
    assert r.returncode == 0, r.stderr
    a = load(tmp_path / "full" / "saes" / "topk").state_dict()
    b = load(tmp_path / "part" / "saes" / "topk").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
