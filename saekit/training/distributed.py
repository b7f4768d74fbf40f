"""Training on several processes with torch.distributed, launched by torchrun.

Two layouts (`saekit train --parallel data|modules`):

- **data**: every rank trains every SAE on its own disjoint share of the stream: its own
  cache shards or documents (`split_stream`), or for in-memory streams batches r, r + W, ...
  (then W ranks at batch B train exactly as one process at batch W·B). Gradients are
  averaged with one all-reduce per step. Also reduced: the initial sample (input scale, b_dec), which latents fired
  (dead-latent counters), the floating-point buffers that selectors and loss terms track
  (BatchTopK / Feature Choice thresholds, JumpReLU's λ, aux_zipf densities), and whether a
  stop was requested, so every rank stops at the same step. Rank 0 writes checkpoints, logs
  and SAEs.
- **modules**: the SAEs of a sweep are spread over ranks (SAE i on rank i mod W). Rank 0
  reads the stream once (one model forward per batch) and broadcasts each batch; every rank
  trains its own SAEs exactly as a single process would, and writes their checkpoints under
  rank<r>/ and their SAE directories under saes/.

No hangs: every collective runs under the process group's timeout (`--dist-timeout`), and a
peer that dies closes its connections, so the others fail at their next collective with a
message naming the cause instead of waiting forever. Checkpoints are written atomically, so
the last one survives any rank's death.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from saekit.data.stream import Batch

MODES = ("data", "modules")


class DistributedError(RuntimeError):
    """A collective failed: a peer died, raised, or stopped answering within the timeout."""


@dataclass
class Distributed:
    """This process's place in the group. `mode` is "data" or "modules"."""

    rank: int
    world_size: int
    mode: str = "data"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives (each wrapped so a failure names its cause) -------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as e:  # type: ignore[attr-defined]
            raise DistributedError(
                f"rank {self.rank}/{self.world_size}: {what} failed — a peer process died, "
                f"raised or stopped answering within the timeout ({e.__class__.__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). The last checkpoint is intact; "
                "resume with --resume"
            ) from None

    def _average(self, tensors: list[torch.Tensor], what: str, dtype=None) -> None:
        """Each tensor ← its mean over ranks, in one flat all-reduce."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        flat = flat.to(dtype) if dtype is not None else flat
        self._call(what, dist.all_reduce, flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """grad ← mean over ranks."""
        self._average([p.grad for p in params if p.grad is not None], "gradient all-reduce")

    def any(self, mask: torch.Tensor) -> torch.Tensor:
        """Element-wise OR of a bool tensor over ranks."""
        flags = mask.to(torch.uint8)
        self._call("all-reduce", dist.all_reduce, flags, op=dist.ReduceOp.MAX)
        return flags.bool()

    def gather_objects(self, obj: Any) -> list[Any]:
        """One picklable object from every rank, in rank order."""
        out: list[Any] = [None] * self.world_size
        self._call("all-gather", dist.all_gather_object, out, obj)
        return out

    def gather_cat(self, x: torch.Tensor) -> torch.Tensor:
        """[n, ...] on every rank -> [W·n, ...], rank-major (equal n on every rank)."""
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        self._call("all-gather", dist.all_gather, parts, x.contiguous())
        return torch.cat(parts)

    @torch.no_grad()
    def average_buffers(self, module: torch.nn.Module) -> None:
        """Floating buffers (running thresholds, densities, dual variables) ← mean over ranks
        (summed in float64)."""
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        self._average(buffers, "buffer all-reduce", torch.float64)

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self._call("broadcast", dist.broadcast_object_list, box, src=0)
        return box[0]

    def barrier(self) -> None:
        self._call("barrier", dist.barrier)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str) -> str:
    """The device a name means here: auto is CUDA when available, else the CPU; under
    torchrun, cuda is this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    elif name != "cpu":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def from_environment(
    mode: str = "data", timeout_s: float = 300.0, backend: str = "gloo"
) -> Distributed | None:
    """Join the group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); None when this
    is a single process. backend: gloo on CPU, nccl for CUDA devices."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if mode not in MODES:
        raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
    if not dist.is_initialized():
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s), rank=int(os.environ["RANK"])
        )
    return Distributed(dist.get_rank(), dist.get_world_size(), mode)


def split_stream(stream: Any, group: Distributed) -> Any:
    """Rank r's disjoint share of `stream`: its own shards or documents where the stream can
    (`shard`: caches, model streams), else every W-th batch (`RankSlice`)."""
    if hasattr(stream, "shard"):
        stream.shard(group.rank, group.world_size)
        return stream
    return RankSlice(stream, group.rank, group.world_size)


class RankSlice:
    """Rank r's share of a stream: batches r, r + W, r + 2W, ... (data parallelism).

    Streams with random access (`batch(index)`, e.g. synthetic recipes) are read only where
    needed; others are read in order and the other ranks' batches skipped. The position is
    the underlying stream's, identical on every rank, so one checkpoint resumes them all."""

    def __init__(self, stream: Any, rank: int, world_size: int):
        self.stream, self.rank, self.world_size = stream, rank, world_size
        self.d_in, self.batch_size = stream.d_in, stream.batch_size

    def __iter__(self) -> Iterator[Batch]:
        it = iter(self.stream)
        while True:
            kept = None
            for i in range(self.world_size):
                try:
                    batch = next(it)
                except StopIteration:
                    return
                if i == self.rank:
                    kept = batch
            yield kept

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {**self.stream.describe(), "rank_slice": [self.rank, self.world_size]}


class BroadcastStream:
    """One reader, every rank fed (module parallelism): rank 0 iterates the real stream and
    broadcasts each batch (tensors and the stream position after it); the others receive."""

    def __init__(self, stream: Any, group: Distributed, d_in: int, batch_size: int):
        self.stream, self.group = stream, group
        self.d_in, self.batch_size = d_in, batch_size
        self._position: dict[str, Any] | None = None
        self._description = group.broadcast_object(stream.describe() if group.is_main else None)

    def __iter__(self) -> Iterator[Batch]:
        it = iter(self.stream) if self.group.is_main else None
        while True:
            header = None
            if self.group.is_main:
                try:
                    batch = next(it)  # type: ignore[arg-type]
                    tensors = {"x": batch.x, **batch.extras}
                    header = {
                        "shapes": {k: (tuple(v.shape), str(v.dtype)) for k, v in tensors.items()},
                        "position": self.stream.state_dict(),
                    }
                except StopIteration:
                    header = None
            header = self.group.broadcast_object(header)
            if header is None:
                return
            if not self.group.is_main:
                tensors = {
                    k: torch.empty(shape, dtype=getattr(torch, dtype.split(".")[-1]))
                    for k, (shape, dtype) in header["shapes"].items()
                }
            for name in header["shapes"]:
                self.group._call("batch broadcast", dist.broadcast, tensors[name], src=0)
            self._position = header["position"]
            x = tensors.pop("x")
            yield Batch(x, tensors)

    def state_dict(self) -> dict[str, Any]:
        return self._position if self._position is not None else self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
        self._position = state

    def describe(self) -> dict[str, Any]:
        return dict(self._description)
