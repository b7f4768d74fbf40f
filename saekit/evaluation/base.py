"""What every metric group shares: the group names, the settings, `Skip`, the SAE's inference
variants and `EvalRun`, the one object a group reads (the SAE, its held-out stream, the LM
behind it, and what earlier groups of the same run left for later ones).

A group is a function `EvalRun -> {section name: results}` in its own module; evaluate.py
runs them in `GROUPS` order and assembles the document (docs/eval-schema.md).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from saekit.data.stream import ActivationStream
from saekit.evaluation.sources import ModelSource
from saekit.sae.base import SAE

if TYPE_CHECKING:
    from saekit.evaluation.probing import ProbeSettings

# Run order: core first, it keeps the held-out sample and densities later groups read.
GROUPS = (
    "core", "synthetic", "spliced", "adaptive", "probing", "absorption", "afa", "steering", "interp",
)  # fmt: skip
DEFAULT_GROUPS = ("core", "synthetic", "spliced", "adaptive")

# How spliced CE/KL choose the positions they replace and score (docs/eval-schema.md).
CONVENTIONS = {
    "saekit": "kept tokens only: no padding, no special tokens, not position 0; the "
    "reconstruction, zero and mean ablation replace those tokens and the predictions they "
    "make are scored",
    "saebench": "every attended position is replaced (zero ablation zeroes them all) and "
    "every prediction with an attended target is scored, as SAEBench's core eval",
}


class Skip(Exception):
    """A metric group that does not apply to this SAE; the message says why."""


def _default_probe_settings() -> ProbeSettings:
    from saekit.evaluation.probing import ProbeSettings  # the probing group imports this module

    return ProbeSettings()


@dataclass
class EvalSettings:
    """What to evaluate and on how much data. Token and context counts are per SAE."""

    groups: tuple[str, ...] = DEFAULT_GROUPS
    n_tokens: int = 16384  # core: held-out activation tokens (at most one pass over them)
    sample_tokens: int = 4096  # kept from the core pass for adaptive / afa
    spliced_contexts: int = 16
    convention: str = "saekit"  # spliced: a key of CONVENTIONS
    ctx_len: int = 128
    corpus: Any = "default"  # a corpus spec (see open_corpus) or a TextCorpus
    adaptive_max_factor: float = 4.0  # largest inference budget / training budget
    adaptive_relative_threshold: float | None = None  # MP residual stop; None: from the data
    steer_latents: int = 24  # alive latents sampled per SAE
    steer_contexts: int = 12
    kappa: float = 0.5  # steering α = κ · median ‖x‖
    steer_max_position: int = 24
    interp_contexts: int = 64
    interp_latents: int = 64
    absorption_words: int = 2000  # letter-only tokens drawn for the first-letter task
    absorption_icl: int = 10  # in-context example lines before each word
    seed: int = 0
    probe: ProbeSettings = field(default_factory=_default_probe_settings)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown metric group(s) {unknown}; valid: {', '.join(GROUPS)}")
        if self.convention not in CONVENTIONS:
            raise ValueError(
                f"unknown spliced convention {self.convention!r}; valid: {', '.join(CONVENTIONS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "probe"}
        out["groups"] = list(self.groups)
        out["corpus"] = self.corpus if isinstance(self.corpus, str) else self.corpus.describe()
        return out


# ---- how an SAE encodes at inference ------------------------------------------------------


@dataclass(frozen=True)
class InferenceVariant:
    """One way of encoding with an SAE. label_informed: the encoding reads ∂CE/∂x of the
    tokens being scored (a g-SAE's "gradient" mode), which contains the true next token, so
    its numbers are not those of an SAE used without the labels."""

    name: str
    sae: SAE
    label_informed: bool = False

    def reconstruct(
        self, x: torch.Tensor, grad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x [n, d_in] (and, label-informed, grad [n, d_in]) -> (x̂ [n, d_out] with a
        transcoder's skip term, codes [n, n_latents], the selector's per-token stats)."""
        extras = {"grad": grad} if self.label_informed else None
        return self.sae.reconstruct(x, extras)


def inference_variants(sae: SAE) -> list[InferenceVariant]:
    """The SAE's inference variants, label-free first (the one every other group reports).

    A g-SAE (needs the per-token "grad"): "topk", its selection without the gradient, and
    "gradient", its trained rule (label-informed). Any other SAE: "sae", as it is."""
    if not sae.needs_extras:
        return [InferenceVariant("sae", sae)]
    if set(sae.needs_extras) == {"grad"} and "k" in sae.knobs:
        from saekit.sae.selectors import TopK

        gradient = sae
        if getattr(sae.cfg, "inference", "gradient") != "gradient":  # saved with inference=topk
            gradient = copy.copy(sae)
            gradient.cfg = dataclasses.replace(sae.cfg, inference="gradient")
        return [
            InferenceVariant("topk", sae.with_selector(TopK())),
            InferenceVariant("gradient", gradient, label_informed=True),
        ]
    raise Skip(f"{sae.architecture} needs per-token extras ({', '.join(sae.needs_extras)})")


def selection_means(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over tokens of the selector's per-token stats (top-AFA: "cap_frac", the tokens
    whose k_max cap bound; MP: "pursuit_steps")."""
    return {name: float(v.double().mean()) for name, v in stats.items()}


# ---- one evaluation run -------------------------------------------------------------------


@dataclass
class EvalRun:
    """The input of every group. `shared` is reused across the SAEs of one invocation
    (contexts, mean activations, probing baselines, steering α), so SAEs on one hookpoint pay
    for them once. core fills `sample` (held-out activations [≤ sample_tokens, d_in]) and
    `density` (firing density per latent) for the groups after it."""

    sae: SAE
    stream: ActivationStream | None
    settings: EvalSettings
    source: ModelSource | None
    shared: dict[str, Any]
    sample: torch.Tensor | None = None
    density: torch.Tensor | None = None

    @cached_property
    def variants(self) -> list[InferenceVariant]:
        return inference_variants(self.sae)

    @property
    def label_free(self) -> InferenceVariant:
        """The variant reported by every group but spliced (which reports them all)."""
        return self.variants[0]

    def mode_note(self) -> dict[str, str]:
        """{"inference_mode": name} for an SAE with several variants, else {}."""
        return {"inference_mode": self.label_free.name} if len(self.variants) > 1 else {}

    def require_model(self) -> tuple[Any, Any, ModelSource]:
        if self.source is None:
            raise Skip("no language model behind this SAE's data (synthetic or unknown source)")
        try:
            model, tokenizer = self.source.load()
        except OSError as e:  # not installed, not cached and no hub access: say so, go on
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise Skip(f"model {self.source.model!r} cannot be loaded here ({first})") from None
        return model, tokenizer, self.source

    def require_sample(self) -> torch.Tensor:
        if self.sample is None:
            raise Skip("needs the core group's held-out sample (add core to the groups)")
        return self.sample

    def require_not_transcoder(self, why: str) -> None:
        if self.sae.is_transcoder:
            raise Skip(why)

    def contexts(self, split: str, n: int) -> Any:
        """n tokenised contexts of the corpus' split ("train" or "heldout"), shared by every
        SAE of the run on the same model."""
        from saekit.data.corpora import tokenize_corpus

        _, tokenizer, source = self.require_model()
        s = self.settings
        key = ("contexts", source.model, s.corpus, split, n, s.ctx_len, s.seed)
        if key not in self.shared:
            self.shared[key] = tokenize_corpus(tokenizer, s.corpus, n, s.ctx_len, split, s.seed)
        return self.shared[key]


__all__ = [
    "CONVENTIONS",
    "DEFAULT_GROUPS",
    "GROUPS",
    "EvalRun",
    "EvalSettings",
    "InferenceVariant",
    "Skip",
    "inference_variants",
    "selection_means",
]
