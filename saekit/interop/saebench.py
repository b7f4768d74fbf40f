"""An SAEBench custom-SAE view of a saekit SAE.

SAEBench (adamkarvonen/SAEBench, sae_bench/custom_saes/base_sae.py) evaluates any module
with encode / decode / forward, W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
b_dec [d_in], `device` and `dtype` attributes, a `.to()` that updates them, and a `cfg`
with model_name, d_in, d_sae, hook_name (TransformerLens style, since it runs the model
through TransformerLens), hook_layer, dtype and device strings. `SAEBenchAdapter` provides
exactly that around a saekit SAE without copying its weights: W_enc is a transposed view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from saekit.interop import hookpoints as hp
from saekit.interop.base import InteropError, hookpoint_of, is_transcoder, model_of
from saekit.sae.base import SAE
from saekit.sae.provenance import Provenance


@dataclass
class SAEBenchConfig:
    """The fields of SAEBench's CustomSAEConfig that its evaluations read."""

    model_name: str
    d_in: int
    d_sae: int
    hook_layer: int
    hook_name: str
    context_size: int | None = None
    hook_head_index: int | None = None
    architecture: str = ""
    apply_b_dec_to_input: bool = True
    finetuning_scaling_factor: bool = False
    activation_fn_str: str = ""
    activation_fn_kwargs: dict[str, Any] = field(default_factory=dict)
    prepend_bos: bool = True
    normalize_activations: str = "none"
    dtype: str = "float32"
    device: str = "cpu"
    model_from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_path: str = ""
    dataset_trust_remote_code: bool = True
    seqpos_slice: tuple = (None,)
    training_tokens: int = -100_000
    sae_lens_training_version: str | None = None
    neuronpedia_id: str | None = None
    metadata: Any = None


class SAEBenchAdapter(nn.Module):
    """Wrap `sae` for SAEBench. hook_name (TransformerLens) and model_name default to what
    the SAE's metadata records; an SAE without them needs them passed in."""

    def __init__(
        self,
        sae: SAE,
        model_name: str | None = None,
        hook_name: str | None = None,
        hook_layer: int | None = None,
        context_size: int | None = 128,
        layout: str = "llama",
    ):
        super().__init__()
        if is_transcoder(sae):
            raise InteropError("SAEBench evaluates autoencoders; a transcoder has no SAEBench view")
        if sae.cfg.standardise_tokens:  # decode(codes) would stay in standardised units
            raise InteropError(
                "this SAE standardises each input token (standardise_tokens); SAEBench's "
                "separate encode and decode cannot carry the per-token moments"
            )
        self.sae = sae
        if hook_name is None:
            recorded = Provenance.of(sae).tl_hook_name
            module, which = hookpoint_of(sae)
            if recorded:
                hook_name = recorded
            elif module:
                hook_name = hp.module_to_tl(module, which)
            else:
                raise InteropError("the SAE records no hookpoint; pass hook_name")
        elif not hp.is_tl_name(hook_name):
            hook_name = hp.module_to_tl(*hp.parse_site(hook_name))  # a module path was given
        layer = hook_layer if hook_layer is not None else hp.layer_of(hook_name)
        if layer is None:
            raise InteropError(f"cannot tell the layer of {hook_name!r}; pass hook_layer")
        model_name = model_name or model_of(sae)
        if not model_name:
            raise InteropError("the SAE records no model name; pass model_name")
        p = next(sae.parameters())
        self.device: torch.device = p.device
        self.dtype: torch.dtype = p.dtype
        self.cfg = SAEBenchConfig(
            model_name=model_name,
            d_in=sae.d_in,
            d_sae=sae.n_latents,
            hook_layer=layer,
            hook_name=hook_name,
            context_size=context_size,
            architecture=sae.architecture,
            dtype=str(self.dtype).removeprefix("torch."),
            device=str(self.device),
        )

    # ---- weights in SAEBench's orientation (views, never copies) ---------------------------
    @property
    def W_enc(self) -> torch.Tensor:
        # A pursuit encoder (MP-SAE) has no W_enc: it correlates with the atoms themselves.
        w = getattr(self.sae, "W_enc", None)
        return (self.sae.W_dec if w is None else w).T

    @property
    def W_dec(self) -> torch.Tensor:
        return self.sae.W_dec

    @property
    def b_enc(self) -> torch.Tensor:
        b = getattr(self.sae, "b_enc", None)
        if b is not None:
            return b
        return torch.zeros(self.sae.n_latents, device=self.device, dtype=self.dtype)

    @property
    def b_dec(self) -> torch.Tensor:
        return self.sae.b_dec

    # ---- the interface ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> [..., d_sae] (any leading dims, e.g. [batch, seq, d_in])."""
        lead = x.shape[:-1]
        codes = self.sae.encode(x.reshape(-1, x.shape[-1]).to(self.dtype))
        return codes.reshape(*lead, codes.shape[-1])

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        lead = feature_acts.shape[:-1]
        out = self.sae.decode(feature_acts.reshape(-1, feature_acts.shape[-1]).to(self.dtype))
        return out.reshape(*lead, out.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def to(self, *args: Any, **kwargs: Any) -> SAEBenchAdapter:
        super().to(*args, **kwargs)
        p = next(self.sae.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.cfg.device = str(p.device)
        self.cfg.dtype = str(p.dtype).removeprefix("torch.")
        return self

    @torch.no_grad()
    def check_decoder_norms(self) -> bool:
        norms = self.W_dec.norm(dim=1)
        tol = 1e-2 if self.W_dec.dtype in (torch.bfloat16, torch.float16) else 1e-5
        return bool(torch.allclose(norms, torch.ones_like(norms), atol=tol))
