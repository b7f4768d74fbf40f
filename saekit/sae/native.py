"""The C kernels (pursuit_kernels.c, sparse_kernels.c), compiled on first use and loaded through
ctypes.

Built once per machine with the system C compiler (`$CC`, else `cc`) for the host CPU
(-march=native) into `$SAEKIT_CACHE` (default ~/.cache/saekit)/native/<key>/, where the
key hashes the source, the flags, the compiler and the CPU, so a changed source, compiler or
machine gets its own build. A build takes well under a second. Without a compiler, or with
SAEKIT_NATIVE=0, `library()` returns None and callers use their torch path (the reference,
and the only path on GPUs): the same selections and gradients up to rounding, slower on CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# Not -ffast-math: without FMA contraction c − α·G[j] rounds as torch's addcmul does, so the
# C and torch paths make the same selections. Reassociation lets the compiler vectorise the sum
# and max reductions (5x on the pursuit).
FLAGS = [
    "-O3", "-march=native", "-fPIC", "-std=c11", "-ffp-contract=off", "-fno-math-errno",
    "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math",
]  # fmt: skip
# Source -> its extra flags. The pursuit assumes finite numbers (its callers reject NaN/Inf
# input); top-k does not: it also serves inference, where nobody checks the scores first.
SOURCES = {
    Path(__file__).with_name("pursuit_kernels.c"): ["-ffinite-math-only"],
    Path(__file__).with_name("sparse_kernels.c"): [],
}
TYPES = {torch.float32: ("float", "_f32"), torch.float64: ("double", "_f64")}

_lib: ctypes.CDLL | None = None
_failed = False


def enabled() -> bool:
    return os.environ.get("SAEKIT_NATIVE", "1") != "0"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return cc if shutil.which(cc) else None


def _build(cc: str, version: str, target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        objects = []
        for source, extra in SOURCES.items():
            for real, suffix in TYPES.values():
                obj = Path(tmp) / f"{source.stem}{suffix}.o"
                defines = [f"-DREAL={real}", f"-DSUFFIX={suffix}"]
                cmd = [cc, *FLAGS, *extra, *defines, "-c", str(source), "-o", str(obj)]
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                objects.append(str(obj))
        out = Path(tmp) / "kernels.so"
        subprocess.run([cc, "-shared", *objects, "-o", str(out)], check=True, capture_output=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a concurrent process sees the old state or the whole library.
        part = target.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(out, part)
        os.replace(part, target)
    (target.parent / "compiler.txt").write_text(version)


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (disabled, no compiler, or the build failed: warned once)."""
    global _lib, _failed
    if not enabled():
        return None
    if _lib is not None or _failed:
        return _lib
    cc = _compiler()
    if cc is None:
        _failed = True
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join(
            [
                *(f"{src.read_text()}{extra}" for src, extra in SOURCES.items()),
                " ".join(FLAGS),
                version,
                _cpu_signature(),
            ]
        ).encode()
    ).hexdigest()[:16]
    from saekit.data.models import cache_root

    target = cache_root() / "native" / key / "kernels.so"
    try:
        if not target.exists():
            _build(cc, version, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        warnings.warn(
            f"saekit: C kernels unavailable, using the torch path ({detail.strip()[:300]})",
            stacklevel=2,
        )
        _failed = True
        return None
    _declare(lib)
    _lib = lib
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    P, I, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    for _, suffix in TYPES.values():
        getattr(lib, f"mp_pursue{suffix}").argtypes = [
            P, P, P, P, P, I, I, I, I, I, I, ctypes.c_int, D, D, P, P, P, P, P
        ]  # fmt: skip
        getattr(lib, f"mirror_upper{suffix}").argtypes = [P, I]
        getattr(lib, f"mp_replay_forward{suffix}").argtypes = [P, P, P, P, I, I, I, P, P, P]
        getattr(lib, f"mp_replay_backward{suffix}").argtypes = [
            P,
            P,
            P,
            P,
            P,
            P,
            P,
            I,
            I,
            I,
            P,
            P,
            P,
        ]
        getattr(lib, f"row_topk{suffix}").argtypes = [P, I, I, I, P, P]
        getattr(lib, f"remove_radial{suffix}").argtypes = [P, P, I, I]
        getattr(lib, f"sparse_backward{suffix}").argtypes = [
            P,
            P,
            P,
            P,
            P,
            I,
            I,
            I,
            I,
            I,
            I,
            P,
            P,
            P,
        ]
        for name in (
            "mp_pursue", "mirror_upper", "mp_replay_forward", "mp_replay_backward", "row_topk",
            "remove_radial",
        ):  # fmt: skip
            getattr(lib, name + suffix).restype = None
        getattr(lib, f"sparse_backward{suffix}").restype = ctypes.c_int


def kernel(name: str, dtype: torch.dtype) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The kernel `name` for this dtype, or None when there is none (no library, or a dtype
    other than fp32/fp64)."""
    lib = library()
    if lib is None or dtype not in TYPES:
        return None
    return getattr(lib, name + TYPES[dtype][1])


def split_rows(batch: int, run: Callable[[int, int, int], None]) -> int:
    """run(start, stop, worker) over slices of the batch on up to torch.get_num_threads()
    threads (the kernels drop the GIL); returns the number of workers used."""
    workers = max(1, min(torch.get_num_threads(), batch // 64))
    if workers == 1:
        run(0, batch, 0)
        return 1
    bounds = [batch * w // workers for w in range(workers + 1)]
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(run, bounds[w], bounds[w + 1], w) for w in range(workers)]:
            f.result()
    return workers


def ptr(t: torch.Tensor | None) -> int | None:
    """Data pointer for a kernel argument; tensors must be contiguous CPU tensors."""
    if t is None:
        return None
    assert t.is_contiguous() and t.device.type == "cpu", "kernel arguments: contiguous CPU"
    return t.data_ptr()
