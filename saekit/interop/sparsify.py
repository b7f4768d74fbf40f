"""sparsify (EleutherAI, PyPI `eai-sparsify`) files: one folder per hookpoint, each with
cfg.json + sae.safetensors, usually under a run folder (``run/layers.6/``).

Layout (sparsify 1.3): ``encoder.weight`` [num_latents, d_in] and ``encoder.bias`` (an
nn.Linear, so the same orientation as saekit's W_enc), ``W_dec`` [num_latents, d_in],
``b_dec`` [d_in], and ``W_skip`` [d_out, d_in] when skip_connection is set. cfg.json holds
the SparseCoderConfig (activation, expansion_factor, normalize_decoder, num_latents, k,
multi_topk, skip_connection, transcode) plus d_in. The code is TopK(ReLU(W_enc x' + b_enc))
with x' = x - b_dec for an autoencoder and x' = x for a transcoder, which is saekit's topk
(ReLU and TopK commute) or its transcoder. multi_topk only changes the training loss.
A transcoder's decoder has the input width (sparsify assumes d_out = d_in).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.interop import hookpoints as hp
from saekit.interop.base import (
    InteropError,
    build,
    check_shape,
    data_record,
    hookpoint_of,
    is_transcoder,
    need,
    provenance,
    read_json,
    transcoder_options,
    unsupported,
)
from saekit.sae.base import SAE

CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"
# saekit architectures whose inference code is sparsify's TopK(ReLU(.)) (with transcode=true
# for transcoders; "transcoder"/"skip_transcoder" are saekit's TopK transcoders).
TOPK_CODERS = ("topk", "transcoder", "skip_transcoder")
EXPORTABLE = ["topk", "transcoder / skip_transcoder (d_out = d_in)"]


def is_sparsify_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def hookpoint_dirs(path: Path) -> list[Path]:
    """The per-hookpoint folders under a sparsify run folder (or the folder itself)."""
    if is_sparsify_dir(path):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and is_sparsify_dir(p))


def read(path: str | Path) -> SAE:
    """One sparsify hookpoint folder -> a saekit SAE with the same reconstructions."""
    path = Path(path)
    src = str(path)
    if not is_sparsify_dir(path):
        raise InteropError(f"{src}: not a sparsify folder (needs {CONFIG} and {WEIGHTS})")
    original = read_json(path / CONFIG)
    cfg = dict(original)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise InteropError(f"{src}: sparsify activation {activation!r} has no saekit equivalent")
    if cfg.get("signed"):
        raise InteropError(f"{src}: signed sparsify coders have no saekit equivalent")
    try:
        t = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise InteropError(f"{path / WEIGHTS}: corrupt or unreadable ({e})") from None
    W_enc, b_enc, W_dec, b_dec = need(t, src, "encoder.weight", "encoder.bias", "W_dec", "b_dec")
    d_in = int(cfg.get("d_in", W_enc.shape[1]))
    n = int(cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32)))
    check_shape(W_enc, (n, d_in), "encoder.weight", src)
    k = min(int(cfg.get("k", 32)), n)
    transcode = bool(cfg.get("transcode"))
    skip = bool(cfg.get("skip_connection"))
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if transcode:
        name = "skip_transcoder" if skip else "transcoder"  # saekit's TopK transcoders
        if skip:
            (W_skip,) = need(t, src, "W_skip")
            weights["W_skip"] = W_skip.T.contiguous()  # sparsify: [d_out, d_in]
        options = transcoder_options(name, int(W_dec.shape[1]), skip, src)
        sae = build(name, weights, src, d_in=d_in, n_latents=n, k=k, **options)
    elif skip:
        raise InteropError(
            f"{src}: a sparsify autoencoder with a skip connection has no saekit equivalent "
            "(saekit's skip connections belong to skip_transcoder)"
        )
    else:
        sae = build("topk", weights, src, d_in=d_in, n_latents=n, k=k)
    module = hp.from_sparsify(path.name)
    sae.metadata = {
        "imported_from": provenance(
            "sparsify", path, "transcoder" if transcode else "topk", original, hookpoint=path.name
        ),  # fmt: skip
        "data": data_record(
            module, "input" if transcode else "output", sparsify_hookpoint=path.name
        ),
    }
    return sae


def write(sae: SAE, path: str | Path, hookpoint: str | None = None) -> Path:
    """Write `sae` into ``path/<hookpoint>/`` (sparsify's run layout; the hookpoint named in
    sparsify's base-model-relative form), or into ``path`` itself when no hookpoint is known.
    Returns the folder written."""
    arch = sae.architecture
    sd = {k: v.detach().to(torch.float32).cpu() for k, v in sae.state_dict().items()}
    is_tc = is_transcoder(sae)
    if arch not in TOPK_CODERS:
        raise unsupported(sae, "sparsify (TopK coders only)", EXPORTABLE)
    d_in, n = sae.d_in, sae.n_latents
    tensors = {"encoder.weight": sd["W_enc"], "encoder.bias": sd["b_enc"],
               "W_dec": sd["W_dec"], "b_dec": sd["b_dec"]}  # fmt: skip
    if is_tc and sd["W_dec"].shape[1] != d_in:
        raise InteropError(
            f"sparsify transcoders must have d_out = d_in; this one maps {d_in} -> "
            f"{sd['W_dec'].shape[1]}"
        )
    if "W_skip" in sd:
        tensors["W_skip"] = sd["W_skip"].T
    cfg: dict[str, Any] = {
        "activation": "topk",
        "expansion_factor": n // d_in if n % d_in == 0 else 0,
        "normalize_decoder": True,
        "num_latents": n,
        "k": int(sae.cfg.k),
        "multi_topk": False,
        "skip_connection": "W_skip" in sd,
        "transcode": is_tc,
        "d_in": d_in,
    }
    module = hookpoint or hookpoint_of(sae)[0]
    folder = Path(path) / hp.to_sparsify(module) if module else Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return folder
