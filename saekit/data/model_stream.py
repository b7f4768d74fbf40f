"""ModelStream: activations captured on the fly from a model over tokenised contexts (no cache).

Shuffling works in chunks: every epoch permutes the contexts (seeded by seed and epoch),
cuts the permutation into chunks of ``contexts_per_chunk`` contexts, runs each chunk through
the model (truncated after the hookpoint), keeps the masked tokens and permutes them (seeded
by seed, epoch and chunk). A batch therefore mixes tokens from ~contexts_per_chunk contexts
drawn from the whole corpus, and the buffer (one chunk of activations) is a pure function of
(seed, epoch, chunk).

A hookpoint pair (``model.layers.6.mlp:in->out``, see `saekit.data.hooks.HookPair`) captures
both sites in the same forward and keeps the same tokens of both: batches carry the source
in ``x`` and the target in ``extras["target"]`` [batch, d_out], for transcoders.

Resume guarantee: ``state_dict()`` is (epoch, chunk, offset within the chunk's permuted
tokens). Loading it recomputes that one chunk and continues on exactly the next token, so a
resumed stream yields the same batches as an uninterrupted one (bit-identical on CPU; on GPU
up to the model's own run-to-run nondeterminism). Batches run across chunk and epoch
boundaries, so every batch is full except possibly the last one when loop=False.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from saekit.data.corpora import TokenizedCorpus, tokenize_corpus
from saekit.data.hooks import HookPair, Which, capture, get_module, is_pair, parse_site
from saekit.data.masking import DEFAULT_MASKING, Masking
from saekit.data.models import describe_model, load_model_cached
from saekit.data.splits import check_split
from saekit.data.stream import Batch, seeded_generator


class ModelStream:
    """ActivationStream over ``contexts`` at ``hookpoint`` of ``model``.

    contexts: a TokenizedCorpus [n_contexts, ctx_len].
    hookpoint: a module path (read at ``which``), or a pair ``SOURCE->TARGET`` whose
      target comes as extras["target"] [batch_size, d_out] (``which`` is then ignored).
    batch_size: tokens per Batch; x is [batch_size, d_in] float32.
    contexts_per_chunk: contexts per shuffle buffer (the buffer holds their masked tokens).
    forward_batch: contexts per model forward.
    masking: which tokens are kept (`saekit.data.masking`; for a pair a token is a norm
      outlier when its source or its target is).
    """

    def __init__(
        self,
        model: nn.Module,
        contexts: TokenizedCorpus,
        hookpoint: str,
        batch_size: int = 4096,
        seed: int = 0,
        contexts_per_chunk: int = 64,
        forward_batch: int = 8,
        which: Which = "output",
        masking: Masking = DEFAULT_MASKING,
        loop: bool = True,
    ):
        if batch_size <= 0 or contexts_per_chunk <= 0 or forward_batch <= 0:
            raise ValueError("batch_size, contexts_per_chunk and forward_batch must be positive")
        self.pair = HookPair.parse(hookpoint) if is_pair(hookpoint) else None
        if self.pair is not None:
            hookpoint, which = str(self.pair), parse_site(self.pair.source)[1]
        else:  # "M:in" is (M, input): describe() records what was read
            hookpoint, which = parse_site(hookpoint, which)
        # The sites captured per forward, source first: their columns are concatenated.
        self.sites = list(self.pair.sites) if self.pair is not None else [hookpoint]
        for site in self.sites:
            get_module(model, site)  # fail early on an unknown name
        self.model, self.contexts, self.hookpoint, self.which = model, contexts, hookpoint, which
        self.batch_size, self.seed = batch_size, seed
        self.contexts_per_chunk, self.forward_batch = contexts_per_chunk, forward_batch
        self.masking = masking
        self.loop = loop
        self.epoch, self.chunk, self.offset = 0, 0, 0
        self._buffer: tuple[tuple[int, int], torch.Tensor] | None = None
        widths = self._widths()
        self.d_in = widths[0]
        self.d_out: int | None = widths[1] if self.pair is not None else None

    @property
    def n_chunks(self) -> int:
        return -(-len(self.contexts) // self.contexts_per_chunk)

    def _widths(self) -> list[int]:
        sample = self.contexts.subset(slice(0, 1))
        device = next(self.model.parameters()).device
        ids, am = sample.input_ids.to(device), sample.attention_mask.to(device)
        acts = capture(self.model, ids, am, self.sites, self.which)
        return [acts[s].shape[-1] for s in self.sites]

    def _tokens(self, epoch: int, chunk: int) -> torch.Tensor:
        """The permuted masked rows of one chunk, as `_capture` returns them: [n, width]."""
        if self._buffer is not None and self._buffer[0] == (epoch, chunk):
            return self._buffer[1]
        order = torch.randperm(len(self.contexts), generator=seeded_generator(self.seed, epoch))
        rows = order[chunk * self.contexts_per_chunk : (chunk + 1) * self.contexts_per_chunk]
        parts = [
            self._capture(self.contexts.subset(rows[i : i + self.forward_batch]))
            for i in range(0, len(rows), self.forward_batch)
        ]
        tokens = torch.cat(parts)
        tokens = tokens[
            torch.randperm(len(tokens), generator=seeded_generator(self.seed, epoch, chunk))
        ]
        self._buffer = ((epoch, chunk), tokens)
        return tokens

    def _capture(self, sub: TokenizedCorpus) -> torch.Tensor:
        """Masked activations of a few contexts: [n, d_in] float32 ([n, d_in + d_out] for a
        pair: source and target columns, split in __iter__). Subclasses that carry more per
        token (gradients) override this and append columns."""
        device = next(self.model.parameters()).device
        ids, am = sub.input_ids.to(device), sub.attention_mask.to(device)
        acts = capture(self.model, ids, am, self.sites, self.which)
        parts = [acts[s].cpu() for s in self.sites]
        mask = self.masking.keep(sub.input_ids, sub.attention_mask, sub.special_ids, parts)
        return torch.cat([p[mask] for p in parts], dim=-1).float()

    def shard(self, rank: int, world_size: int) -> None:
        """Read only chunks rank, rank + W, ... of each epoch's context order (data-parallel
        ranks see disjoint documents). Needs at least W chunks."""
        if self.n_chunks < world_size:
            raise ValueError(
                f"{self.n_chunks} chunk(s) of {self.contexts_per_chunk} contexts for "
                f"{world_size} ranks: use more contexts or fewer ranks"
            )
        self.rank, self.world_size = rank, world_size
        self.chunk = rank

    def _next_chunk(self) -> None:
        rank, world = getattr(self, "rank", 0), getattr(self, "world_size", 1)
        self.chunk, self.offset = self.chunk + world, 0
        if self.chunk >= self.n_chunks:
            self.epoch, self.chunk = self.epoch + 1, rank

    def _done(self) -> bool:
        return self.epoch > 0 and not self.loop  # loop=False: epoch 0 only, like TensorStream

    def __iter__(self) -> Iterator[Batch]:
        empty = 0  # consecutive chunks without a kept token
        while not self._done():
            parts, need = [], self.batch_size
            while need > 0 and not self._done():
                tokens = self._tokens(self.epoch, self.chunk)
                take = tokens[self.offset : self.offset + need]
                parts.append(take)
                need -= len(take)
                self.offset += len(take)
                if self.offset >= len(tokens):
                    empty = empty + 1 if len(tokens) == 0 else 0
                    if empty > self.n_chunks:
                        raise ValueError("no tokens left after masking; check the contexts")
                    self._next_chunk()
            if need < self.batch_size:
                yield self._batch(torch.cat(parts))

    def _batch(self, rows: torch.Tensor) -> Batch:
        if self.d_out is None:
            return Batch(rows)
        return Batch(rows[:, : self.d_in], {"target": rows[:, self.d_in :]})

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "chunk": self.chunk,
            "offset": self.offset,
            "seed": self.seed,
            "contexts_per_chunk": self.contexts_per_chunk,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly; the state's seed and chunk size win over the constructor's."""
        self.seed = int(state.get("seed", self.seed))
        self.contexts_per_chunk = int(state.get("contexts_per_chunk", self.contexts_per_chunk))
        self.epoch, self.chunk, self.offset = (int(state[k]) for k in ("epoch", "chunk", "offset"))
        self._buffer = None

    def describe(self) -> dict[str, Any]:
        out = {
            "source": "model",
            "model": describe_model(self.model),
            "hookpoint": self.hookpoint,
            "which": self.which,
            "corpus": self.contexts.description,
            "n_contexts": len(self.contexts),
            "seed": self.seed,
            "contexts_per_chunk": self.contexts_per_chunk,
            "masking": self.masking.describe(),
        }
        if self.pair is not None:
            out["pair"] = self.pair.describe(self.d_in, self.d_out)
        return out


def default_hookpoint(model: nn.Module) -> str:
    """The middle block of the model's longest ModuleList (the decoder layers)."""
    lists = [(len(m), name) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError("cannot guess a hookpoint (no ModuleList of layers); name one")
    n, name = max(lists)
    return f"{name}.{n // 2}"


def open_model_stream(
    model: str,
    hookpoint: str | None,
    batch_size: int,
    seed: int = 0,
    split: str = "train",
    stream_class: type[ModelStream] = ModelStream,
    *,
    corpus: str = "default",
    n_contexts: int = 2048,
    ctx_len: int = 128,
    **kwargs: Any,
) -> ModelStream:
    """A ModelStream (or ``stream_class``, e.g. the gradient stream) over ``n_contexts``
    contexts of the corpus' train or held-out split, from the model named ``model``
    (`saekit.data.models`, loaded once per process). The hookpoint defaults to the middle
    decoder layer's output, and may be a pair ``SOURCE->TARGET`` (transcoders). kwargs go
    to the stream class."""
    lm, tokenizer = load_model_cached(model)
    contexts = tokenize_corpus(tokenizer, corpus, n_contexts, ctx_len, check_split(split), seed)
    return stream_class(
        lm, contexts, hookpoint or default_hookpoint(lm), batch_size, seed, **kwargs
    )
