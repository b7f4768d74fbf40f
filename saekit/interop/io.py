"""Detect another library's SAE files, read them as saekit SAEs, write saekit SAEs in their
layout, and convert between the two (`saekit convert`)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from saekit.formats import native
from saekit.interop import dictionary_learning, saelens, sparsify
from saekit.interop.base import InteropError
from saekit.interop.hookpoints import is_tl_name, parse_site, tl_to_module
from saekit.sae.base import SAE

FORMATS = ("saekit", "saelens", "sparsify", "dictionary_learning")
WRITABLE = ("saekit", "saelens", "sparsify")
SPARSITY = "sparsity.safetensors"  # SAELens's log10 feature densities, kept beside saekit's files


def detect_format(path: str | Path) -> str:
    """Which library wrote `path`, judged from its files only."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if dictionary_learning.weights_file(path) is not None:
        return "dictionary_learning"
    if path.is_dir() and (path / native.CONFIG_FILE).is_file():
        if (path / native.WEIGHTS_FILE).is_file():
            return "saekit"
        if saelens.is_saelens_dir(path):
            return "saelens"
        if sparsify.is_sparsify_dir(path):
            return "sparsify"
    if path.is_dir() and sparsify.hookpoint_dirs(path):
        return "sparsify"
    raise InteropError(
        f"{path}: not a recognised SAE: expected saekit (cfg.json + weights.safetensors), "
        "SAELens (cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors, "
        "or folders of them) or dictionary_learning (ae.pt)"
    )


def read(path: str | Path, fmt: str | None = None, **options) -> dict[str, SAE]:
    """{name: SAE} from `path` (a sparsify run folder can hold several hookpoints; every other
    source gives one SAE named after the folder)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    name = path.stem if path.is_file() else path.name
    if fmt == "saekit":
        sae = native.load(path)
        if (path / SPARSITY).is_file():
            sae.log10_feature_density = load_file(str(path / SPARSITY))["sparsity"]
        return {name: sae}
    if fmt == "saelens":
        return {name: saelens.read(path, layout=options.get("layout", "llama"))}
    if fmt == "sparsify":
        return {d.name: sparsify.read(d) for d in sparsify.hookpoint_dirs(path)}
    if fmt == "dictionary_learning":
        return {name: dictionary_learning.read(path, dict_class=options.get("dict_class"))}
    raise InteropError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def load(path: str | Path, **options) -> SAE:
    """The one SAE at `path`, whatever library wrote it."""
    saes = read(path, **options)
    if len(saes) != 1:
        raise InteropError(f"{path} holds {len(saes)} SAEs ({', '.join(saes)}); pick one folder")
    return next(iter(saes.values()))


def write(sae: SAE, path: str | Path, fmt: str, hookpoint: str | None = None,
          model_name: str | None = None, layout: str = "llama") -> Path:  # fmt: skip
    """Write `sae` to `path` in format `fmt`; returns the folder written."""
    if fmt == "saekit":
        meta = dict(sae.metadata)
        if hookpoint:
            data = meta["data"] = dict(meta.get("data") or {})
            if is_tl_name(hookpoint):
                data["tl_hook_name"] = hookpoint
                data["hookpoint"], data["which"] = tl_to_module(hookpoint, layout)
            else:
                data["hookpoint"], data["which"] = parse_site(hookpoint)
        out = native.save(sae, path, meta)
        density = getattr(sae, "log10_feature_density", None)
        if density is not None:
            save_file({"sparsity": density.float().contiguous()}, str(Path(out) / SPARSITY))
        return Path(out)
    if sae.cfg.standardise_tokens:  # never silently dropped: the codes would change
        raise InteropError(
            f"this SAE standardises each input token (standardise_tokens); writing it as {fmt} "
            "would drop that: keep it in saekit's format"
        )
    if fmt == "saelens":
        return saelens.write(sae, path, hookpoint=hookpoint, model_name=model_name, layout=layout)
    if fmt == "sparsify":
        if hookpoint and is_tl_name(hookpoint):
            hookpoint = tl_to_module(hookpoint, layout)[0]
        hookpoint = parse_site(hookpoint)[0] if hookpoint else None
        return sparsify.write(sae, path, hookpoint=hookpoint)
    raise InteropError(f"cannot write format {fmt!r}; writable: {', '.join(WRITABLE)}")


def convert(src: str | Path, dst: str | Path, to: str, **options) -> list[Path]:
    """Convert every SAE in `src` to format `to` under `dst`; returns the folders written.
    Several SAEs (a sparsify run) go to dst/<name>/ (sparsify output keeps its run layout)."""
    if to not in WRITABLE:
        raise InteropError(f"--to must be one of {', '.join(WRITABLE)}, got {to!r}")
    saes = read(
        src, dict_class=options.pop("dict_class", None), layout=options.get("layout", "llama")
    )
    dst = Path(dst)
    written = []
    for name, sae in saes.items():
        target = dst if (len(saes) == 1 or to == "sparsify") else dst / name
        written.append(write(sae, target, to, **options))
    return written
