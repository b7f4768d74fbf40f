"""The command line: the real entry point `main([...])` in-process (a subprocess only where a
real signal is the point), exit codes, settings from flags and config files, files written."""

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest

from saekit.cli.main import build_parser, main
from saekit.training.capture import CaptureConfig
from saekit.training.run import RunConfig, architecture_options
from saekit.training.trainer import TrainConfig

TINY = "synthetic:superposition:n_features=64,d_in=16,k_avg=3"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("SAEKIT_THREADS", "1")


def settings_of(argv):
    """The settings `saekit train ARGV` would run with (nothing is trained)."""
    from saekit.cli.train import resolve

    parser, _ = build_parser()
    return resolve(parser.parse_args(["train", *argv]))


def test_help_lists_every_setting_of_every_group(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("train", "eval", "info", "cache"))
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    groups = (RunConfig, CaptureConfig, TrainConfig)
    flags = {f.metadata.get("flag", f.name) for g in groups for f in fields(g)}
    flags |= set(architecture_options())
    assert len(flags) > 70
    missing = [f for f in flags if f"--{f.replace('_', '-')}" not in out]
    assert missing == []
    # the help comes from the field's declaration, with its default
    assert "steps of linear learning-rate warm-up from 0 (default 50)" in " ".join(out.split())


def test_every_field_has_help_and_architecture_options_agree_on_types():
    from saekit.options import type_hints
    from saekit.sae import get_architecture

    for group in (RunConfig, CaptureConfig, TrainConfig):
        assert all(f.metadata.get("help") for f in fields(group)), group
    for name, owners in architecture_options().items():
        assert all(f.metadata.get("help") for _, f in owners), name
        types = {str(type_hints(get_architecture(a).Config)[name]) for a, _ in owners}
        assert len(types) == 1, (name, types)  # one flag, one type


def test_flags_set_training_capture_and_architecture_settings():
    s = settings_of(
        ["--warmup-steps", "10", "--decay-fraction", "0.1", "--grad-clip", "0.5",
         "--betas", "0.8", "0.99", "--init-b-dec", "zero", "--no-normalise-inputs",
         "--corpus", "some.txt", "--ctx-len", "64", "--cache-dtype", "bf16",
         "-a", "topk,batchtopk", "--k", "16,32", "--standardise-tokens",
         "-o", "batchtopk.threshold_ema=0.05", "--no-progress"]
    )  # fmt: skip
    t = s.train
    assert (t.warmup_steps, t.decay_fraction, t.grad_clip, t.betas) == (10, 0.1, 0.5, (0.8, 0.99))
    assert t.init_b_dec == "zero" and t.normalise_inputs is False and t.progress_bar is False
    assert (s.capture.corpus, s.capture.ctx_len, s.capture.cache_dtype) == ("some.txt", 64, "bf16")
    assert s.run.architecture == "topk,batchtopk"
    assert s.options == {
        "k": [16, 32],
        "standardise_tokens": [True],
        "batchtopk.threshold_ema": [0.05],
    }


def test_config_file_sets_anything_and_flags_override_it(tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        'data = "synthetic:tree"\nsteps = 300\nwarmup_steps = 7\nbetas = [0.5, 0.9]\n'
        'init_b_dec = "mean"\nctx_len = 32\nk = [8, 16]\narchitecture = "topk,batchtopk"\n'
        "option = { aux_coeff = 0.1 }\n[batchtopk]\nk = 24\n"
    )
    s = settings_of(["--config", str(cfg), "--steps", "500"])
    assert (s.run.data, s.train.steps, s.train.warmup_steps) == ("synthetic:tree", 500, 7)
    assert s.train.betas == (0.5, 0.9) and s.train.init_b_dec == "mean"
    assert s.capture.ctx_len == 32
    assert s.options == {"k": [8, 16], "aux_coeff": [0.1], "batchtopk.k": [24]}
    from saekit.sae import get_architecture  # noqa: F401 - registry loaded
    from saekit.training.sweep import expand

    runs = expand(["topk", "batchtopk"], s.options, d_in=16)
    assert sorted(runs) == ["batchtopk", "topk-k16", "topk-k8"]
    assert runs["batchtopk"][1]["k"] == 24 and runs["topk-k8"][1]["aux_coeff"] == 0.1


def test_train_and_cache_share_one_set_of_capture_defaults(tmp_path):
    assert settings_of([]).capture == CaptureConfig()
    parser, _ = build_parser()
    args = parser.parse_args(["cache", "--tokens", "10", "--out", str(tmp_path)])
    assert not any(hasattr(args, f.name) for f in fields(CaptureConfig))  # defaults: the class's
    args = parser.parse_args(
        ["cache", "--tokens", "10", "--out", str(tmp_path), "--dtype", "bf16", "--batch-size", "4"]
    )
    assert (args.cache_dtype, args.contexts_per_forward) == ("bf16", 4)
    assert CaptureConfig().max_norm_factor == 10.0 and CaptureConfig().eval_fraction == 0.1


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
        (["train", "--decay-fraction", "2"], "argument --decay-fraction: must be in [0, 1], got 2"),
        (["train", "--init-b-dec", "median"], "argument --init-b-dec: invalid choice: 'median'"),
        (["train", "--sign", "up"], "argument --sign: must be one of nonneg, signed, abs"),
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
        (["train", "--data", TINY, "--zipf-a", "2"], "option 'zipf_a' does not apply to topk"),
        (["info", "/nonexistent/sae"], "not a directory"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, message, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "o")] if args[0] == "train" else args) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(
        f"saekit {args[0]}: error: " if args[0] != "frobnicate" else "saekit"
    )
    assert message in lines[0]
    assert not (tmp_path / "o").exists()


def test_train_sweep_eval_info_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", TINY, "-a", "topk,batchtopk", "--k", "2,4", "--steps", "150"]
    argv += ["--batch-size", "256", "--out", str(out), "--eval-tokens", "1024", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    names = sorted(p.name for p in (out / "saes").iterdir())
    assert names == ["batchtopk-k2", "batchtopk-k4", "topk-k2", "topk-k4"]
    for name in names:
        ev = json.loads((out / "saes" / name / "eval.json").read_text())
        expected_k = int(name[-1])
        assert ev["core"]["l0"] == pytest.approx(expected_k, abs=0.3 if "batch" in name else 1e-6)
        assert 0 < ev["core"]["fvu"] < 0.7
        assert "mmcs_gt_to_learned" in ev["synthetic"]
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["sae"] for r in rows} == set(names)
    assert all(0 < r["heldout_fvu"] < 3 for r in rows)
    report = (out / "report.md").read_text()
    assert "| topk-k4 |" in report and "FVU" in report
    assert "topk-k4: 38,400 training tokens, fresh synthetic samples (no repeats)" in report
    page = (out / "report.html").read_text()
    assert 'id="fig-pareto_fvu"' in page and 'id="fig-training"' in page  # saekit report's page
    assert "saekit browse" not in page  # no text behind synthetic data: nothing to browse

    assert main(["info", str(out / "saes" / "topk-k4")]) == 0
    info = capsys.readouterr().out
    assert "architecture  topk" in info and "n_latents=128" in info
    argv = ["eval", str(out / "saes" / "topk-k2"), str(out / "saes" / "topk-k4")]
    assert main([*argv, "--tokens", "512"]) == 0
    assert "topk-k2" in capsys.readouterr().out


def test_train_on_model_data_with_corpus_context_length_and_schedule(tmp_path, capsys):
    """The issue's example: model data with --corpus FILE, --ctx-len, the cache dtype and the
    schedule flags, through to a report with the top latents and the browser line."""
    from eval_helpers import corpus_texts, model_dir

    from saekit.formats.native import load

    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(corpus_texts(600)))
    out = tmp_path / "run"
    argv = ["train", "--data", f"model:{model_dir()}@model.layers.1", "--corpus", str(docs)]
    argv += ["--ctx-len", "24", "--cache-dtype", "bf16", "--cache-tokens", "1500"]
    argv += ["--eval-fraction", "0.2", "--warmup-steps", "10", "--decay-fraction", "0.1"]
    argv += ["--init-b-dec", "zero", "--steps", "30", "--batch-size", "100", "--k", "4"]
    argv += ["--n-latents", "64", "--eval-tokens", "256", "--heldout-tokens", "200"]
    argv += ["--browser-contexts", "16", "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    manifest = json.loads((out / "activations" / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16"
    assert manifest["corpus"]["train"]["ctx_len"] == 24
    assert manifest["corpus"]["train"]["corpus"]["files"] == [str(docs)]
    assert manifest["n_tokens"] == {"train": 1500, "heldout": 300}
    cfg = load(out / "saes" / "topk").metadata["training"]["train_config"]
    assert (cfg["warmup_steps"], cfg["decay_fraction"], cfg["init_b_dec"]) == (10, 0.1, "zero")
    report = (out / "report.md").read_text()
    assert "3,000 training tokens = 2.0 passes over the 1,500-token activation cache" in report
    assert f"saekit browse {out / 'saes' / 'topk'}" in report
    assert report.count("  - `") >= 3  # contexts of the most frequent latents, token in ⟦ ⟧
    page = (out / "report.html").read_text()
    assert "<mark>" in page and "most frequent latents" in page
    assert (out / "saes" / "topk" / "browser" / "meta.json").is_file()  # browse starts at once


def test_resume_from_cli_after_sigint(tmp_path, capsys):
    """Start a run in a real process, interrupt it with SIGINT, resume it with --resume: the
    same SAE as one uninterrupted run."""
    import signal
    import time

    import torch

    from saekit.formats.native import load

    args = ["train", "--data", TINY, "--k", "3", "--steps", "1500", "--batch-size", "128"]
    args += ["--eval-tokens", "256", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0

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
    assert main(["train", "--resume", str(tmp_path / "part"), "--no-progress"]) == 0
    a = load(tmp_path / "full" / "saes" / "topk").state_dict()
    b = load(tmp_path / "part" / "saes" / "topk").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
