"""Kill trials: `saekit train` SIGKILLed at seeded random moments (also while resuming),
double/triple SIGINT, SIGTERM, and a kill between the two renames of a checkpoint
replacement. Every run, however interrupted, must end byte-identical to an uninterrupted one.
The trials run in kill_trials.py (a fork server, so 30+ trials fit in CI); see its docstring."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TRIALS = 30


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("kills")
    env = {**os.environ, "SAEKIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent.parent), str(HERE), env.get("PYTHONPATH", "")]
    )
    r = subprocess.run(
        [sys.executable, str(HERE / "kill_trials.py"), str(work), str(TRIALS), "13"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(doc, indent=1))  # the figures, for the log (-s)
    return doc


def test_sigkill_at_random_moments_then_resume_is_bit_identical(results):
    k = results["kill"]
    assert k["failures"] == [], k
    assert k["trials"] == TRIALS and k["bit_identical"] == TRIALS, k
    assert k["kills"] >= TRIALS, k
    # Both paths were exercised: kills during resumes, and kills before the first checkpoint
    # (recovered by re-running the same command).
    assert k["kills_during_resume"] >= 1, k
    assert k["restarts_before_checkpoint"] >= 3, k


@pytest.mark.parametrize(
    "case",
    ["double-sigint-0", "double-sigint-1", "sigterm", "sigterm-then-sigint", "triple-sigint"],
)
def test_signals_stop_cleanly_and_resume_bit_identical(results, case):
    entry = results["signals"][case]
    # A second signal is ignored until the step ends (a third quits without writing): the
    # run exits 130 and whatever checkpoint it left resumes to the uninterrupted result.
    assert (entry["how"], entry["code"]) == ("exit", 130), entry
    assert entry["checkpoint"] and entry["identical"], entry


def test_kill_between_checkpoint_renames_falls_back_to_an_older_checkpoint(results):
    r = results["renames"]
    assert r["killed"]
    # The kill left `latest` naming a directory that is not there...
    assert "step-000000060" not in r["left"] and "step-000000055" in r["left"]
    # ...and resume used the newest complete one, finished identically, and cleaned up.
    assert r["resume_code"] == 0 and r["identical"]
    assert not [n for n in r["after"] if n.startswith((".tmp-", ".old-"))]
