"""Fixtures written with the pre-seam code (commit cc91e8f): SAE files, codes and one training
step per architecture. Run from the repo root with that commit checked out; kept for the record."""
import torch, json
from safetensors.torch import save_file
import saekit
from saekit.formats import native

torch.manual_seed(0)
d, n = 8, 40
x = torch.randn(64, d) * 2 + 0.5
g = torch.randn(64, d)
out = {"x": x, "grad": g}
opts = {"topk": dict(k=4), "batchtopk": dict(k=4), "matryoshka": dict(k=4), "gsae": dict(k=4, beta=3.0),
        "relu": {}, "jumprelu": dict(target_l0=5), "mpsae": dict(n_steps=6), "topafa": dict(k_max=20)}
for arch, kw in opts.items():
    sae = saekit.create(arch, d_in=d, n_latents=n, seed=3, **kw)
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
    native.save(sae, f"tests/data/legacy/{arch}", {"note": "written by saekit 0.1.0 before the seam refactor"})
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
    print(arch, (out[f"{arch}.codes"] != 0).sum(-1).float().mean().item())
save_file({k: v.contiguous() for k, v in out.items()}, "tests/data/legacy/codes.safetensors")

# ---- one training step per architecture (losses, gradients), same files ----
from saekit.formats import native
from saekit.sae import TrainContext  # noqa: E402
torch.manual_seed(1)
ref = {}
from safetensors.torch import load_file
data = load_file("tests/data/legacy/codes.safetensors")
x, g = data["x"], data["grad"]
dead = torch.zeros(40, dtype=torch.bool); dead[::3] = True
for arch in ["topk","batchtopk","matryoshka","gsae","relu","jumprelu","mpsae","topafa"]:
    sae = native.load(f"tests/data/legacy/{arch}").train()
    ctx = TrainContext(dead_mask=dead, progress=0.5, extras={"grad": g})
    out = sae.training_forward(x, ctx)
    loss = sum(out.losses.values())
    loss.backward()
    for k, v in out.losses.items():
        ref[f"{arch}.loss.{k}"] = v.detach().reshape(1)
    ref[f"{arch}.train_codes"] = out.codes.detach()
    for name, p in sae.named_parameters():
        if p.grad is not None:
            ref[f"{arch}.grad.{name}"] = p.grad.detach().clone()
    print(arch, {k: round(float(v), 4) for k, v in out.losses.items()})
save_file({k: v.contiguous() for k, v in ref.items()}, "tests/data/legacy/training.safetensors")
