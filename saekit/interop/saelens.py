"""SAELens files: a directory with cfg.json + sae_weights.safetensors (+ sparsity.safetensors).

SAELens (v6) stores W_enc as [d_in, d_sae] (the transpose of saekit's [n_latents, d_in]);
W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] match. Its inference architectures map onto
saekit's as:

  standard (ReLU)        <-> relu
  topk                   <-> topk   (rescale_acts_by_decoder_norm is folded into the weights)
  jumprelu               <-> jumprelu; also batchtopk / matryoshka, which SAELens saves in
                             their inference form: a JumpReLU whose thresholds all equal the
                             learned global threshold (metadata.training_architecture says so)
  gated                  <-> gated  (b_gate, r_mag, b_mag)
  transcoder, skip_transcoder (ReLU)          <-> relu with transcode=true (skip=true)
  jumprelu_transcoder, jumprelu_skip_transcoder <-> jumprelu with transcode=true (skip=true)
                             (SAELens's W_skip is [d_out, d_in], saekit's [d_in, d_out]; a
                             transcoder's input is not centred)

Read-side conversions that are exact rather than approximate: apply_b_dec_to_input=False
(the input is not centred) becomes b_enc + b_dec·W_enc; a negative JumpReLU threshold acts
as 0 (SAELens applies ReLU first). Runtime input normalisation (layer_norm,
constant_norm_rescale, covariance_whitening, an unfolded expected_average_only_in) depends on
each input or on statistics outside the file, so such SAEs are refused.
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
    model_of,
    need,
    provenance,
    read_json,
    transcoder_options,
    uniform_value,
    unsupported,
)
from saekit.sae.base import SAE
from saekit.sae.provenance import Provenance

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"
# The SAELens release whose layout this module writes (and was tested against).
WRITES_VERSION = "6.54.12"
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
EXPORTABLE = ["relu", "topk", "jumprelu", "batchtopk", "matryoshka", "gated",
              "relu/jumprelu with transcode=true"]  # fmt: skip


def is_saelens_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


# ---- read ------------------------------------------------------------------------------------
def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise InteropError(f"{path}: corrupt or unreadable safetensors file ({e})") from None


def _flatten_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, metadata). v6 files nest model/hook fields under "metadata"; older ones
    (hook_point, activation_fn_str, ...) keep them at the top level."""
    meta = dict(cfg.get("metadata") or {})
    flat = {k: v for k, v in cfg.items() if k != "metadata"}
    if "hook_point" in flat and "hook_name" not in flat:
        flat["hook_name"] = flat["hook_point"]
    for key in ("hook_name", "model_name", "hook_head_index", "hf_hook_name", "hf_hook_name_out",
                "hook_name_out", "context_size", "dataset_path", "prepend_bos"):  # fmt: skip
        if key in flat and key not in meta:
            meta[key] = flat[key]
    arch = flat.get("architecture")
    if arch is None:  # pre-6.0: ReLU unless the activation says TopK
        fn = flat.get("activation_fn") or flat.get("activation_fn_str") or "relu"
        kwargs = flat.get("activation_fn_kwargs") or {}
        if fn == "topk":
            flat["k"] = kwargs.get("k", flat.get("k"))
            arch = "topk"
        elif fn == "relu":
            arch = "standard"
        else:
            raise InteropError(f"unsupported SAELens activation_fn {fn!r}")
        flat["architecture"] = arch
    return flat, meta


def read(path: str | Path, layout: str = "llama") -> SAE:
    """Load a SAELens SAE directory as a saekit SAE with the same reconstructions."""
    path = Path(path)
    if not is_saelens_dir(path):
        raise InteropError(f"{path}: not a SAELens SAE directory (needs {CONFIG} and {WEIGHTS})")
    original = read_json(path / CONFIG)
    cfg, meta = _flatten_config(original)
    src = str(path)
    arch = cfg["architecture"]
    norm = cfg.get("normalize_activations", "none")
    if norm in (None, False):
        norm = "none"
    if norm != "none":
        raise InteropError(
            f"{src}: normalize_activations={norm!r} rescales each input at run time (or needs a "
            "factor that is not in the file); fold it first (SAELens: "
            "fold_activation_norm_scaling_factor) and save again"
        )
    if cfg.get("finetuning_scaling_factor"):
        raise InteropError(f"{src}: finetuning_scaling_factor is not supported")
    t = _load_tensors(path / WEIGHTS)
    d_in, n = int(cfg["d_in"]), int(cfg["d_sae"])
    centred = bool(cfg.get("apply_b_dec_to_input", True))

    if arch in TRANSCODERS:
        sae = _read_transcoder(arch, cfg, t, src, d_in, n)
    else:
        sae = _read_sae(arch, cfg, meta, t, src, d_in, n, centred)

    hook = meta.get("hook_name")
    hf_name = meta.get("hf_hook_name")
    which = "output"
    if hf_name:
        module = hf_name
    elif hook:
        try:
            module, which = hp.tl_to_module(hook, layout)
        except hp.HookpointError:
            module = None  # recorded under tl_hook_name; AFA/browse take --data anyway
    else:
        module = None
    hook_out = meta.get("hook_name_out")
    if arch in TRANSCODERS and hook_out:
        # saekit names a transcoder by one site, "M:in": it reads M's input and predicts M's
        # output (e.g. ln2.hook_normalized -> hook_mlp_out is model.layers.L.mlp:in).
        try:
            out_module, out_which = hp.tl_to_module(hook_out, layout)
            if out_which == "output":
                module, which = out_module, "input"
        except hp.HookpointError:
            pass
    sae.metadata = {
        "imported_from": provenance("sae_lens", path, arch, original),
        "data": data_record(
            module,
            which,
            tl_hook_name=hook,
            model=meta.get("model_name"),
            tl_hook_name_out=meta.get("hook_name_out"),
        ),  # fmt: skip
    }
    if (path / SPARSITY).is_file():
        sparsity = _load_tensors(path / SPARSITY).get("sparsity")
        if sparsity is not None and sparsity.numel() == n:
            sae.log10_feature_density = sparsity.float().reshape(n)
    return sae


def _read_sae(arch, cfg, meta, t, src, d_in, n, centred) -> SAE:
    W_enc, W_dec, b_dec = need(t, src, "W_enc", "W_dec", "b_dec")
    check_shape(W_enc, (d_in, n), "W_enc", src)
    check_shape(W_dec, (n, d_in), "W_dec", src)
    check_shape(b_dec, (d_in,), "b_dec", src)
    W = W_enc.T.contiguous()  # saekit orientation [n, d_in]
    common = {"d_in": d_in, "n_latents": n}

    def encoder_bias(name: str) -> torch.Tensor:
        (b,) = need(t, src, name)
        # Not centred: W(x) + b = W(x - b_dec) + (b + W b_dec).
        return b if centred else b + b_dec @ W_enc

    if arch == "standard":
        return build("relu", {"W_enc": W, "b_enc": encoder_bias("b_enc"), "W_dec": W_dec,
                              "b_dec": b_dec}, src, **common)  # fmt: skip
    if arch == "topk":
        b_enc = encoder_bias("b_enc")
        if cfg.get("rescale_acts_by_decoder_norm"):
            # SAELens ranks pre·‖d_i‖ and decodes (a/‖d_i‖)·d_i: the same as unit atoms with
            # encoder rows and biases scaled by ‖d_i‖.
            norms = W_dec.norm(dim=-1)
            W, b_enc, W_dec = W * norms[:, None], b_enc * norms, W_dec / norms[:, None]
        k = int(cfg["k"])
        return build("topk", {"W_enc": W, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
                     src, k=min(k, n), **common)  # fmt: skip
    if arch == "jumprelu":
        (theta,) = need(t, src, "threshold")
        check_shape(theta, (n,), "threshold", src)
        theta = theta.clamp_min(0.0)  # SAELens: ReLU(pre)·1[pre > θ]
        weights = {"W_enc": W, "b_enc": encoder_bias("b_enc"), "W_dec": W_dec, "b_dec": b_dec}
        trained_as = meta.get("training_architecture")
        details = meta.get("training_architecture_details") or {}
        global_theta = uniform_value(theta)
        if trained_as in ("batchtopk", "matryoshka_batchtopk") and global_theta is not None:
            k = details.get("k")
            k = max(1, min(int(round(float(k))), n)) if k is not None else min(32, n)
            weights["threshold"] = torch.tensor(global_theta)
            if trained_as == "matryoshka_batchtopk" and details.get("matryoshka_widths"):
                widths = [int(w) for w in details["matryoshka_widths"]]
                sizes = [b - a for a, b in zip([0, *widths[:-1]], widths)]
                return build("matryoshka", weights, src, k=k, group_sizes=sizes, **common)
            return build("batchtopk", weights, src, k=k, **common)
        weights["threshold"] = theta
        return build("jumprelu", weights, src, **common)
    if arch == "gated":
        b_gate, r_mag, b_mag = need(t, src, "b_gate", "r_mag", "b_mag")
        if not centred:
            shift = b_dec @ W_enc
            b_gate = b_gate + shift
            b_mag = b_mag + r_mag.exp() * shift
        return build("gated", {"W_enc": W, "b_gate": b_gate, "r_mag": r_mag, "b_mag": b_mag,
                               "W_dec": W_dec, "b_dec": b_dec}, src, **common)  # fmt: skip
    raise InteropError(
        f"{src}: SAELens architecture {arch!r} has no saekit equivalent; convertible: "
        "standard, topk, jumprelu (incl. batchtopk/matryoshka inference form), gated, "
        + ", ".join(TRANSCODERS)
    )


def _read_transcoder(arch, cfg, t, src, d_in, n) -> SAE:
    """SAELens transcoders are ReLU (transcoder, skip_transcoder) or JumpReLU
    (jumprelu_transcoder, jumprelu_skip_transcoder): saekit's relu / jumprelu with
    transcode=true (and skip=true)."""
    d_out = int(cfg.get("d_out", d_in))
    W_enc, b_enc, W_dec, b_dec = need(t, src, "W_enc", "b_enc", "W_dec", "b_dec")
    check_shape(W_enc, (d_in, n), "W_enc", src)
    check_shape(W_dec, (n, d_out), "W_dec", src)
    weights = {"W_enc": W_enc.T.contiguous(), "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    ours = "jumprelu" if arch.startswith("jumprelu") else "relu"
    if ours == "jumprelu":
        (theta,) = need(t, src, "threshold")
        weights["threshold"] = theta.clamp_min(0.0)
    skip = arch.endswith("skip_transcoder")
    if skip:
        (W_skip,) = need(t, src, "W_skip")
        check_shape(W_skip, (d_out, d_in), "W_skip", src)
        weights["W_skip"] = W_skip.T.contiguous()  # saekit: [d_in, d_out]
    options = transcoder_options(ours, d_out, skip, src)
    return build(ours, weights, src, d_in=d_in, n_latents=n, **options)


# ---- write -----------------------------------------------------------------------------------
def write(
    sae: SAE,
    path: str | Path,
    hookpoint: str | None = None,
    model_name: str | None = None,
    layout: str = "llama",
) -> Path:
    """Write `sae` as a SAELens directory that SAELens's `SAE.load_from_disk` loads with the
    same reconstructions. `hookpoint` (a TransformerLens name or a module path) overrides the
    one recorded in the SAE's metadata."""
    path = Path(path)
    arch = sae.architecture
    sd = {k: v.detach().to(torch.float32).cpu() for k, v in sae.state_dict().items()}
    details: dict[str, Any] = {}
    cfg: dict[str, Any] = {"d_in": sae.d_in, "d_sae": sae.n_latents, "dtype": "float32",
                           "device": "cpu", "apply_b_dec_to_input": True,
                           "normalize_activations": "none", "reshape_activations": "none"}  # fmt: skip
    if "W_enc" not in sd:  # pursuit encoders (MP-SAE) have no SAELens form
        raise unsupported(sae, "SAELens", EXPORTABLE)
    # SAELens's W_enc is [d_in, d_sae]: the transpose of saekit's.
    W_enc, W_dec, b_dec = sd["W_enc"].T, sd["W_dec"], sd["b_dec"]
    if is_transcoder(sae):
        out_arch, w = _write_transcoder(sae, sd, cfg)
    elif arch in ("relu", "topk"):
        out_arch = "standard" if arch == "relu" else "topk"
        if arch == "topk":
            cfg.update(k=int(sae.cfg.k), rescale_acts_by_decoder_norm=False)
        w = {"W_enc": W_enc, "b_enc": sd["b_enc"], "W_dec": W_dec, "b_dec": b_dec}
    elif arch in ("jumprelu", "batchtopk", "matryoshka"):
        out_arch = "jumprelu"
        theta = sd["threshold"]
        if arch != "jumprelu":  # one global threshold: SAELens's BatchTopK inference form
            if float(theta) < 0:
                raise InteropError(
                    f"this {arch} SAE has no calibrated inference threshold (threshold = -1); "
                    "SAELens can only hold its threshold (JumpReLU) form. Train it to the end"
                )
            theta = torch.full((sae.n_latents,), float(theta))
            details["training_architecture"] = (
                "batchtopk" if arch == "batchtopk" else "matryoshka_batchtopk"
            )
            td: dict[str, Any] = {"k": int(sae.cfg.k)}
            if arch == "matryoshka":
                td["matryoshka_widths"] = torch.tensor(sae.cfg.group_sizes).cumsum(0).tolist()
            details["training_architecture_details"] = td
        w = {"W_enc": W_enc, "b_enc": sd["b_enc"], "W_dec": W_dec, "b_dec": b_dec,
             "threshold": theta.clamp_min(0.0)}  # fmt: skip
    elif arch == "gated":
        out_arch = "gated"
        w = {"W_enc": W_enc, "b_gate": sd["b_gate"], "r_mag": sd["r_mag"], "b_mag": sd["b_mag"],
             "W_dec": W_dec, "b_dec": b_dec}  # fmt: skip
    else:
        raise unsupported(sae, "SAELens", EXPORTABLE)

    meta: dict[str, Any] = {"sae_lens_version": WRITES_VERSION,
                            "sae_lens_training_version": WRITES_VERSION, **details}  # fmt: skip
    tl_name, module, which = _names(sae, hookpoint, layout)
    if tl_name:
        meta["hook_name"] = tl_name
    if is_transcoder(sae) and module and which == "input":
        try:  # a transcoder at site M:in predicts M's output
            meta["hook_name_out"] = hp.module_to_tl(module, "output")
            meta["hf_hook_name_out"] = module
        except hp.HookpointError:
            pass
    if module:
        meta["hf_hook_name"] = module
    model_name = model_name or model_of(sae)
    if model_name:
        meta["model_name"] = model_name
    meta["saekit"] = {"architecture": arch, "config": sae.config_dict()}
    cfg["metadata"] = meta
    cfg["architecture"] = out_arch

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in w.items()}, str(path / WEIGHTS))
    (path / CONFIG).write_text(_dumps(cfg))
    density = getattr(sae, "log10_feature_density", None)
    if density is not None:
        save_file({"sparsity": density.detach().float().contiguous()}, str(path / SPARSITY))
    return path


def _write_transcoder(sae: SAE, sd: dict, cfg: dict) -> tuple[str, dict]:
    if sae.architecture not in ("relu", "jumprelu"):
        raise InteropError(
            f"SAELens transcoders are ReLU or JumpReLU; this one is a saekit "
            f"{sae.architecture!r} transcoder"
        )
    cfg.update(d_out=int(sd["W_dec"].shape[1]), apply_b_dec_to_input=False)
    w = {"W_enc": sd["W_enc"].T, "b_enc": sd["b_enc"], "W_dec": sd["W_dec"], "b_dec": sd["b_dec"]}
    name = "transcoder"
    if sae.architecture == "jumprelu":
        w["threshold"] = sd["threshold"].clamp_min(0.0)
        name = "jumprelu_transcoder"
    if "W_skip" in sd:
        w["W_skip"] = sd["W_skip"].T  # SAELens: [d_out, d_in]
        name = name.replace("transcoder", "skip_transcoder")
    return name, w


def _names(sae: SAE, hookpoint: str | None, layout: str) -> tuple[str | None, str | None, str]:
    """(TransformerLens name, module path, which) for the written cfg."""
    if hookpoint and hp.is_tl_name(hookpoint):
        module, which = hp.tl_to_module(hookpoint, layout)
        return hookpoint, module, which
    module, which = hp.parse_site(hookpoint) if hookpoint else hookpoint_of(sae)
    recorded = Provenance.of(sae).tl_hook_name
    if not module:
        return recorded, None, which
    try:
        return hp.module_to_tl(module, which), module, which
    except hp.HookpointError:
        return recorded, module, which


def _dumps(cfg: dict) -> str:
    return json.dumps(cfg, indent=2, default=str) + "\n"
