"""A data-parallel training process, launched by tests/test_distributed.py under torchrun:
TopK on a seeded tensor stream, rank r reading batches r, r + W, ... of size --batch."""

import argparse

import torch

import saekit
from saekit.data.stream import TensorStream
from saekit.training.distributed import RankSlice, from_environment
from saekit.training.trainer import TrainConfig, Trainer


def data() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(96, 16, generator=gen)
    active = torch.rand(4096, 96, generator=gen) < 0.05
    return (active * torch.rand(4096, 96, generator=gen)) @ directions + 0.5


def trainer(batch: int, out, group=None) -> Trainer:
    stream = TensorStream(data(), batch_size=batch, seed=0)
    if group is not None:
        stream = RankSlice(stream, group.rank, group.world_size)
    sae = saekit.create("topk", d_in=16, n_latents=64, k=4)
    cfg = TrainConfig(steps=12, lr=3e-3, warmup_steps=2, progress_bar=False, dead_window_tokens=512)
    return Trainer({"topk": sae}, stream, cfg, out, group=group)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(1)
    group = from_environment("data", timeout_s=60)
    trainer(args.batch, args.out, group).fit()
    group.close()
