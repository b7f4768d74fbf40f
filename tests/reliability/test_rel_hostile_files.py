"""Hostile files: every damaged SAE directory, checkpoint, run.json, cache manifest/shard and
eval.json in the generated corpus (hostile_files.py) ends in one line and exit code 2, within
a bounded address space (RLIMIT_AS: +1 GiB) and without running any code from the files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MAX_RSS_GROWTH_MB = 300  # a cfg.json claiming 10^7 or 10^12 latents must not be built


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")
    env = {**os.environ, "SAEKIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent.parent), str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")]
    )
    r = subprocess.run(
        [sys.executable, str(HERE / "hostile_files.py"), str(work)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_corpus_covers_every_family(corpus):
    families = {c["name"].split("/")[0] for c in corpus["cases"]}
    assert families == {"sae", "checkpoint", "manifest", "eval"}
    assert len(corpus["cases"]) >= 80


def test_no_code_from_files_ever_runs(corpus):
    assert corpus["marker"] is False  # the pickle payloads would have created it


def test_every_hostile_file_is_one_line_exit_2_bounded_memory(corpus):
    bad = []
    for c in corpus["cases"]:
        lines = c["lines"]
        ok = (
            c["code"] == 2
            and len(lines) == 1
            and "Traceback" not in lines[0]
            and c["expect"] in lines[0]
            and c["rss_growth_mb"] < MAX_RSS_GROWTH_MB
        )
        if not ok:
            bad.append(c)
    assert not bad, json.dumps(bad, indent=1)[:4000]


def test_schema_errors_name_the_problem_not_a_python_type(corpus):
    # Validation at the boundary: an edited manifest, cfg.json, checkpoint or eval.json is
    # described in words; the catch-all ("KeyError: ...") is for what no schema foresaw.
    generic = [c["name"] for c in corpus["cases"] if "saekit --debug" in c["lines"][0]]
    assert generic == [], generic
