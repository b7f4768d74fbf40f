"""Reading an activation cache back as an ActivationStream, shuffled at the token level in
bounded memory (see `CacheStream` for the guarantees)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from saekit.data.cache.format import (
    META_DTYPES,
    CacheError,
    check_shard_header,
    hookpoint_entry,
    load_manifest,
    read_shard,
    split_entry,
)
from saekit.data.hooks import HookPair
from saekit.data.stream import Batch, seeded_generator


class CacheStream:
    """An activation cache as an ActivationStream, shuffled at the token level.

    Shuffle: each epoch permutes the shard order (seeded by seed and epoch), groups the
    shards into pools of ``pool_shards`` consecutive shards, and permutes the tokens within
    each pool. The epoch is the concatenation of the permuted pools, cut into batches; a
    batch may straddle two pools. Memory: about two pools of shards.

    Guarantees: with drop_last=False every token of the split appears exactly once per
    epoch (the epoch's last batch may be smaller); with drop_last=True the < batch_size
    leftover of each epoch is skipped. ``state_dict()`` is (epoch, token offset), so
    ``load_state_dict`` resumes on exactly the next token, even with another batch size.
    Mixing: a batch draws from ~pool_shards x shard_tokens tokens; set pool_shards to the
    number of shards for a full shuffle.

    Integrity: sizes and headers of all shards are checked on open; checksums on each
    shard's first read (verify="first_read"), all at open (verify="open") or never ("none").
    extras: per-token float arrays to attach as Batch extras (default: every array other
    than x and the metadata, i.e. "grad" or a pair's "target" when stored); include_metadata
    adds token_ids, doc_ids, context_ids and positions as extras too. ``d_out`` is the
    target's width for a pair, else None.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        hookpoint: str | None = None,
        batch_size: int = 4096,
        seed: int = 0,
        split: str = "train",
        pool_shards: int = 4,
        loop: bool = True,
        drop_last: bool = False,
        verify: str = "first_read",
        extras: Sequence[str] | None = None,
        include_metadata: bool = False,
    ):
        if verify not in ("first_read", "open", "none"):
            raise ValueError(f"verify must be 'first_read', 'open' or 'none', got {verify!r}")
        if batch_size <= 0 or pool_shards <= 0:
            raise ValueError("batch_size and pool_shards must be positive")
        self.root = Path(cache_dir)
        self.manifest = load_manifest(self.root)
        self.hookpoint, entry = hookpoint_entry(self.manifest, hookpoint, self.root)
        self.split = split
        self.shards = split_entry(entry, split, self.root)["shards"]
        if not self.shards:
            raise CacheError(f"{self.root}: the {split!r} split of {self.hookpoint} is empty")
        self.arrays = entry["arrays"]
        for shard in self.shards:
            check_shard_header(self.root / shard["file"], shard, self.arrays)
        self.d_in = int(entry["d_in"])
        self.d_out: int | None = int(entry["d_out"]) if "d_out" in entry else None
        self.batch_size = batch_size
        self.seed = seed
        self.pool_shards = pool_shards
        self.loop, self.drop_last = loop, drop_last
        self.verify = verify
        default_extras = [k for k in self.arrays if k != "x" and k not in META_DTYPES]
        self.extras = list(default_extras if extras is None else extras)
        self.extras += list(META_DTYPES) if include_metadata else []
        unknown = [k for k in self.extras if k not in self.arrays]
        if unknown:
            raise CacheError(
                f"{self.root}: no per-token arrays {unknown} (has {list(self.arrays)})"
            )
        self.n_tokens = sum(s["n_tokens"] for s in self.shards)
        self.epoch, self.offset = 0, 0
        self._verified: set[int] = set()
        self._pools: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        if verify == "open":
            for i in range(len(self.shards)):
                self._read(i)

    def shard(self, rank: int, world_size: int) -> None:
        """Keep only shards rank, rank + W, ... of the split (data-parallel ranks read
        disjoint tokens; each shuffles its own shards). Needs at least W shards."""
        if len(self.shards) < world_size:
            raise CacheError(
                f"{self.root}: {len(self.shards)} shard(s) in the {self.split!r} split for "
                f"{world_size} ranks; write the cache with a smaller --shard-tokens"
            )
        self.shards = self.shards[rank::world_size]
        self.n_tokens = sum(s["n_tokens"] for s in self.shards)
        self.epoch, self.offset, self._pools = 0, 0, {}
        self.rank_shard = [rank, world_size]

    # ---- epoch layout -------------------------------------------------------------------
    def _layout(self, epoch: int) -> tuple[list[int], list[int]]:
        """(shard order, start token of each pool + the end) for ``epoch``."""
        order = torch.randperm(
            len(self.shards), generator=seeded_generator(self.seed, epoch)
        ).tolist()
        starts = [0]
        for p in range(0, len(order), self.pool_shards):
            starts.append(
                starts[-1]
                + sum(self.shards[i]["n_tokens"] for i in order[p : p + self.pool_shards])
            )
        return order, starts

    def _read(self, i: int) -> dict[str, torch.Tensor]:
        check = self.verify != "none" and i not in self._verified
        tensors = read_shard(self.root / self.shards[i]["file"], self.shards[i], verify=check)
        self._verified.add(i)
        return tensors

    def _pool(self, epoch: int, p: int, order: list[int]) -> dict[str, torch.Tensor]:
        if (epoch, p) not in self._pools:
            shard_ids = order[p * self.pool_shards : (p + 1) * self.pool_shards]
            keep = ["x", *self.extras]
            loaded = [self._read(i) for i in shard_ids]
            joined = {k: torch.cat([t[k] for t in loaded]) for k in keep}
            n = joined["x"].shape[0]
            perm = torch.randperm(n, generator=seeded_generator(self.seed, epoch, "pool", p))
            # Keep at most the previous pool (a batch can straddle two) and this one.
            self._pools = {key: v for key, v in self._pools.items() if key == (epoch, p - 1)}
            self._pools[(epoch, p)] = {k: v[perm] for k, v in joined.items()}
        return self._pools[(epoch, p)]

    def _epoch_end(self) -> int:
        if self.drop_last:
            return self.n_tokens - self.n_tokens % self.batch_size
        return self.n_tokens

    # ---- ActivationStream ---------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        if self._epoch_end() == 0:
            raise CacheError(
                f"batch_size {self.batch_size} exceeds the {self.n_tokens} "
                "tokens of the split with drop_last=True"
            )
        layout_epoch, (order, starts) = self.epoch, self._layout(self.epoch)
        while True:
            if self.offset >= self._epoch_end():
                if not self.loop:
                    return
                self.epoch, self.offset = self.epoch + 1, 0
            if layout_epoch != self.epoch:
                layout_epoch, (order, starts) = self.epoch, self._layout(self.epoch)
            stop = min(self.offset + self.batch_size, self.n_tokens)
            tensors = self._slice(self.offset, stop, order, starts)
            self.offset = stop
            x = tensors.pop("x").float()
            extras = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
            yield Batch(x, extras)

    def _slice(self, start: int, stop: int, order: list[int], starts: list[int]) -> dict:
        parts = []
        while start < stop:
            p = bisect.bisect_right(starts, start) - 1
            pool = self._pool(self.epoch, p, order)
            lo, hi = start - starts[p], min(stop, starts[p + 1]) - starts[p]
            parts.append({k: v[lo:hi] for k, v in pool.items()})
            start = starts[p] + hi
        return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "pool_shards": self.pool_shards,
            "cache_id": self.manifest["cache_id"],
            "hookpoint": self.hookpoint,
            "split": self.split,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly; the state's seed and pool size win over the constructor's."""
        for key in ("cache_id", "hookpoint", "split"):
            if key in state and state[key] != self.state_dict()[key]:
                raise CacheError(
                    f"stream state is for {key}={state[key]!r}, this stream has "
                    f"{self.state_dict()[key]!r}"
                )
        self.seed = int(state.get("seed", self.seed))
        self.pool_shards = int(state.get("pool_shards", self.pool_shards))
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._pools = {}

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        pair = {}
        if self.d_out is not None:
            pair["pair"] = HookPair.parse(self.hookpoint).describe(self.d_in, self.d_out)
        return {
            "source": "cache",
            "path": str(self.root),
            "cache_id": m["cache_id"],
            "hookpoint": self.hookpoint,
            "which": m["hookpoints"][self.hookpoint]["which"],
            "split": self.split,
            "model": m["model"],
            "corpus": m["corpus"].get(self.split),
            "tokens": self.n_tokens,
            "dtype": m["dtype"],
            "masking": m["masking"],
            "seed": self.seed,
            "pool_shards": self.pool_shards,
            **pair,
        }
