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


def tiny_cache(path: Path, hookpoints: list[str]) -> Path:
    """A cache of the tiny test model, captured in one forward for every hookpoint."""
    from tiny_model import TEXTS, tiny_model, tiny_tokenizer

    from saekit.data.cache import write_cache
    from saekit.data.corpora import TextListCorpus

    docs = [f"doc {i}: {TEXTS[i % 8]} {TEXTS[(i * 3) % 8]}" for i in range(300)]
    write_cache(path, tiny_model(), tiny_tokenizer(), TextListCorpus(docs, 0.2), hookpoints,
                n_tokens=600, shard_tokens=100, heldout_tokens=100, ctx_len=16)  # fmt: skip
    return path


def cache_args(spec: str, out: Path) -> list[str]:
    return ["train", "--data", spec, "-a", "topk", "--k", "4", "--n-latents", "64",
            "--batch-size", "64", "--steps", "12", "--eval-tokens", "64", "--no-progress",
            "--threads", "1", "--out", str(out)]  # fmt: skip


def test_sharded_cache_ranks_read_their_own_shards_and_checkpoint_each_position(tmp_path):
    from saekit.training import checkpoint as ckpt

    cache = tiny_cache(tmp_path / "cache", ["model.layers.0"])
    r = torchrun("-m", "saekit", *cache_args(f"cache:{cache}", tmp_path / "run"))
    assert r.returncode == 0, r.stdout + r.stderr
    state = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    positions = state["stream"]["ranks"]
    assert len(positions) == 2 and state["world_size"] == 2
    # Resuming sharded data on another number of ranks is refused in one line.
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2


def test_module_parallel_trains_two_hookpoints_on_two_ranks(tmp_path):
    hooks = ["model.layers.0", "model.layers.1"]
    cache = tiny_cache(tmp_path / "cache", hooks)
    spec = f"cache:{cache}@{','.join(hooks)}"
    r = torchrun("-m", "saekit", *cache_args(spec, tmp_path / "mp"), "--parallel", "modules")
    assert r.returncode == 0, r.stdout + r.stderr
    for hook in hooks:  # each equals that hookpoint trained alone, bit for bit
        assert main(cache_args(f"cache:{cache}@{hook}", tmp_path / hook)) == 0
        ours = tmp_path / "mp" / "saes" / f"topk-{hook}"
        assert native.load(ours).metadata["data"]["hookpoint"] == hook
        assert_same_weights(ours, tmp_path / hook / "saes" / "topk", exact=True)
    # One process cannot take several hookpoints: one line, before any work.
    assert main(cache_args(spec, tmp_path / "single")) == 2
