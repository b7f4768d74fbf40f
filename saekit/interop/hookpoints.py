"""Hookpoint names across libraries.

saekit (and sparsify, and Hugging Face) name an activation by a module path plus which side
of the module it is read on: ``("model.layers.6", "output")``. SAELens and SAEBench use
TransformerLens names: ``"blocks.6.hook_resid_post"``. The table below maps one onto the
other for the two HF layouts saekit's models use: Llama-style (``model.layers.L`` with
``self_attn``/``mlp``/``input_layernorm``/``post_attention_layernorm``: Llama, Mistral,
Qwen, SmolLM, Gemma) and GPT-2-style (``transformer.h.L`` with ``attn``/``mlp``/``ln_1``/
``ln_2``). A name outside the table is an error that lists what is supported; nothing is
guessed.

sparsify names modules relative to ``model.base_model`` (``layers.6``), so its names are the
saekit path without the wrapper prefix (``model.`` / ``transformer.``).
"""

from __future__ import annotations

import re

from saekit.interop.base import InteropError

Which = str  # "output" | "input"

# TransformerLens hook (per block) -> (module path below the block, which side).
# Each entry is an exact equivalence: e.g. resid_mid is the input of the second norm, and
# mlp.hook_post (the MLP's hidden activation) is the input of the down projection.
_BLOCK_HOOKS: dict[str, dict[str, tuple[str, Which]]] = {
    "llama": {
        "hook_resid_pre": ("", "input"),
        "hook_resid_post": ("", "output"),
        "hook_resid_mid": ("post_attention_layernorm", "input"),
        "hook_mlp_in": ("post_attention_layernorm", "input"),
        "hook_attn_out": ("self_attn", "output"),
        "hook_mlp_out": ("mlp", "output"),
        "ln1.hook_normalized": ("input_layernorm", "output"),
        "ln2.hook_normalized": ("post_attention_layernorm", "output"),
        "mlp.hook_post": ("mlp.down_proj", "input"),
        "attn.hook_z": ("self_attn.o_proj", "input"),
    },
    "gpt2": {
        "hook_resid_pre": ("", "input"),
        "hook_resid_post": ("", "output"),
        "hook_resid_mid": ("ln_2", "input"),
        "hook_mlp_in": ("ln_2", "input"),
        "hook_attn_out": ("attn", "output"),
        "hook_mlp_out": ("mlp", "output"),
        "ln1.hook_normalized": ("ln_1", "output"),
        "ln2.hook_normalized": ("ln_2", "output"),
        "mlp.hook_post": ("mlp.c_proj", "input"),
        "attn.hook_z": ("attn.c_proj", "input"),
    },
}
# A module's input that equals a hook above (e.g. the MLP's input is ln2's output): how a
# transcoder's site "model.layers.L.mlp:in" is named in TransformerLens terms.
_INPUT_ALIASES = {
    "llama": {"mlp": "ln2.hook_normalized", "self_attn": "ln1.hook_normalized"},
    "gpt2": {"mlp": "ln2.hook_normalized", "attn": "ln1.hook_normalized"},
}
_BLOCKS = {"llama": "model.layers", "gpt2": "transformer.h"}
_GLOBAL_HOOKS = {
    "llama": {"hook_embed": ("model.embed_tokens", "output"), "ln_final.hook_normalized": ("model.norm", "output")},
    "gpt2": {"hook_embed": ("transformer.wte", "output"), "ln_final.hook_normalized": ("transformer.ln_f", "output")},
}  # fmt: skip
_WRAPPERS = ("model.", "transformer.")
GLOBAL_TL_NAMES = ("hook_embed", "ln_final.hook_normalized")

LAYOUTS = tuple(_BLOCKS)


class HookpointError(InteropError):
    """A hookpoint name that has no known equivalent in the other naming scheme."""


def _supported(layout: str) -> str:
    return (
        ", ".join(f"blocks.L.{h}" for h in _BLOCK_HOOKS[layout])
        + ", "
        + ", ".join(_GLOBAL_HOOKS[layout])
    )


def _check_layout(layout: str) -> None:
    if layout not in _BLOCKS:
        raise HookpointError(f"unknown model layout {layout!r}; known: {', '.join(LAYOUTS)}")


def tl_to_module(name: str, layout: str = "llama") -> tuple[str, Which]:
    """'blocks.6.hook_resid_post' -> ('model.layers.6', 'output')."""
    _check_layout(layout)
    if name in _GLOBAL_HOOKS[layout]:
        return _GLOBAL_HOOKS[layout][name]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m and m.group(2) in _BLOCK_HOOKS[layout]:
        sub, which = _BLOCK_HOOKS[layout][m.group(2)]
        path = f"{_BLOCKS[layout]}.{m.group(1)}" + (f".{sub}" if sub else "")
        return path, which
    raise HookpointError(
        f"cannot map TransformerLens hook {name!r} to a {layout} module path; "
        f"supported: {_supported(layout)} (pass the hookpoint explicitly)"
    )


def module_to_tl(path: str, which: Which = "output") -> str:
    """('model.layers.6', 'output') -> 'blocks.6.hook_resid_post'. Accepts saekit paths and
    sparsify's base-model-relative ones ('layers.6')."""
    for layout, prefix in _BLOCKS.items():
        for hook, target in _GLOBAL_HOOKS[layout].items():
            if target == (path, which):
                return hook
        bare = prefix.split(".", 1)[1]  # "layers" / "h"
        m = re.fullmatch(rf"(?:{re.escape(prefix)}|{re.escape(bare)})\.(\d+)(?:\.(.+))?", path)
        if not m:
            continue
        sub = m.group(2) or ""
        for hook, target in _BLOCK_HOOKS[layout].items():
            if target == (sub, which):
                return f"blocks.{m.group(1)}.{hook}"
        if which == "input" and sub in _INPUT_ALIASES[layout]:
            return f"blocks.{m.group(1)}.{_INPUT_ALIASES[layout][sub]}"
    raise HookpointError(
        f"cannot map module {path!r} ({which}) to a TransformerLens hook name; known modules: "
        "model.layers.L[.mlp|.self_attn|.input_layernorm|.post_attention_layernorm|"
        ".mlp.down_proj|.self_attn.o_proj] and transformer.h.L[.mlp|.attn|.ln_1|.ln_2] "
        "(pass --hookpoint to name it yourself)"
    )


def parse_site(site: str, which: Which = "output") -> tuple[str, Which]:
    """'model.layers.6.mlp:in' -> ('model.layers.6.mlp', 'input'); a bare path keeps `which`."""
    path, colon, side = site.rpartition(":")
    if colon and side in ("in", "out", "input", "output"):
        return path, "input" if side.startswith("in") else "output"
    return site, which


def is_tl_name(name: str) -> bool:
    return name.startswith("blocks.") or name in GLOBAL_TL_NAMES


def layer_of(name: str) -> int | None:
    """The block index in a TransformerLens name or a module path, if there is one."""
    m = re.search(r"(?:blocks|layers|h)\.(\d+)", name)
    return int(m.group(1)) if m else None


def to_sparsify(path: str) -> str:
    """saekit module path -> sparsify's name (relative to the base model)."""
    for wrapper in _WRAPPERS:
        if path.startswith(wrapper):
            return path[len(wrapper) :]
    return path


def from_sparsify(name: str) -> str:
    """sparsify's base-model-relative name -> saekit module path. 'layers.L...' is a
    Llama-style model's ('model.layers.L'), 'h.L...' a GPT-2-style one ('transformer.h.L');
    anything else is kept as written (it may already be a full path)."""
    if re.match(r"layers\.\d+", name):
        return "model." + name
    if re.match(r"h\.\d+", name):
        return "transformer." + name
    return name
