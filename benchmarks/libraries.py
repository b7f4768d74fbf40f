"""TopK trained by saekit, sparsify (EleutherAI) and SAELens, each with its own training loop
and its own defaults, on the same in-memory activations; one held-out evaluation for all.

Shared by benchmarks/vs_libraries.py (speed, #15) and benchmarks/recipe.py (quality per
training token, #16). The two libraries come from the `interop-test` extra, never from
saekit's runtime dependencies (pip install -e '.[interop-test]': eai-sparsify==1.3.3,
sae-lens==6.54.12). A smoke test of all three at toy size (about a minute on one core):

    python benchmarks/libraries.py --data gaussian:64 --n-latents 512 --k 8 --batch 256 --steps 30

What each trainer is, read from the installed sources (not guessed):

saekit (saekit/training/trainer.py TrainConfig, saekit/sae/methods/topk.py): Trainer.fit on
  a TensorStream. Adam (0.9, 0.999), lr 2e-4/sqrt(n/2^14) (= 3.8e-4 at 4,608 latents) for
  every optimiser, 50 warm-up steps, linear decay to 0 over the last 20%, gradient clipping
  at norm 1; inputs scaled so that E||x|| = sqrt(d_in), b_dec at the geometric median (both
  from 2 batches read before step 0); tied init (random unit atoms, W_enc = W_dec); unit-norm
  decoder with the radial gradient removed; AuxK weight 1/32, k_aux = d_in/2, on latents not
  fired for 1M tokens. `optimizer` ("adam" | "signsgd-sf" | "muon") and any other TrainConfig
  field can be given.

sparsify 1.3.3 (sparsify/trainer.py, config.py, sparse_coder.py, fused_encoder.py):
  Trainer.fit itself. It only takes a language model and a token dataset and captures the
  activations with a forward hook, so we hand it a stand-in "model" whose one layer returns
  rows of our activation tensor indexed by the "token ids" of the dataset: the loop, the hook
  body, the initialisation, the optimiser, AuxK and the dead counters are all sparsify's code
  (nothing replicated). Its defaults: optimizer "signum" = schedulefree.ScheduleFreeWrapper(
  SignSGD, momentum=0.95), lr 5e-3/sqrt(n/2^14) (= 9.4e-3 at 4,608 latents), no schedule
  (lr_warmup_steps only applies to Adam), no gradient clipping; loss = batch FVU
  (sum of squared errors / centred batch variance); auxk_alpha = 0.0, i.e. NO AuxK in 1.3.3
  (older releases had 1/32), dead threshold 10M tokens; encoder = nn.Linear default init
  (Kaiming uniform) with zero bias, W_dec = its unit-normalised copy, b_dec = the mean of the
  first batch; decoder renormalised before every forward and its radial gradient removed; no
  input normalisation. We stub out its checkpoint writer (`save`), and read the weights it
  would save: the schedule-free average (optimizer.eval(), as its _checkpoint does).

SAELens 6.54.12 (sae_lens/config.py SAETrainerConfig, sae_lens/training/sae_trainer.py,
  sae_lens/saes/topk_sae.py, sae_lens/saes/sae.py): SAETrainer.fit on a DataProvider, an
  iterator of activation batches (its documented seam: `step(next(self.data_provider))`).
  Its defaults: Adam (0.9, 0.999), lr 3e-4, constant schedule, no warm-up or decay, gradient
  clipping at norm 1 (hard-coded); loss = squared error summed over d_in, mean over tokens;
  AuxK coefficient 1.0, k_aux = d_in/2, on latents not fired for dead_feature_window = 1,000
  steps; W_dec Kaiming-uniform rows rescaled to norm 0.1 (decoder_init_norm), W_enc = W_dec.T,
  b_enc = b_dec = 0 (not from data); no decoder constraint, but rescale_acts_by_decoder_norm
  ranks pre-activations times ||d_i|| and decodes with d_i/||d_i||; normalize_activations
  "none". lr_end is set to lr/10 as LanguageModelSAERunnerConfig does (the constant schedule
  ignores it); k (default 100) is set to the benchmark's k.

All three read the same batches: the row order of saekit's TensorStream(x, batch, seed)
(saekit reads two extra batches first, for its scale and b_dec). The libraries' SAEs are
saved with their own writers and read back with saekit.interop, so every SAE is evaluated by
the same saekit code; the conversion is checked against the library's own forward.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import tempfile
import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch

import saekit
from saekit.data.stream import TensorStream
from saekit.evaluation.metrics import ReconstructionMetrics
from saekit.sae.base import SAE
from saekit.training.trainer import TrainConfig, Trainer

LIBRARIES = ("saekit", "sparsify", "saelens")
MODULES = {"saekit": "saekit", "sparsify": "sparsify", "saelens": "sae_lens"}
GAUSSIAN_TRAIN, GAUSSIAN_HELD_OUT = 65_536, 8_192


@dataclass
class Activations:
    train: torch.Tensor  # [n_train, d_in] float32
    held_out: torch.Tensor  # [n_held_out, d_in]
    name: str  # "gaussian:256" or the cache path
    model: str | None = None  # the LM behind a cache (for the CE score)
    hookpoint: str | None = None

    @property
    def d_in(self) -> int:
        return self.train.shape[1]


def load_activations(spec: str, seed: int = 0) -> Activations:
    """Rows from "gaussian:D", standard normal in D dims (65,536 to train on, 8,192 held
    out), or from a saekit activation cache "DIR[@HOOKPOINT]" (its train and held-out splits)."""
    if spec.startswith("gaussian:"):
        d_in = int(spec.split(":")[1])
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(GAUSSIAN_TRAIN + GAUSSIAN_HELD_OUT, d_in, generator=gen)
        return Activations(x[:GAUSSIAN_TRAIN], x[GAUSSIAN_TRAIN:], spec)
    from saekit.data.cache import load_manifest, read_cache
    from saekit.data.spec import parse_data_spec

    data = parse_data_spec(f"cache:{spec}")
    path, manifest = data.source, load_manifest(data.source)
    hookpoint = data.hookpoint or next(iter(manifest["hookpoints"]))
    train, held_out = (
        read_cache(path, hookpoint, split, arrays=["x"])["x"].float()
        for split in ("train", "heldout")
    )
    return Activations(train, held_out, spec, manifest["model"]["name"], hookpoint)


@dataclass
class Budget:
    n_latents: int
    k: int
    batch: int
    steps: int
    seed: int = 0

    @property
    def tokens(self) -> int:
        return self.batch * self.steps


@dataclass
class Trained:
    library: str
    sae: SAE  # a saekit TopK SAE acting on raw activations
    seconds: float  # the training loop only (no construction, conversion or evaluation)
    tokens: int
    dead_own: float  # fraction of latents the library's own counter calls dead at the end
    dead_rule: str  # that counter's rule, in words
    hyper: dict[str, Any] = field(default_factory=dict)  # read back from the library's objects

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def batch_rows(n_rows: int, budget: Budget):
    """Row indices of each batch, in the order saekit's TensorStream(x, batch, seed) reads."""
    rows = torch.arange(n_rows)[:, None]
    for batch in TensorStream(rows, budget.batch, seed=budget.seed):
        yield batch.x[:, 0]


def installed(library: str) -> bool:
    """Whether `library` can be imported (the others come from the interop-test extra)."""
    return importlib.util.find_spec(MODULES[library]) is not None


def train(library: str, x: torch.Tensor, budget: Budget, **options: Any) -> Trained:
    """Train TopK on x [n, d_in] with `library`'s own loop; `options` override its defaults
    (saekit: TrainConfig fields; sparsify: TrainConfig or SparseCoderConfig fields; SAELens:
    SAETrainerConfig or TopKTrainingSAEConfig fields)."""
    trainers = {"saekit": train_saekit, "sparsify": train_sparsify, "saelens": train_saelens}
    return trainers[library](x, budget, **options)


def train_saekit(x: torch.Tensor, budget: Budget, **options: Any) -> Trained:
    sae = saekit.create("topk", d_in=x.shape[1], n_latents=budget.n_latents, k=budget.k,
                        seed=budget.seed)  # fmt: skip
    cfg = TrainConfig(steps=budget.steps, progress_bar=False, **options)
    trainer = Trainer({"topk": sae}, TensorStream(x, budget.batch, seed=budget.seed), cfg)
    # Input scale and b_dec from the first two batches: set-up, outside the timer (fit()
    # would do it first; there is no public method for it).
    trainer._initialise()
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    member = trainer.members[0]
    dead = member.tokens_since_fired >= cfg.dead_window_tokens
    hyper = {
        "lr": member.scheduler.base_lrs[0], "optimizer": cfg.optimizer, "betas": cfg.betas,
        "warmup_steps": cfg.warmup_steps, "decay_fraction": cfg.decay_fraction,
        "grad_clip": cfg.grad_clip, "aux_coeff": sae.cfg.aux_coeff,
        "normalise_inputs": cfg.normalise_inputs, "init_b_dec": cfg.init_b_dec,
        "input_scale": trainer.scale,
    }  # fmt: skip
    return Trained("saekit", trainer.export(member), seconds, budget.tokens,
                   float(dead.float().mean()), f"tokens_since_fired >= {cfg.dead_window_tokens:,}",
                   hyper)  # fmt: skip


class _Rows(torch.nn.Module):
    """The stand-in for a transformer layer: "token ids" are row numbers of x."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x = x

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.x[ids]


class _RowModel(torch.nn.Module):
    """What sparsify's Trainer needs of a PreTrainedModel: base_model, config, device,
    dummy_inputs (for its width probe) and a forward that runs the hooked layer."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Rows(x)])
        self.config = argparse.Namespace(num_hidden_layers=1)
        self.dummy_inputs = {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    @property
    def base_model(self) -> torch.nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers[0](input_ids)


class _Sequences(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i]}


def train_sparsify(x: torch.Tensor, budget: Budget, **options: Any) -> Trained:
    with contextlib.redirect_stdout(io.StringIO()):  # it prints whether Triton is installed
        import sparsify

    from saekit.interop import sparsify as sparsify_io

    coder_fields = {f.name for f in fields(sparsify.SaeConfig)}
    coder = sparsify.SaeConfig(num_latents=budget.n_latents, k=budget.k,
                               **{k: v for k, v in options.items() if k in coder_fields})  # fmt: skip
    # The batch as sequences of `seq` "tokens" (sparsify's batch_size counts sequences);
    # the rows are already shuffled, so the split changes nothing but the collate cost.
    seq = math.gcd(budget.batch, 128)
    rows = batch_rows(x.shape[0], budget)
    ids = torch.cat([next(rows) for _ in range(budget.steps)]).view(-1, seq)
    cfg = sparsify.TrainConfig(
        coder, batch_size=budget.batch // seq, hookpoints=["layers.0"],
        init_seeds=[budget.seed], log_to_wandb=False, save_every=10**9,
        save_dir=tempfile.gettempdir(),
        **{k: v for k, v in options.items() if k not in coder_fields},
    )  # fmt: skip
    precision = torch.get_float32_matmul_precision()  # fit() sets it to "high" for good
    with contextlib.redirect_stdout(io.StringIO()):  # its set-up prints
        trainer = sparsify.Trainer(cfg, _Sequences(ids), _RowModel(x))
        trainer.save = lambda: None  # checkpoint writes are not training
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
    torch.set_float32_matmul_precision(precision)
    assert trainer.global_step == budget.steps, trainer.global_step
    for opt in trainer.optimizers:  # the weights its checkpoints hold: the schedule-free x
        if hasattr(opt, "eval"):
            opt.eval()
    (name, coder_module), = trainer.saes.items()  # fmt: skip
    dead = trainer.num_tokens_since_fired[name] > cfg.dead_feature_threshold
    hyper = {
        "lr": trainer.optimizers[0].param_groups[0]["lr"], "optimizer": cfg.optimizer,
        "optimizer_class": type(trainer.optimizers[0]).__name__,
        "momentum": getattr(trainer.optimizers[0], "momentum", None),
        "auxk_alpha": cfg.auxk_alpha, "normalize_decoder": coder.normalize_decoder,
        "loss_fn": cfg.loss_fn,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        coder_module.save_to_disk(tmp)
        sae = sparsify_io.read(tmp)
    _check_conversion(sae, lambda h: coder_module(h).sae_out, x)
    return Trained("sparsify", sae, seconds, budget.tokens, float(dead.float().mean()),
                   f"num_tokens_since_fired > {cfg.dead_feature_threshold:,}", hyper)  # fmt: skip


def train_saelens(x: torch.Tensor, budget: Budget, **options: Any) -> Trained:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from saekit.interop import saelens as saelens_io

    sae_fields = {f.name for f in fields(TopKTrainingSAEConfig)}
    torch.manual_seed(budget.seed)  # its weight init draws from torch's global generator
    lens_sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=x.shape[1], d_sae=budget.n_latents, k=budget.k,
        **{k: v for k, v in options.items() if k in sae_fields},
    ))  # fmt: skip
    trainer_options = {k: v for k, v in options.items() if k not in sae_fields}
    lr = trainer_options.get("lr", SAETrainerConfig.lr)
    cfg = SAETrainerConfig(
        total_training_samples=budget.tokens, train_batch_size_samples=budget.batch,
        **{"lr_end": lr / 10, **trainer_options},
    )  # fmt: skip
    batches = (x[rows] for rows in batch_rows(x.shape[0], budget))
    trainer = SAETrainer(cfg, lens_sae, batches)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    dead = trainer.dead_neurons
    hyper = {
        "lr": cfg.lr, "lr_scheduler": cfg.lr_scheduler_name, "warmup_steps": cfg.lr_warm_up_steps,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "aux_loss_coefficient": lens_sae.cfg.aux_loss_coefficient,
        "decoder_init_norm": lens_sae.cfg.decoder_init_norm,
        "rescale_acts_by_decoder_norm": lens_sae.cfg.rescale_acts_by_decoder_norm,
        "normalize_activations": lens_sae.cfg.normalize_activations,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        lens_sae.save_inference_model(tmp)
        sae = saelens_io.read(tmp)
    _check_conversion(sae, lens_sae.eval(), x)
    return Trained("saelens", sae, seconds, budget.tokens, float(dead.float().mean()),
                   f"steps since fired > {cfg.dead_feature_window:,}", hyper)  # fmt: skip


@torch.no_grad()
def _check_conversion(sae: SAE, reconstruct, x: torch.Tensor, rows: int = 256) -> None:
    """The saekit SAE read back from the library's files reconstructs as the library does."""
    probe = x[:rows]
    ours, theirs = sae.decode(sae.encode(probe)), reconstruct(probe)
    error = float((ours - theirs).abs().max() / theirs.abs().max())
    if not error < 1e-4:
        raise RuntimeError(f"converted SAE differs from the library's own forward: {error:.2e}")


@torch.no_grad()
def evaluate(sae: SAE, x: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """Held-out FVU (Σ||x − x̂||² / Σ||x − x̄||²), mean L0 and the fraction of latents that
    never fire on x: saekit's ReconstructionMetrics, the same code for every library."""
    metrics = ReconstructionMetrics(sae.n_latents)
    for chunk in x.split(batch):
        codes = sae.encode(chunk)
        metrics.update(chunk, sae.decode(codes), codes)
    r = metrics.compute()
    return {"fvu": r["fvu"], "l0": r["l0"], "frac_dead": r["frac_dead"]}


def ce_score(sae: SAE, acts: Activations, contexts: int, shared: dict) -> float | None:
    """saekit's spliced CE-loss score (evaluate_sae "spliced") on `contexts` held-out contexts
    of its default corpus, for activations from a cache; None for Gaussian rows or 0."""
    if acts.model is None or contexts <= 0:
        return None
    from saekit.evaluation.evaluate import EvalSettings, ModelSource, evaluate_sae

    settings = EvalSettings(groups=("spliced",), spliced_contexts=contexts)
    source = ModelSource(acts.model, acts.hookpoint)
    doc = evaluate_sae(sae, None, settings, source=source, shared=shared)
    return doc.get("spliced", {}).get("ce_loss_score")


def main() -> None:
    p = argparse.ArgumentParser(description="smoke test: " + __doc__.splitlines()[0])
    p.add_argument("--data", default="gaussian:64", help="gaussian:D or a cache dir")
    p.add_argument("--n-latents", type=int, default=512)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    acts = load_activations(args.data)
    budget = Budget(args.n_latents, args.k, args.batch, args.steps)
    for library in LIBRARIES:
        t = train(library, acts.train, budget)
        print(library, f"{t.tokens_per_s:,.0f} tokens/s", evaluate(t.sae, acts.held_out),
              f"dead (own counter) {t.dead_own:.3f}", t.hyper, flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
