"""ModelStream: masked tokens straight from a model, chunk shuffle, exact resume."""

import json
from collections import Counter

import pytest
import torch
from tiny_model import TEXTS, tiny_model, tiny_tokenizer

from saekit.data.corpora import tokenize_corpus
from saekit.data.hooks import capture
from saekit.data.masking import token_mask
from saekit.data.model_stream import ModelStream, default_hookpoint
from saekit.data.stream import ActivationStream

DOCS = [f"doc {i}: {TEXTS[i % 8]}" for i in range(120)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def contexts():
    return tokenize_corpus(tiny_tokenizer(), DOCS, 30, ctx_len=16)


def make(model, contexts, **kw):
    kw = {"batch_size": 50, "contexts_per_chunk": 8, "forward_batch": 4, **kw}
    return ModelStream(model, contexts, "model.layers.2", **kw)


def test_one_epoch_is_every_masked_token_once(model, contexts):
    stream = make(model, contexts, loop=False)
    assert isinstance(stream, ActivationStream) and stream.d_in == 32
    got = torch.cat([b.x for b in stream])
    acts = capture(model, contexts.input_ids, contexts.attention_mask, ["model.layers.2"])
    mask = token_mask(contexts.input_ids, contexts.attention_mask, contexts.special_ids)
    want = acts["model.layers.2"][mask]
    assert got.shape == want.shape
    # Same multiset of rows, in a shuffled order.
    assert torch.equal(torch.sort(got.sum(1)).values, torch.sort(want.sum(1)).values)
    assert not torch.equal(got, want)
    assert list(stream) == []  # loop=False: a single epoch


def test_resume_is_exact_across_chunks_and_epochs(model, contexts):
    full = [b.x for _, b in zip(range(24), make(model, contexts))]  # > 2 epochs
    first = make(model, contexts)
    it = iter(first)
    for _ in range(11):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make(model, contexts, seed=123)  # the state's seed wins
    resumed.load_state_dict(state)
    rest = [b.x for _, b in zip(range(13), resumed)]
    assert all(torch.equal(a, b) for a, b in zip(full[11:], rest))
    assert all(len(x) == 50 for x in full)  # batches run across chunk/epoch boundaries


def test_epochs_and_seeds_reshuffle(model, contexts):
    a = torch.cat([b.x for _, b in zip(range(6), make(model, contexts, seed=0))])
    b = torch.cat([b.x for _, b in zip(range(6), make(model, contexts, seed=1))])
    assert not torch.equal(a, b)


def test_default_hookpoint_and_errors(model, contexts):
    assert default_hookpoint(model) == "model.layers.2"
    with pytest.raises(KeyError, match="close matches"):
        ModelStream(model, contexts, "model.layers.7")


def test_data_parallel_ranks_read_disjoint_documents():
    """Rank r reads chunks r, r + W, ...: the ranks' tokens together are one epoch, each once
    (compared as multisets: repeated documents give repeated rows)."""
    model, tok = tiny_model(), tiny_tokenizer()
    contexts = tokenize_corpus(tok, list(TEXTS) * 4, 16, 16, "train")

    def rows(rank=None):
        stream = ModelStream(model, contexts, "model.layers.0", batch_size=32,
                             contexts_per_chunk=4, loop=False)  # fmt: skip
        if rank is not None:
            stream.shard(rank, 2)
        return Counter(tuple(r.tolist()) for b in stream for r in b.x)

    first, second = rows(0), rows(1)
    assert sum(first.values()) > 0 and sum(second.values()) > 0
    assert first + second == rows()
