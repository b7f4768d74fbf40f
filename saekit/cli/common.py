"""Shared CLI plumbing: one-line errors with exit code 2, thread setup, option parsing."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        report_error(self.prog, f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


# Errors of our own that carry a sentence for the user (no type name needed in front).
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, ValueError, OSError)


def report_error(prog: str, error: BaseException | str) -> int:
    """The one way every command reports an error: one line on stderr, `PROG: error: ...`;
    returns the exit code, 2."""
    text = error if isinstance(error, str) else one_line(error)
    sys.stderr.write(f"{prog}: error: {text}\n")
    return 2


def one_line(e: BaseException) -> str:
    """The error as one line. Our own error types carry sentences; anything else (a
    KeyError from an edited file, a torch RuntimeError...) is named by its type as well."""
    from saekit.formats.native import SAEFileError
    from saekit.training.checkpoint import CheckpointError
    from saekit.training.distributed import DistributedError

    text = " ".join(str(e).split()) or repr(e)
    if len(text) > 1000:
        text = text[:1000] + " ..."
    if isinstance(e, (*USER_ERRORS, SAEFileError, CheckpointError, DistributedError)):
        return text
    return f"{type(e).__name__}: {text} (run 'saekit --debug ...' for the traceback)"


def set_threads(requested: int | None) -> int:
    """Torch threads, chosen deliberately: all cores on an idle machine, 1 when another busy
    process shares them (a second busy process makes multi-threaded matmuls crawl)."""
    import torch

    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    if requested is None:
        env = os.environ.get("SAEKIT_THREADS")
        if env:
            requested = int(env)
        else:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
            requested = cores if load < max(cores - 1, 0.5) else 1
    n = max(1, min(int(requested), cores))
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    return n


def parse_value(text: str) -> Any:
    """'16' -> 16, '0.5' -> 0.5, 'true' -> True, 'none' -> None, '[1,2]' -> [1, 2], else str."""
    low = text.strip().lower()
    if low in {"true", "false"}:
        return low == "true"
    if low in {"none", "null"}:
        return None
    if text.startswith("["):
        import json

        try:
            return json.loads(text)
        except ValueError:
            raise UsageError(f"cannot parse list value {text!r}") from None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str]) -> dict[str, list[Any]]:
    """['k=16,32', 'aux_coeff=0'] -> {'k': [16, 32], 'aux_coeff': [0]} (a list = a sweep)."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"option {item!r} is not KEY=VALUE")
        parts = [value] if value.startswith("[") else value.split(",")
        out[key.strip().replace("-", "_")] = [parse_value(v) for v in parts]
    return out


# ---- argparse value types: bad values fail at parse time, before any work -----------------
# argparse turns the ArgumentTypeError message into "argument --flag: MESSAGE" (exit code 2).


def _number(text: str, conv: type) -> Any:
    # A ValueError makes argparse say "invalid int value: 'abc'", as for type=int.
    value = conv(text)
    if conv is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_in(lo: int | None = None, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (None = unbounded)."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(_range_message(value, lo, hi))
        return value

    parse.__name__ = "int"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, open_lo: bool = False):
    """An argparse type: a finite number in [lo, hi] ((lo, hi] with open_lo)."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if (lo is not None and (value < lo or (open_lo and value == lo))) or (
            hi is not None and value > hi
        ):
            raise argparse.ArgumentTypeError(_range_message(value, lo, hi, open_lo))
        return value

    parse.__name__ = "float"
    return parse


def _range_message(value: Any, lo: Any, hi: Any, open_lo: bool = False) -> str:
    if hi is None:
        return f"must be {'>' if open_lo else '>='} {lo}, got {value}"
    if lo is None:
        return f"must be <= {hi}, got {value}"
    return f"must be in {'(' if open_lo else '['}{lo}, {hi}], got {value}"


positive_int = int_in(1)
nonneg_int = int_in(0)
positive_float = float_in(0.0, open_lo=True)
port_number = int_in(0, 65535)
thread_count = int_in(1, 4096)


def text_arg(text: str) -> str:
    """Any argument that becomes a file name or is written to a file must be valid UTF-8
    (undecodable argv bytes arrive as lone surrogates and fail only when written)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"{text.encode('utf-8', 'replace')!r} is not valid UTF-8"
        ) from None
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def path_arg(text: str) -> Path:
    return Path(text_arg(text))


def check_output_dir(path: Path, flag: str = "--out") -> None:
    """Fail now, not after the work, when `path` cannot become a directory we write into."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {path}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{flag} {path}: {parent} is not writable")
            return


def check_output_file(path: Path, flag: str = "--out") -> None:
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory, expected a file name")
    check_output_dir(path.parent, flag)


context_length = int_in(2, 1 << 20)


def check_cache_manifest(cache_dir: Path) -> None:
    """An activation cache's manifest.json checked by schema before anything reads it, so an
    edited manifest gives one line naming the field (not a KeyError deep in the reader)."""
    from saekit.formats.jsonfile import read_json

    path = cache_dir / "manifest.json"
    if not path.is_file():
        return  # the reader says "no manifest" itself
    m = read_json(path, "a cache manifest", UsageError)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UsageError(f"{path}: {what}")

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    need(isinstance(m, dict), "expected a JSON object")
    version = m.get("format_version")
    need(count(version), f"format_version must be an integer, got {version!r}")
    hookpoints = m.get("hookpoints")
    need(isinstance(hookpoints, dict) and bool(hookpoints), "hookpoints must be a non-empty object")
    for h, entry in hookpoints.items():
        where = f"hookpoints[{h!r}]"
        need(isinstance(entry, dict), f"{where} must be an object")
        arrays, splits = entry.get("arrays"), entry.get("splits")
        need(isinstance(arrays, dict) and "x" in arrays, f"{where}.arrays must describe 'x'")
        for name, spec in arrays.items():
            need(
                isinstance(spec, dict)
                and spec.get("dtype") in ("float16", "bfloat16", "float32", "int32", "int64")
                and isinstance(spec.get("shape"), list)
                and all(count(d) and d <= 2**24 for d in spec["shape"]),
                f"{where}.arrays[{name!r}] must have a known dtype and a small shape",
            )
        need(isinstance(splits, dict), f"{where}.splits must be an object")
        for split, s in splits.items():
            need(
                isinstance(s, dict)
                and count(s.get("n_tokens"))
                and isinstance(s.get("shards"), list),
                f"{where}.splits[{split!r}] needs n_tokens and a list of shards",
            )
            for shard in s["shards"]:
                ok = isinstance(shard, dict) and isinstance(shard.get("file"), str)
                rel = Path(shard["file"]) if ok else Path("/")
                need(
                    ok
                    and not rel.is_absolute()
                    and ".." not in rel.parts
                    and count(shard.get("n_tokens"))
                    and count(shard.get("bytes"))
                    and isinstance(shard.get("sha256"), str),
                    f"{where}.splits[{split!r}] has a malformed shard entry "
                    "(file inside the cache, n_tokens, bytes, sha256)",
                )


def check_data_spec(spec: str) -> None:
    """Validate what a data spec points at, where that is a file we can check cheaply."""
    from saekit.data.spec import parse_data_spec

    data = parse_data_spec(spec)
    if data.kind == "cache":
        check_cache_manifest(Path(data.source))
