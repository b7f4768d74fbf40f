"""The headline TopK result on the toy-superposition recipe (512 true features in 64
dimensions, 5 active on average), trained by `saekit train` as a user would and evaluated on
held-out samples. Every other architecture on the same recipe is a benchmark
(`python benchmarks/architectures.py synthetic`, in benchmarks/RESULTS.md): it took 7 of the
suite's minutes."""

import json
import os
import subprocess
import sys

import pytest


def train(tmp_path, *args):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "saekit.cli.main",
        "train",
        "--data",
        "synthetic:superposition",
        "--out",
        str(out),
        "--no-progress",
        "--eval-tokens",
        "16384",
        *args,
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=2400, env={**os.environ, "SAEKIT_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    return {p.name: json.loads((p / "eval.json").read_text()) for p in (out / "saes").iterdir()}


def test_topk_recovers_the_true_dictionary(tmp_path):
    results = train(
        tmp_path,
        "-a",
        "topk",
        "--k",
        "8",
        "--n-latents",
        "1024",
        "--steps",
        "1500",
        "--lr",
        "4e-3",
        "--dead-window-tokens",
        "50000",
    )
    syn = results["topk"]["synthetic"]
    assert syn["mmcs_gt_to_learned"] >= 0.9
    assert syn["frr_0.9"] >= 0.8
    assert results["topk"]["core"]["l0"] == pytest.approx(8.0)
