"""ruff (lint and format) over the package, tests and benchmarks, as part of the test run."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["saekit", "tests", "benchmarks"]


@pytest.fixture(scope="module")
def ruff():
    exe = shutil.which("ruff")
    assert exe, "ruff is not installed (pip install -e '.[test]')"
    return exe


def test_ruff_check_is_clean(ruff):
    r = subprocess.run([ruff, "check", *TARGETS], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_clean(ruff):
    r = subprocess.run(
        [ruff, "format", "--check", *TARGETS], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
