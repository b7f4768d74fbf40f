"""A fork server for fault-injection trials: import saekit (and torch) once, then run each
`saekit ...` command line in a forked child that the parent can SIGKILL or signal at a chosen
moment. The child is a real process running the real CLI entry point (`saekit.cli.main.main`);
forking only skips the ~2 s of imports per run, so dozens of kill trials fit in CI.

The parent never runs a torch operation (a forked child would inherit a half-initialised
thread pool), so comparisons of results are done on file bytes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("SAEKIT_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Heavy imports once, before any fork (no torch ops).
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402, F401
import torch  # noqa: E402, F401
import torch._dynamo  # noqa: E402, F401 - imported by the first optimiser step: ~3 s per child

import saekit.cli.main  # noqa: E402
import saekit.cli.train  # noqa: E402, F401
import saekit.data.synthetic  # noqa: E402, F401
import saekit.evaluation.evaluate  # noqa: E402, F401
import saekit.training.report  # noqa: E402, F401
import saekit.training.trainer  # noqa: E402, F401


def run(
    argv: list[str],
    log: Path,
    kill_after: float | None = None,
    signals: list[tuple[float, int]] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
    prepare=None,
    after_file: Path | None = None,
) -> tuple[str, int | None, float]:
    """Run `saekit ARGV` in a child. kill_after: SIGKILL it after that many seconds.
    signals: [(delay_from_start, signum), ...] sent in order. Returns (how, code, seconds):
    how is "exit" (code = exit status) or "killed". prepare: called in the child before the
    command (to inject a fault). after_file: signal and kill times count from the moment
    this path exists (e.g. metrics.jsonl: training has begun)."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        code = 99
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            if cwd is not None:
                os.chdir(cwd)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if prepare is not None:
                prepare()
            code = saekit.cli.main.main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - report anything as a failed run
            import traceback

            traceback.print_exc()
            code = 98
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code or 0))
    plan = sorted(signals or [])
    if kill_after is not None:
        plan.append((kill_after, signal.SIGKILL))
    if after_file is not None and plan:
        while not after_file.exists():
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _result(status, start)
            time.sleep(0.002)
        start0 = time.perf_counter() - start
        plan = [(at + start0, signum) for at, signum in plan]
    for at, signum in plan:
        while time.perf_counter() - start < at:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _result(status, start)
            time.sleep(0.002)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    deadline = start + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return _result(status, start)
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"saekit {' '.join(argv)} ran over {timeout} s; log {log}")
        time.sleep(0.005)


def _result(status: int, start: float) -> tuple[str, int | None, float]:
    seconds = time.perf_counter() - start
    if os.WIFSIGNALED(status):
        return "killed", None, seconds
    return "exit", os.WEXITSTATUS(status), seconds


def call(fn, log: Path, timeout: float = 300.0) -> int:
    """Run fn() in a forked child (for setup that needs torch); its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            fn()
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 97
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1


def run_bounded(argv: list[str], log: Path, memory_bytes: int, timeout: float = 60.0) -> dict:
    """`saekit ARGV` in a child whose address space may grow by at most memory_bytes over
    the parent's (RLIMIT_AS). Returns exit code, stderr/stdout text, peak RSS growth, seconds."""
    import resource

    err_path, out_path = Path(f"{log}.err"), Path(f"{log}.out")
    rss_before = _rss_bytes()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            vm = _vm_bytes()
            resource.setrlimit(resource.RLIMIT_AS, (vm + memory_bytes, vm + memory_bytes))
            for fd_target, path in ((1, out_path), (2, err_path)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, fd_target)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            code = saekit.cli.main.main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 98
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code or 0))
    deadline = start + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.005)
    return {
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1,
        "stderr": err_path.read_text(errors="replace"),
        "stdout": out_path.read_text(errors="replace"),
        "rss_growth": max(0, usage.ru_maxrss * 1024 - rss_before),
        "seconds": time.perf_counter() - start,
    }


def _statm(field: int) -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    return _statm(1)


def _vm_bytes() -> int:
    return _statm(0)
