"""Shared CLI plumbing: one-line errors with exit code 2, thread setup, option parsing."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"saekit: error: {message}\n")
    raise SystemExit(2)


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
