"""The SAE: one dictionary, an optional encoder, one selector and a few loss terms.

The methods differ in how the sparse code is chosen (the selector) and in a few loss terms;
they share the dictionary, the decoder, the normalisation folding, the optimiser and the files.
So an architecture (methods/) is a config dataclass plus a composition of parts:

    dictionary  W_dec, b_dec: decode, unit-norm constraint, folding     (dictionary.py)
    encoder     W_enc, b_enc, or none for pursuit coders                  (encoders.py)
    selector    pre-activations (or the centred input) -> sparse code     (selectors/)
    losses      reconstruction, AuxK, L1, L0, Matryoshka, aux_zipf, ...   (losses/)

Parts are small strategy objects. Their tensors are registered on the SAE itself under flat
names (W_dec, b_enc, threshold, ...) so files have one namespace whatever the composition.

Shapes: x [batch, d_in]; codes [batch, n_latents]; W_dec [n_latents, d_out] (atoms are rows,
d_out = d_in except for transcoders); W_enc [n_latents, d_in]; b_dec [d_out]; b_enc
[n_latents].
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from saekit.options import option
from saekit.profiling import phase
from saekit.sae.sparse import SparseCode, dense_code
from saekit.sae.standardise import TokenMoments, restore, standardise

if TYPE_CHECKING:
    from saekit.sae.dictionary import Dictionary
    from saekit.sae.encoders import PreActivations
    from saekit.sae.losses.base import LossTerm
    from saekit.sae.selectors.base import Selector


@dataclass
class SAEConfig:
    """Fields shared by every architecture; each architecture extends it with its own knobs."""

    d_in: int
    n_latents: int
    seed: int = option(0, "seed of the initial weights", lo=0)
    standardise_tokens: bool = option(
        False,
        "per-token standardisation: centre each input vector and scale it to unit variance "
        "over its d_in dimensions before encoding, and map the reconstruction back (the top-AFA "
        "reference's setting); stored in cfg.json and applied by every encode. The dataset-wide "
        "input scale then has no effect",
    )

    def __post_init__(self) -> None:
        for name in ("d_in", "n_latents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainContext:
    """What the trainer tells an SAE about the current step.

    dead_mask: [n_latents] bool, latents that have not fired within the dead window.
    progress: fraction of the run completed, in [0, 1] (for coefficient warm-ups).
    extras: per-token tensors from the stream batch ("grad" for g-SAE, "target" for
      transcoders).
    """

    dead_mask: torch.Tensor | None = None
    progress: float = 1.0
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainOutput:
    """x_hat [batch, d_out], the selector's code (sparse or dense), and named loss terms
    (summed by the trainer). `codes` is the code as a detached dense [batch, n_latents] matrix,
    built on first use: a TopK step that needs only `fired()` never builds it (at 4,096
    latents the matrix alone cost a fifth of the step)."""

    x_hat: torch.Tensor
    code: SparseCode | torch.Tensor
    losses: dict[str, torch.Tensor]
    # Scalars worth logging (a JumpReLU sparsity coefficient, mean pursuit steps, ...).
    stats: dict[str, float] = field(default_factory=dict)

    @functools.cached_property
    def codes(self) -> torch.Tensor:
        return dense_code(self.code)

    def fired(self) -> torch.Tensor:
        """[n_latents] bool: the latents with a non-zero code on some token of the batch."""
        code = self.code
        if not isinstance(code, SparseCode):
            return code.detach().any(0)
        fired = torch.zeros(code.n_latents, dtype=torch.bool, device=code.cols.device)
        fired[code.cols[code.values.detach() != 0]] = True
        return fired


@dataclass
class Forward:
    """Everything one pass computed, handed to the loss terms.

    x: the input [batch, d_in]; target: what is reconstructed (x, or the transcoder's target
    [batch, d_out]); x_centered: the encoder's / pursuit's input; pre: the encoder's
    pre-activations (None without an encoder); code: the selector's output; x_hat [batch,
    d_out]; ctx: the trainer's context.
    """

    x: torch.Tensor
    target: torch.Tensor
    x_centered: torch.Tensor
    pre: PreActivations | None
    code: SparseCode | torch.Tensor
    x_hat: torch.Tensor
    ctx: TrainContext


class SAE(nn.Module):
    """A sparse coder composed of parts (module docstring). Build one with
    `saekit.create(name, d_in=..., n_latents=..., **options)`."""

    def __init__(
        self,
        architecture: str,
        cfg: SAEConfig,
        dictionary: Dictionary,
        encoder: Any | None,
        selector: Selector,
        losses: Sequence[LossTerm],
        skip: Any | None = None,
    ):
        super().__init__()
        self.architecture = architecture
        self.cfg = cfg
        self.dictionary = dictionary
        self.encoder = encoder
        self.selector = selector
        self.losses = tuple(losses)
        self.skip = skip
        self.metadata: dict[str, Any] = {}
        if cfg.standardise_tokens and (self.is_transcoder or selector.needs_extras):
            raise ValueError(
                "standardise_tokens applies to SAEs that reconstruct their own input from it "
                "alone: not to transcoders or coders that need per-token extras (g-SAE)"
            )
        # Tied initialisation: encoder rows = the atoms (Conerly et al. 2024; Gao et al. 2024).
        gen = torch.Generator().manual_seed(cfg.seed)
        atoms = torch.randn(cfg.n_latents, cfg.d_in, generator=gen)
        atoms = atoms / atoms.norm(dim=-1, keepdim=True)
        for part in self.parts:
            part.attach(self, atoms, gen)

    @property
    def parts(self) -> list[Any]:
        found = [self.dictionary, self.encoder, self.selector, *self.losses, self.skip]
        return [p for p in found if p is not None]

    # ---- shapes and declared properties -------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    @property
    def is_transcoder(self) -> bool:
        """Reconstructs a different target (extras["target"]) from its input."""
        return bool(getattr(self.cfg, "transcode", False))

    @property
    def knobs(self) -> tuple[str, ...]:
        """Inference knobs of the selector (`encode(x, k=64)`), read by evaluation and the CLI."""
        return self.selector.knobs

    @property
    def needs_extras(self) -> tuple[str, ...]:
        """Per-token extras that encoding needs (g-SAE: "grad")."""
        return self.selector.needs_extras

    @property
    def signed_codes(self) -> bool:
        """Codes may be negative (AbsTopK, signed pursuit)."""
        return self.selector.signed

    @property
    def learns_by_gradient(self) -> bool:
        """False for coders built without an optimiser (ITDA)."""
        return any(p.requires_grad for p in self.parameters())

    # ---- the pass -------------------------------------------------------------------------------
    def _select(
        self,
        x: torch.Tensor,
        extras: Mapping[str, torch.Tensor],
        knobs: Mapping[str, Any],
        training: bool,
    ) -> tuple[SparseCode | torch.Tensor, torch.Tensor, PreActivations | None]:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"expected x of shape [batch, {self.d_in}], got {tuple(x.shape)}")
        needed = self.selector.extras_needed(self, training)
        missing = [name for name in needed if extras.get(name) is None]
        if missing:
            raise MissingExtrasError(self.selector.missing_extras_message(missing))
        if self.encoder is not None:
            x_centered = self.encoder.centre(self, x)
            pre = self.encoder.pre_activations(self, x_centered)
        else:
            x_centered, pre = x - self.b_dec, None
        code = self.selector.select(self, x_centered, pre, extras, training=training, **knobs)
        return code, x_centered, pre

    def _check_knobs(self, knobs: Mapping[str, Any]) -> None:
        unknown = sorted(set(knobs) - set(self.knobs))
        if unknown:
            valid = ", ".join(self.knobs) or "none"
            raise ValueError(
                f"{self.architecture} has no inference knob(s) {', '.join(unknown)}; "
                f"its knobs: {valid}"
            )

    def encode_with_stats(
        self, x: torch.Tensor, extras: Mapping[str, torch.Tensor] | None = None, **knobs: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(codes [batch, n_latents], per-token selection stats by name, each [batch])."""
        self._check_knobs(knobs)
        code, _, _ = self._select(self.coder_input(x)[0], extras or {}, knobs, training=False)
        stats = code.stats if isinstance(code, SparseCode) else {}
        return dense_code(code, detach=False), stats

    def encode(
        self, x: torch.Tensor, extras: Mapping[str, torch.Tensor] | None = None, **knobs: Any
    ) -> torch.Tensor:
        """Inference encode: x [batch, d_in] -> codes [batch, n_latents].

        extras: per-token tensors the selector needs (g-SAE: {"grad": [batch, d_in]}); others
        are ignored. knobs: the selector's inference knobs (`sae.knobs`), e.g. k=64 or
        n_steps=8; differentiable wherever the selection is piecewise constant."""
        return self.encode_with_stats(x, extras, **knobs)[0]

    def decode(self, codes: torch.Tensor | SparseCode) -> torch.Tensor:
        """codes [batch, n_latents] -> [batch, d_out] (without a transcoder's skip term)."""
        return self.dictionary.decode(self, codes)

    def forward(
        self, x: torch.Tensor, extras: Mapping[str, torch.Tensor] | None = None, **knobs: Any
    ) -> torch.Tensor:
        """Reconstruction (a transcoder's prediction of its target) with the inference
        selector, in the input's units (a standardised input's moments restored)."""
        return self.reconstruct(x, extras, **knobs)[0]

    def reconstruct(
        self, x: torch.Tensor, extras: Mapping[str, torch.Tensor] | None = None, **knobs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(x̂ as `forward` gives it, codes [batch, n_latents], per-token selection stats) from
        one selection: what an evaluation needs (decode(codes) alone would stay in a per-token
        standardised SAE's units and miss a transcoder's skip term)."""
        self._check_knobs(knobs)
        x_in, moments = self.coder_input(x)
        code, _, _ = self._select(x_in, extras or {}, knobs, training=False)
        stats = code.stats if isinstance(code, SparseCode) else {}
        x_hat = self._restore(self._output(x_in, self.decode(code)), moments)
        return x_hat, dense_code(code, detach=False), stats

    def coder_input(self, x: torch.Tensor) -> tuple[torch.Tensor, TokenMoments | None]:
        """x as the coder sees it: standardised per token when the config says so (with the
        moments that map a reconstruction back), else x itself."""
        if not self.cfg.standardise_tokens:
            return x, None
        return standardise(x)

    @staticmethod
    def _restore(y: torch.Tensor, moments: TokenMoments | None) -> torch.Tensor:
        return y if moments is None else restore(y, moments)

    def _output(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        return decoded if self.skip is None else decoded + self.skip.apply(self, x)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, d_in] -> [batch, n_latents], the encoder's selection scores (no gradient
        needed by the callers: evaluation, the browser)."""
        if self.encoder is None:
            raise ValueError(f"{self.architecture} has no encoder (codes come from a pursuit)")
        x = self.coder_input(x)[0]
        return self.encoder.pre_activations(self, self.encoder.centre(self, x)).full()

    def training_forward(self, x: torch.Tensor, ctx: TrainContext) -> TrainOutput:
        """The training pass: the selector's training rule, the reconstruction and every loss
        term. Loss terms see the input as the coder does (standardised per token when
        configured); the returned x_hat is in the input's units."""
        x, moments = self.coder_input(x)
        with phase("selection"):
            code, x_centered, pre = self._select(x, ctx.extras, {}, training=True)
        with phase("decoder"):
            x_hat = self._output(x, self.decode(code))
        target = self._target(x, ctx.extras)
        fwd = Forward(x, target, x_centered, pre, code, x_hat, ctx)
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        with phase("losses"):
            for term in self.losses:
                losses.update(term.compute(self, fwd, stats))
        if self.training:
            with torch.no_grad():
                for part in self.parts:
                    part.observe(self, fwd, stats)
        if isinstance(code, SparseCode):
            stats.update({k: float(v.float().mean()) for k, v in code.stats.items()})
        return TrainOutput(self._restore(x_hat, moments), code, losses, stats)

    def _target(self, x: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.is_transcoder:
            return x
        target = extras.get("target")
        if target is None:
            raise MissingExtrasError(
                "a transcoder trains on paired activations: the stream must supply "
                "extras['target'] (data spec model:NAME@MODULE:in->out or a paired cache)"
            )
        return target

    def with_selector(self, selector: Selector) -> SAE:
        """A view of this SAE with another selector and the same weights, e.g. a g-SAE or a
        BatchTopK SAE used as per-token TopK: `sae.with_selector(TopK(k=32))`."""
        view = copy.copy(self)
        view.selector = selector
        return view

    # ---- training hooks -------------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Keep Adam's moments free of the radial part that renormalisation throws away."""
        self.dictionary.remove_radial_grad(self)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Re-impose constraints after each update (unit atoms, non-negative thresholds)."""
        for part in self.parts:
            part.after_step(self)

    @property
    def calibrates(self) -> bool:
        """Whether some part tracks the training codes (so the trainer must hand them over)."""
        return any(type(part).calibrate is not Part.calibrate for part in self.parts)

    @torch.no_grad()
    def calibrate(self, codes: torch.Tensor) -> None:
        """Called by the trainer after every step with the step's training codes (running
        inference thresholds and densities)."""
        for part in self.parts:
            part.calibrate(self, codes)

    @property
    def needs_finalise(self) -> bool:
        return any(part.finalises for part in self.parts)

    @torch.no_grad()
    def finalise(self, x: torch.Tensor) -> None:
        """Called once after training with fresh activations x [n, d_in] (training scale):
        inference thresholds are set exactly here."""
        if self.encoder is None:
            return
        x = self.coder_input(x)[0]
        pre = self.encoder.pre_activations(self, self.encoder.centre(self, x))
        for part in self.parts:
            part.finalise(self, pre)

    # ---- conversions applied on save ------------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale(self, scale: float, target_scale: float | None = None) -> None:
        """The SAE was trained on x·scale (a transcoder's target on y·target_scale); make it
        act on raw activations with codes in raw units. Codes of positively homogeneous coders
        scale by 1/scale when every bias, threshold and absolute stopping rule does; atoms
        stay unit norm. With a separate target scale s_y the input weights first take the
        factor scale/s_y, and everything else is divided by s_y. A per-token standardised SAE
        is invariant to the input's scale: nothing to fold."""
        if self.cfg.standardise_tokens:
            return
        if target_scale is not None and target_scale != scale:
            for part in self.parts:
                part.rescale_input(self, scale / target_scale)
            scale = target_scale
        for part in self.parts:
            part.fold_input_scale(self, scale)

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """Make atoms unit norm without changing any reconstruction (free-norm dictionaries)."""
        self.dictionary.fold_norms(self)

    @torch.no_grad()
    def compact(self) -> None:
        """Drop capacity that was never used (ITDA's unfilled atoms) before saving."""
        for part in self.parts:
            part.compact(self)

    # ---- files ----------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **self.cfg.to_dict()}

    def extra_repr(self) -> str:
        names = [type(p).__name__ for p in self.parts]
        return f"architecture={self.architecture!r}, parts={names}"


class MissingExtrasError(ValueError):
    """Encoding needs per-token extras (g-SAE's gradient, a transcoder's target) that were
    not given."""


class Part:
    """Base of every part: hooks the SAE calls on all its parts. Each defaults to nothing."""

    finalises = False  # has a `finalise` that needs fresh data after training

    def attach(self, sae: SAE, atoms: torch.Tensor, gen: torch.Generator) -> None:
        """Register this part's tensors on the SAE (atoms: the shared random init)."""

    def observe(self, sae: SAE, fwd: Forward, stats: dict[str, float]) -> None:
        """Learn from a training pass without gradients (ITDA grows its dictionary here)."""

    def after_step(self, sae: SAE) -> None: ...

    def calibrate(self, sae: SAE, codes: torch.Tensor) -> None: ...

    def finalise(self, sae: SAE, pre: PreActivations) -> None: ...

    def fold_input_scale(self, sae: SAE, scale: float) -> None: ...

    def rescale_input(self, sae: SAE, factor: float) -> None:
        """Weights applied to the raw input × factor (folding a separate target scale)."""

    def compact(self, sae: SAE) -> None: ...
