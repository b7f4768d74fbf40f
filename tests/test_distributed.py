"""Training on two real processes (torch.distributed, gloo): data parallelism equals one
process on the global batch, module parallelism equals training each SAE alone, and a rank
that dies makes the others exit with a message, the last checkpoint intact and resumable."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from dist_worker import trainer

from saekit.cli.main import main
from saekit.formats import native

HERE = Path(__file__).parent
TIMEOUT = 240  # seconds for any launched group


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return subprocess.run([*cmd, *args], env=env(), capture_output=True, text=True, timeout=TIMEOUT)


def assert_same_weights(a: Path, b: Path, exact: bool) -> None:
    sa, sb = native.load(a).state_dict(), native.load(b).state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if exact:
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert torch.allclose(sa[key], sb[key], atol=2e-5, rtol=1e-4), key


def test_data_parallel_equals_one_process_on_the_global_batch(tmp_path):
    r = torchrun(str(HERE / "dist_worker.py"), "--batch", "128", "--out", str(tmp_path / "dp"))
    assert r.returncode == 0, r.stdout + r.stderr
    trainer(256, tmp_path / "single").fit()
    assert_same_weights(tmp_path / "dp/saes/topk", tmp_path / "single/saes/topk", exact=False)
    # and differs from one process seeing only one rank's batches
    trainer(128, tmp_path / "half").fit()
    half = native.load(tmp_path / "half/saes/topk").W_enc
    assert not torch.allclose(half, native.load(tmp_path / "dp/saes/topk").W_enc, atol=1e-4)


TRAIN = ["train", "--data", "synthetic:superposition:d_in=16,n_features=64,k_avg=3",
         "--n-latents", "64", "--k", "4", "--batch-size", "256", "--eval-tokens", "1024",
         "--no-progress", "--threads", "1"]  # fmt: skip


def test_module_parallel_trains_each_sae_as_alone(tmp_path):
    r = torchrun("-m", "saekit", *TRAIN, "-a", "topk,batchtopk", "--steps", "15",
                 "--parallel", "modules", "--out", str(tmp_path / "mp"))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 1 of 2 (modules)" in r.stdout
    for arch in ("topk", "batchtopk"):
        assert main([*TRAIN, "-a", arch, "--steps", "15", "--out", str(tmp_path / arch)]) == 0
        assert_same_weights(tmp_path / "mp/saes" / arch, tmp_path / arch / "saes" / arch, True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_pair(out: Path, *extra: str) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in (0, 1):
        e = {**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        cmd = [sys.executable, "-m", "saekit", *TRAIN, "-a", "topk", "--steps", "400",
               "--checkpoint-every", "10", "--dist-timeout", "30", "--out", str(out), *extra]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return procs


def test_a_dead_rank_stops_the_others_with_a_message_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    procs = launch_pair(out)
    deadline = time.time() + TIMEOUT
    while not (out / "checkpoints" / "latest").exists():
        assert time.time() < deadline and procs[0].poll() is None, procs[0].communicate()
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    start = time.time()
    _, err = procs[0].communicate(timeout=60)
    assert time.time() - start < 45  # within the 30 s collective timeout, plus slack
    assert procs[0].returncode == 2, err
    assert "a peer process died" in err and "resume with --resume" in err
    assert "Traceback" not in err
    procs[1].communicate()
    # The last checkpoint is whole: both ranks resume it and finish.
    resumed = launch_pair(out, "--resume", str(out))
    errors = [p.communicate(timeout=TIMEOUT)[1] for p in resumed]
    assert [p.returncode for p in resumed] == [0, 0], errors
    assert native.load(out / "saes" / "topk").W_dec.shape == (64, 16)
