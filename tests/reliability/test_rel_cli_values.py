"""Bad CLI values: every flag of every command gets invalid values; each is answered with one
line on stderr and exit code 2 before any work starts (nothing is written, nothing loaded).
The real entry point runs in-process (argparse and the checks run before any heavy import)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import saekit
from saekit.cli.main import main
from saekit.formats import native

TINY = "synthetic:superposition:n_features=64,d_in=16,k_avg=3"
NOT_UTF8 = os.fsdecode(b"/tmp/bad-\xff-name")  # what undecodable argv bytes become

# (command, extra args, expected text in the error line). {SAE}, {OUT}, {FILE}, {DIR} and
# {TOML_*}/{JSON_*} are filled in below.
BAD: list[tuple[str, list[str], str]] = []


def bad(command: str, flag: str, values: list[str], expect: str | None = None) -> None:
    for v in values:
        BAD.append((command, [flag, v] if flag else [v], expect or flag))


# train: every flag
for flag, values in {
    "--steps": ["0", "-1", "abc", "1.5"],
    "--batch-size": ["0", "-3", "x"],
    "--n-latents": ["0", "-1", "1000000000000", "abc"],
    "--lr": ["0", "-1e-3", "inf", "nan", "abc"],
    "--seed": ["-1", "abc", "1e3"],
    "--eval-tokens": ["0", "-5"],
    "--checkpoint-every": ["-1", "x"],
    "--dead-window-tokens": ["-1", "0"],
    "--cache-tokens": ["-1"],
    "--threads": ["0", "-2"],
    "--out": ["", NOT_UTF8, "{FILE}/sub"],
    "--k": ["0", "4.5", "abc", "4,0", ""],
}.items():
    bad("train", flag, values)
bad("train", "--data", ["", NOT_UTF8])
bad("train", "--data", ["ftp:x"], "unknown data source")
bad("train", "--data", ["synthetic:nope"], "unknown recipe")
bad("train", "--data", ["cache:{DIR}/no-cache"], "no manifest.json")
bad("train", "--architecture", ["topkk"], "unknown architecture")
bad("train", "--architecture", [",", ""])
CONFIGS = ["{DIR}/missing.toml", "{TOML_BAD}", "{TOML_OPTION_INT}", "{JSON_BATCH_STR}",
           "{JSON_LIST}", "{TOML_UNKNOWN}"]  # fmt: skip
bad("train", "--config", CONFIGS, "config file")
bad("train", "--resume", ["{DIR}/missing-run", "{FILE}", "{DIR}", ""])
for opt, expect in {
    "aux_coeff=abc": "aux_coeff",
    "aux_coeff=nan": "aux_coeff",
    "k=4.5": "'k'",
    "k=-3": "'k' must be >= 1",
    "bogus=1": "bogus",
    "noequals": "KEY=VALUE",
    "=5": "KEY=VALUE",
    "k_aux=[1,2": "cannot parse",
}.items():
    BAD.append(("train", ["-o", opt], expect))

# the other commands
bad("eval", "--tokens", ["0", "-5", "abc"])
bad("eval", "--batch-size", ["0"])
bad("eval", "--seed", ["-1"])
bad("eval", "--contexts", ["0"])
bad("eval", "--ctx-len", ["1", "0"])
bad("eval", "--probe-test", ["0"])
bad("eval", "--interp-contexts", ["0"])
bad("eval", "--interp-latents", ["0"])
bad("eval", "--threads", ["0"])
bad("eval", "--out", ["", NOT_UTF8])
bad("eval", "-g", ["bogus", ","], "metric group")
bad("eval", "--probe-ks", ["abc", "1,,x"], "--probe-ks")
bad("eval", "--sample-tokens", ["0"])
bad("eval", "--split", ["eval"])  # the held-out split's old name
bad("eval", "--convention", ["sae_bench"])
bad("eval", "--max-factor", ["0.5", "inf", "nan"])
bad("eval", "--relative-threshold", ["0", "2", "-1"])
bad("eval", "--steer-latents", ["0", "-1"])
bad("eval", "--steer-contexts", ["0"])
bad("eval", "--kappa", ["0", "-1", "inf"])
bad("eval", "--report", ["", NOT_UTF8])
bad("browse", "--port", ["-1", "70000", "abc"])
bad("browse", "--contexts", ["0"])
bad("browse", "--ctx-len", ["1"])
bad("browse", "--threads", ["0"])
bad("browse", "--split", ["bogus"])
bad("hookpoints", "--threads", ["0"])
bad("hookpoints", "--filter", ["("], "regex")
bad("cache", "--tokens", ["0", "-1"])
bad("cache", "--shard-tokens", ["0"])
bad("cache", "--ctx-len", ["1"])
bad("cache", "--batch-size", ["0"])
bad("cache", "--seed", ["-1"])
bad("cache", "--eval-tokens", ["-1"])
bad("cache", "--max-norm-factor", ["0", "-1", "nan"])
bad("cache", "--threads", ["0"])
bad("cache", "--dtype", ["int8"])
bad("cache", "--which", ["bogus"])
bad("cache", "--out", ["{FILE}", NOT_UTF8])
bad("cache", "--corpus", ["{DIR}/no-such.txt"])
bad("info", "", ["{DIR}/missing-sae", "{FILE}", NOT_UTF8], "")
bad("report", "", ["{DIR}/missing-eval"], "")
bad("report", "--out", [""])
bad("convert", "--to", ["bogus", ""])
bad("convert", "--layout", ["bogus"])
bad("convert", "--hookpoint", ["blocks.x.hook_nothing"], "hookpoint")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-values")
    sae_dir = native.save(saekit.create("topk", d_in=16, n_latents=32, k=4), d / "sae")
    (d / "afile").write_text("not a directory")
    (d / "bad.toml").write_text("steps = [")
    (d / "opt.toml").write_text("option = 5\n")
    (d / "unknown.toml").write_text("stepz = 5\n")
    (d / "batch.json").write_text('{"batch_size": "abc"}')
    (d / "list.json").write_text("[1, 2]")
    return {
        "{SAE}": str(sae_dir),
        "{FILE}": str(d / "afile"),
        "{DIR}": str(d),
        "{TOML_BAD}": str(d / "bad.toml"),
        "{TOML_OPTION_INT}": str(d / "opt.toml"),
        "{TOML_UNKNOWN}": str(d / "unknown.toml"),
        "{JSON_BATCH_STR}": str(d / "batch.json"),
        "{JSON_LIST}": str(d / "list.json"),
        "root": d,
    }


def base_args(command: str) -> list[str]:
    """Valid arguments, so that only the value under test is wrong."""
    return {
        "train": ["--data", TINY, "--steps", "2", "--out", "{OUT}", "--no-progress"],
        "eval": ["{SAE}", "--data", TINY],
        "browse": ["{SAE}", "--no-serve", "--data-dir", "{OUT}"],
        "hookpoints": ["default"],
        "cache": ["--tokens", "10", "--out", "{OUT}", "--model", "/nonexistent-model"],
        "info": [],
        "report": ["{SAE}", "-o", "{OUT}/r.html"],
        "convert": ["{SAE}", "{OUT}", "--to", "saelens"],
    }[command]


def fill(args: list[str], env: dict) -> list[str]:
    out = []
    for a in args:
        for k, v in env.items():
            if k.startswith("{"):
                a = a.replace(k, v)
        out.append(a)
    return out


@pytest.mark.parametrize("command, args, expect", BAD, ids=[f"{c}{' '.join(a)}" for c, a, _ in BAD])
def test_bad_value_is_one_line_exit_2_before_any_work(command, args, expect, env, capsys, tmp_path):
    env = {**env, "{OUT}": str(tmp_path / "out")}
    base = base_args(command)
    if command == "report" and args and args[0] != "--out":
        base = ["-o", "{OUT}/r.html"]
    if command == "report" and args[:1] == ["--out"]:
        base = ["{SAE}"]
    argv = fill(
        [command, *args, *base] if command in ("info", "report") else [command, *base, *args], env
    )  # noqa: E501
    start = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (argv, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], (expect, lines[0])
    # Before any work: nothing written, and no model or data was loaded (that takes seconds).
    assert not Path(env["{OUT}"]).exists(), argv
    assert seconds < 5, (argv, seconds)


def test_table_covers_every_command():
    from saekit.cli.main import COMMANDS

    assert {c for c, _, _ in BAD} == set(COMMANDS)
    assert len(BAD) >= 120
