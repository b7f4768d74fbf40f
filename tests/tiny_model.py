"""Shared test fixtures: a tiny randomly initialised Llama and a small trained BPE tokenizer.

Both are real `transformers` objects (no download, no mocks), built in well under a second.
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<unk>", "<bos>", "<eos>", "<pad>"]

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders decompose activations into features.",
    "A cache of activations makes training fast and repeatable.",
    "Tokens are grouped into contexts of a fixed length.",
    "Every model has layers, and every layer has an output.",
    "Numbers like 12, 345 and 6789 appear in text too.",
    "Held-out documents are never used for training.",
    "The residual stream grows in norm with depth.",
] * 4

N_LAYERS = 4
D_MODEL = 32


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~300 tokens) that, like SmolLM2, adds no BOS by itself."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )


def tiny_model(seed: int = 0, n_layers: int = N_LAYERS) -> LlamaForCausalLM:
    """A 4-layer, d=32 Llama with random weights, frozen and in eval mode."""
    cfg = LlamaConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_batch(
    batch: int = 3, seq: int = 16, seed: int = 0, vocab: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids [batch, seq] (no special ids) and an all-ones attention mask."""
    vocab = vocab or len(tiny_tokenizer())
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), vocab, (batch, seq), generator=gen)
    return ids, torch.ones_like(ids)
