"""dictionary_learning (saprmarks/dictionary_learning) state dicts: ``ae.pt`` beside the
trainer's ``config.json``.

A ``.pt`` file is a pickle: loading it with plain ``torch.load`` can run arbitrary code. It
is read here only with ``torch.load(weights_only=True)``, which accepts tensors and plain
containers and refuses anything else; a refused file is an error, never a fallback.

Dictionaries and their state-dict keys (W are nn.Linear weights, [out, in]):
  AutoEncoder (ReLU)     bias, encoder.weight [F, d], encoder.bias, decoder.weight [d, F]
                         f = ReLU(enc(x - bias)), x̂ = dec(f) + bias             -> relu
  AutoEncoderNew         encoder.weight/.bias, decoder.weight/.bias, no centring   -> relu
  AutoEncoderTopK        encoder.weight/.bias, decoder.weight, b_dec, k, threshold -> topk
  BatchTopKSAE           the same keys; inference keeps f > threshold              -> batchtopk
  MatryoshkaBatchTopKSAE W_enc [d, F], b_enc, W_dec [F, d], b_dec, k, threshold,
                         group_sizes                                               -> matryoshka
  JumpReluAutoEncoder    W_enc [d, F], b_enc, W_dec, b_dec, threshold [F]; the input is not
                         centred (apply_b_dec_to_input=False)                      -> jumprelu
  GatedAutoEncoder       encoder.weight, gate_bias, mag_bias, r_mag, decoder.weight,
                         decoder_bias                                              -> gated
TopK and BatchTopK share their keys; the trainer's config.json (``trainer.dict_class``)
tells them apart, or the caller passes ``dict_class``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from saekit.interop.base import (
    InteropError,
    build,
    data_record,
    is_transcoder,
    need,
    provenance,
    read_json,
    unsupported,
)
from saekit.sae.base import SAE

WEIGHTS = "ae.pt"
CONFIG = "config.json"
DICT_CLASSES = ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE",
                "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder", "JumpReLUSAE",
                "GatedAutoEncoder")  # fmt: skip


def weights_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return path
    if path.is_dir() and (path / WEIGHTS).is_file():
        return path / WEIGHTS
    return None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .pt file, without executing code from it."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InteropError(
            f"{path}: refused: it holds objects other than tensors, which only a full unpickle "
            f"(which can run code) would load ({first}); re-save it as a plain state dict"
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise InteropError(f"{path}: not a readable torch file ({e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InteropError(f"{path}: expected a state dict (name -> tensor)")
    return dict(obj)


def _dict_class(weights: Path, given: str | None) -> tuple[str | None, dict[str, Any]]:
    config_path = weights.parent / CONFIG
    config = read_json(config_path) if config_path.is_file() else {}
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else config
    return given or trainer.get("dict_class"), config


def read(path: str | Path, dict_class: str | None = None) -> SAE:
    """A dictionary_learning ``ae.pt`` (or its folder) -> a saekit SAE."""
    path = Path(path)
    wf = weights_file(path)
    if wf is None:
        raise InteropError(f"{path}: no {WEIGHTS} (dictionary_learning state dict) found")
    t = load_state_dict(wf)
    cls, config = _dict_class(wf, dict_class)
    src = str(wf)
    keys = set(t)
    if cls is not None and cls not in DICT_CLASSES:
        raise InteropError(
            f"{src}: dictionary class {cls!r} is not supported; known: {DICT_CLASSES}"
        )

    if "decoder_bias" in keys and "r_mag" in keys:
        cls = "GatedAutoEncoder"
        W_enc, b_gate, b_mag, r_mag, W_dec_t, b_dec = need(
            t, src, "encoder.weight", "gate_bias", "mag_bias", "r_mag", "decoder.weight",
            "decoder_bias",
        )  # fmt: skip
        sae = build("gated", {"W_enc": W_enc, "b_gate": b_gate, "r_mag": r_mag, "b_mag": b_mag,
                              "W_dec": W_dec_t.T.contiguous(), "b_dec": b_dec}, src,
                    d_in=W_enc.shape[1], n_latents=W_enc.shape[0])  # fmt: skip
    elif "bias" in keys and "encoder.weight" in keys:
        cls = "AutoEncoder"
        W_enc, b_enc, W_dec_t, b_dec = need(t, src, "encoder.weight", "encoder.bias",
                                            "decoder.weight", "bias")  # fmt: skip
        sae = build("relu", {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec_t.T.contiguous(),
                             "b_dec": b_dec}, src, d_in=W_enc.shape[1], n_latents=W_enc.shape[0])  # fmt: skip
    elif "decoder.bias" in keys:
        cls = "AutoEncoderNew"
        W_enc, b_e, W_dec_t, b_dec = need(t, src, "encoder.weight", "encoder.bias",
                                          "decoder.weight", "decoder.bias")  # fmt: skip
        # Not centred: W x + b = W (x - b_dec) + (b + W b_dec).
        sae = build("relu", {"W_enc": W_enc, "b_enc": b_e + W_enc @ b_dec,
                             "W_dec": W_dec_t.T.contiguous(), "b_dec": b_dec}, src,
                    d_in=W_enc.shape[1], n_latents=W_enc.shape[0])  # fmt: skip
    elif "encoder.weight" in keys and "k" in keys:
        if cls not in ("AutoEncoderTopK", "BatchTopKSAE"):
            raise InteropError(
                f"{src}: TopK and BatchTopK dictionaries have the same tensors and no "
                f"{CONFIG} says which this is; pass dict_class (--dict-class AutoEncoderTopK "
                "or BatchTopKSAE)"
            )
        W_enc, b_enc, W_dec_t, b_dec = need(t, src, "encoder.weight", "encoder.bias",
                                            "decoder.weight", "b_dec")  # fmt: skip
        n, d = W_enc.shape
        k = min(int(t["k"]), n)
        w = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec_t.T.contiguous(), "b_dec": b_dec}
        if cls == "BatchTopKSAE":
            theta = float(t.get("threshold", torch.tensor(-1.0)))
            w["threshold"] = torch.tensor(theta)
            sae = build("batchtopk", w, src, d_in=d, n_latents=n, k=k)
        else:
            sae = build("topk", w, src, d_in=d, n_latents=n, k=k)
    elif "W_enc" in keys and "group_sizes" in keys:
        cls = "MatryoshkaBatchTopKSAE"
        W_enc, b_enc, W_dec, b_dec = need(t, src, "W_enc", "b_enc", "W_dec", "b_dec")
        d, n = W_enc.shape
        sizes = [int(s) for s in t["group_sizes"].tolist()]
        w = {"W_enc": W_enc.T.contiguous(), "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec,
             "threshold": torch.tensor(float(t.get("threshold", torch.tensor(-1.0))))}  # fmt: skip
        sae = build("matryoshka", w, src, d_in=d, n_latents=n, k=min(int(t["k"]), n),
                    group_sizes=sizes)  # fmt: skip
    elif "W_enc" in keys and "threshold" in keys and t["threshold"].ndim == 1:
        cls = cls if cls in ("JumpReluAutoEncoder", "JumpReLUSAE") else "JumpReluAutoEncoder"
        W_enc, b_enc, W_dec, b_dec, theta = need(t, src, "W_enc", "b_enc", "W_dec", "b_dec",
                                                 "threshold")  # fmt: skip
        d, n = W_enc.shape
        # The input is not centred; ReLU after the jump makes a negative θ act as 0.
        w = {"W_enc": W_enc.T.contiguous(), "b_enc": b_enc + b_dec @ W_enc, "W_dec": W_dec,
             "b_dec": b_dec, "threshold": theta.clamp_min(0.0)}  # fmt: skip
        sae = build("jumprelu", w, src, d_in=d, n_latents=n)
    else:
        raise InteropError(
            f"{src}: unrecognised dictionary_learning state dict (keys {sorted(keys)}); "
            f"supported classes: {', '.join(DICT_CLASSES)}"
        )
    trainer = config.get("trainer", {}) if isinstance(config.get("trainer"), dict) else {}
    sae.metadata = {
        "imported_from": provenance("dictionary_learning", wf, cls, config),
        "data": data_record(
            trainer.get("submodule_name"),
            "output",
            model=trainer.get("lm_name"),
            layer=trainer.get("layer"),
        ),  # fmt: skip
    }
    return sae


def state_dict(sae: SAE) -> tuple[str, dict[str, torch.Tensor]]:
    """(dict_class, state dict) of the dictionary_learning class equivalent to `sae`."""
    if is_transcoder(sae):
        raise InteropError("dictionary_learning has no transcoder dictionaries")
    sd = {k: v.detach().to(torch.float32).cpu() for k, v in sae.state_dict().items()}
    a = sae.architecture
    if a == "relu":
        return "AutoEncoder", {"bias": sd["b_dec"], "encoder.weight": sd["W_enc"],
                               "encoder.bias": sd["b_enc"], "decoder.weight": sd["W_dec"].T}  # fmt: skip
    if a in ("topk", "batchtopk"):
        out = {"encoder.weight": sd["W_enc"], "encoder.bias": sd["b_enc"],
               "decoder.weight": sd["W_dec"].T, "b_dec": sd["b_dec"],
               "k": torch.tensor(int(sae.cfg.k), dtype=torch.int),
               "threshold": sd.get("threshold", torch.tensor(-1.0))}  # fmt: skip
        return ("AutoEncoderTopK" if a == "topk" else "BatchTopKSAE"), out
    if a == "matryoshka":
        return "MatryoshkaBatchTopKSAE", {
            "W_enc": sd["W_enc"].T, "b_enc": sd["b_enc"], "W_dec": sd["W_dec"],
            "b_dec": sd["b_dec"], "k": torch.tensor(int(sae.cfg.k), dtype=torch.int),
            "threshold": sd["threshold"], "group_sizes": torch.tensor(sae.cfg.group_sizes),
        }  # fmt: skip
    if a == "jumprelu":
        # dictionary_learning's JumpReLU does not centre x: fold b_dec into b_enc.
        return "JumpReluAutoEncoder", {
            "W_enc": sd["W_enc"].T, "b_enc": sd["b_enc"] - sd["W_enc"] @ sd["b_dec"],
            "W_dec": sd["W_dec"], "b_dec": sd["b_dec"], "threshold": sd["threshold"],
        }  # fmt: skip
    if a == "gated":
        return "GatedAutoEncoder", {
            "encoder.weight": sd["W_enc"], "gate_bias": sd["b_gate"], "mag_bias": sd["b_mag"],
            "r_mag": sd["r_mag"], "decoder.weight": sd["W_dec"].T, "decoder_bias": sd["b_dec"],
        }  # fmt: skip
    raise unsupported(sae, "dictionary_learning",
                      ["relu", "topk", "batchtopk", "matryoshka", "jumprelu", "gated"])  # fmt: skip


def write(sae: SAE, path: str | Path) -> Path:
    """``path/ae.pt`` (tensors only, loadable with weights_only=True) + ``config.json``."""
    path = Path(path)
    cls, sd = state_dict(sae)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in sd.items()}, path / WEIGHTS)
    config = {"trainer": {"dict_class": cls, "activation_dim": sae.d_in,
                          "dict_size": sae.n_latents}}  # fmt: skip
    if hasattr(sae.cfg, "k"):
        config["trainer"]["k"] = int(sae.cfg.k)
    (path / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path
