"""Kill and signal trials of `saekit train` on a tiny synthetic run (run by
test_rel_kills.py as a subprocess; prints one JSON line of results).

  python kill_trials.py WORKDIR TRIALS SEED

Every trial: a run SIGKILLed at a seeded random moment, then resumed (`--resume`) when a
checkpoint exists or restarted with the same command when none does, each resume possibly
killed again, until one finishes. The finished SAE must be byte-identical to an
uninterrupted run's, and so must metrics.jsonl. Then: double and triple SIGINT, SIGTERM, and
a SIGKILL injected between the two renames of a checkpoint replacement.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path

import forkrun

from saekit.training import checkpoint as ckpt

DATA = "synthetic:superposition:n_features=64,d_in=16,k_avg=3"
STEPS = 60


def train_args(out: Path) -> list[str]:
    return [
        "train", "--data", DATA, "--n-latents", "64", "--k", "4", "--steps", str(STEPS),
        "--batch-size", "64", "--eval-tokens", "256", "--checkpoint-every", "5",
        "--no-progress", "--threads", "1", "--out", str(out),
    ]  # fmt: skip


def same_result(a: Path, b: Path) -> bool:
    wa, wb = (
        a / "saes" / "topk" / "weights.safetensors",
        b / "saes" / "topk" / "weights.safetensors",
    )
    if not (wa.is_file() and wb.is_file()):
        return False
    return (
        wa.read_bytes() == wb.read_bytes()
        and (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    )


def has_checkpoint(out: Path) -> bool:
    return ckpt.latest_checkpoint(out / "checkpoints") is not None


def finish(out: Path, log: Path, rng: random.Random, duration: float, stats: dict) -> str | None:
    """Resume or restart until a run completes; each attempt may be killed again (at most
    two kills per trial in all). None on success, else what went wrong."""
    kills = 1
    while True:
        resuming = has_checkpoint(out)
        argv = ["train", "--resume", str(out), "--no-progress"] if resuming else train_args(out)
        stats["resumes" if resuming else "restarts_before_checkpoint"] += 1
        kill_after = rng.uniform(0.02, duration) if kills < 2 and rng.random() < 0.5 else None
        how, code, _ = forkrun.run(argv, log, kill_after=kill_after)
        if how == "killed":
            kills += 1
            stats["kills"] += 1
            stats["kills_during_resume" if resuming else "kills_during_restart"] += 1
            continue
        if code != 0:
            return f"{' '.join(argv[:3])} exited {code}; log {log}"
        return None


def kill_trials(work: Path, ref: Path, n: int, seed: int, duration: float) -> dict:
    rng = random.Random(seed)
    stats = dict(trials=0, kills=0, kills_during_resume=0, kills_during_restart=0, resumes=0,
                 restarts_before_checkpoint=0, bit_identical=0, failures=[])  # fmt: skip
    for t in range(n):
        out, log = work / f"kill-{t}", work / f"kill-{t}.log"
        stats["trials"] += 1
        for attempt in range(4):  # a run can be faster than the reference: kill sooner
            out = work / f"kill-{t}-{attempt}"
            if t % 10 == 0:  # just after run.json: before the first checkpoint, for sure
                how, code, _ = forkrun.run(
                    train_args(out), log, kill_after=rng.uniform(0.0, 0.003),
                    after_file=out / "run.json",
                )  # fmt: skip
            else:
                how, code, _ = forkrun.run(
                    train_args(out), log, kill_after=rng.uniform(0.02, 0.8 * duration)
                )
            if how == "killed":
                break
            duration /= 2
        if how != "killed":
            stats["failures"].append(f"trial {t}: finished before its kill (exit {code})")
            continue
        stats["kills"] += 1
        problem = finish(out, log, rng, duration, stats)
        if problem:
            stats["failures"].append(f"trial {t}: {problem}")
        elif same_result(ref, out):
            stats["bit_identical"] += 1
        else:
            stats["failures"].append(f"trial {t}: result differs from the uninterrupted run")
    return stats


def signal_trials(work: Path, ref: Path) -> dict:
    """Signals during training (timed from the first checkpoint, so the handlers are in
    place): exit code 130, then resume -> byte-identical result."""
    cases = [
        ("double-sigint-0", [(0.0, signal.SIGINT), (0.0005, signal.SIGINT)]),
        ("double-sigint-1", [(0.05, signal.SIGINT), (0.0505, signal.SIGINT)]),
        ("sigterm", [(0.02, signal.SIGTERM)]),
        ("sigterm-then-sigint", [(0.03, signal.SIGTERM), (0.0305, signal.SIGINT)]),
        ("triple-sigint", [(0.04 + i * 0.0005, signal.SIGINT) for i in range(3)]),
    ]
    results = {}
    for name, sigs in cases:
        out, log = work / name, work / f"{name}.log"
        how, code, _ = forkrun.run(
            train_args(out), log, signals=sigs, after_file=out / "checkpoints" / "latest"
        )
        entry = {"how": how, "code": code, "checkpoint": has_checkpoint(out)}
        resume = ["train", "--resume", str(out), "--no-progress"]
        how2, code2, _ = forkrun.run(resume if has_checkpoint(out) else train_args(out), log)
        entry["identical"] = code2 == 0 and same_result(ref, out)
        results[name] = entry
    return results


def kill_between_renames(work: Path, ref: Path) -> dict:
    """SIGKILL between the two renames of the fallback directory replacement (systems
    without an atomic exchange), at the moment the run's final checkpoint replaces itself
    on a resume of a finished run."""
    out, log = work / "renames", work / "renames.log"
    how, code, _ = forkrun.run(train_args(out), log)
    assert how == "exit" and code == 0, log

    def inject():
        from saekit.formats import atomic

        atomic.exchange = lambda a, b: False  # force the two-rename path
        real = os.replace

        def replace(src, dst, *a, **kw):
            real(src, dst, *a, **kw)
            if Path(src).name.startswith("step-") and Path(dst).name.startswith(".old-"):
                os.kill(os.getpid(), signal.SIGKILL)  # the old one is aside, the new not in

        atomic.os.replace = replace

    how, code, _ = forkrun.run(["train", "--resume", str(out), "--no-progress"], log,
                               prepare=inject)  # fmt: skip
    left = sorted(p.name for p in (out / "checkpoints").iterdir())
    how2, code2, _ = forkrun.run(["train", "--resume", str(out), "--no-progress"], log)
    after = sorted(p.name for p in (out / "checkpoints").iterdir())
    return {"killed": how == "killed", "left": left, "resume_code": code2,
            "identical": code2 == 0 and same_result(ref, out), "after": after}  # fmt: skip


def main() -> None:
    work, n, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "reference"
    how, code, seconds = forkrun.run(train_args(ref), work / "reference.log")
    assert how == "exit" and code == 0, (work / "reference.log").read_text()
    # Kill moments span the whole run: start-up, training, checkpoints, finalisation, report.
    result = {"reference_seconds": round(seconds, 2)}
    result["kill"] = kill_trials(work, ref, n, seed, seconds)
    result["signals"] = signal_trials(work, ref)
    result["renames"] = kill_between_renames(work, ref)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
