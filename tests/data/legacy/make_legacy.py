"""How the fixtures here were written: with saekit 0.1.0 before the seam refactor (commit
cc91e8f; its API: `encode(x, grad=..., mode=...)`). Kept for the record; run from the repo
root with that commit checked out."""

import torch
from safetensors.torch import load_file, save_file

import saekit
from saekit.formats import native
from saekit.sae import TrainContext

ARCHS = ["topk", "batchtopk", "matryoshka", "gsae", "relu", "jumprelu", "mpsae", "topafa"]
OPTIONS = {
    "topk": dict(k=4),
    "batchtopk": dict(k=4),
    "matryoshka": dict(k=4),
    "gsae": dict(k=4, beta=3.0),
    "relu": {},
    "jumprelu": dict(target_l0=5),
    "mpsae": dict(n_steps=6),
    "topafa": dict(k_max=20),
}


def write_files_and_codes() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8) * 2 + 0.5
    g = torch.randn(64, 8)
    out = {"x": x, "grad": g}
    for arch in ARCHS:
        sae = saekit.create(arch, d_in=8, n_latents=40, seed=3, **OPTIONS[arch])
        with torch.no_grad():
            for name, p in sae.named_parameters():
                if name in ("W_enc", "W_dec"):
                    p.add_(0.3 * torch.randn_like(p))
                elif name == "threshold":
                    p.uniform_(0.0, 0.6)
                else:
                    p.normal_(std=0.2)
            if arch in ("batchtopk", "matryoshka"):
                sae.threshold.fill_(0.4)
            sae.normalise_decoder()
        native.save(sae, f"tests/data/legacy/{arch}", {"note": "written by saekit 0.1.0"})
        sae = native.load(f"tests/data/legacy/{arch}")
        with torch.no_grad():
            if arch == "gsae":
                out[f"{arch}.codes"] = sae.encode(x, grad=g)
                out[f"{arch}.codes_topk"] = sae.encode(x, mode="topk")
            else:
                out[f"{arch}.codes"] = sae.encode(x)
            if arch in ("batchtopk", "matryoshka"):
                out[f"{arch}.codes_batch"] = sae.encode(x, mode="batch")
                out[f"{arch}.codes_topk"] = sae.encode(x, mode="topk", k=6)
            if arch == "topk":
                out[f"{arch}.codes_k7"] = sae.encode(x, k=7)
            if arch == "mpsae":
                out[f"{arch}.codes_t3"] = sae.encode(x, n_steps=3)
    save_file({k: v.contiguous() for k, v in out.items()}, "tests/data/legacy/codes.safetensors")


def write_training_step() -> None:
    """One training step per architecture: losses, training codes, gradients."""
    data = load_file("tests/data/legacy/codes.safetensors")
    x, g = data["x"], data["grad"]
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    ref = {}
    for arch in ARCHS:
        sae = native.load(f"tests/data/legacy/{arch}").train()
        ctx = TrainContext(dead_mask=dead, progress=0.5, extras={"grad": g})
        out = sae.training_forward(x, ctx)
        sum(out.losses.values()).backward()
        for k, v in out.losses.items():
            ref[f"{arch}.loss.{k}"] = v.detach().reshape(1)
        ref[f"{arch}.train_codes"] = out.codes.detach()
        for name, p in sae.named_parameters():
            if p.grad is not None:
                ref[f"{arch}.grad.{name}"] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in ref.items()}, "tests/data/legacy/training.safetensors")


if __name__ == "__main__":
    write_files_and_codes()
    write_training_step()
