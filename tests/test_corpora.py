"""Corpora: seeded order, document-level held-out split, file formats, tokenisation."""

import importlib.util
import json
import sys

import pytest
import torch
from tiny_model import tiny_tokenizer

from saekit.data.corpora import (
    FileCorpus,
    SaeProbesCorpus,
    TextListCorpus,
    is_heldout,
    iter_context_batches,
    open_corpus,
    tokenize_corpus,
)

TEXTS = [f"Document {i} talks about topic {i % 7} and number {i * 13}." for i in range(400)]


def ids(corpus, split="train", seed=0):
    return [d.doc_id for d in corpus.documents(split, seed)]


def test_order_is_seeded_and_split_is_disjoint():
    corpus = TextListCorpus(TEXTS, heldout_fraction=0.25)
    assert ids(corpus) == ids(corpus)
    assert ids(corpus, seed=1) != ids(corpus)
    train, held = set(ids(corpus)), set(ids(corpus, "heldout"))
    assert train.isdisjoint(held)
    assert train | held == set(range(len(TEXTS)))
    assert 0.15 < len(held) / len(TEXTS) < 0.35
    # Membership depends on the text only: the same for any seed or corpus.
    assert set(ids(corpus, "heldout", seed=5)) == held
    assert held == {i for i, t in enumerate(TEXTS) if is_heldout(t, 0.25)}
    with pytest.raises(ValueError, match="no longer 'eval'"):
        ids(corpus, "eval")


def test_duplicates_never_cross_the_split():
    texts = TEXTS[:50] * 2  # every text twice under different ids
    corpus = TextListCorpus(texts, heldout_fraction=0.3)
    train = [texts[i] for i in ids(corpus)]
    held = [texts[i] for i in ids(corpus, "heldout")]
    assert len(train) == len(set(train)) and set(train).isdisjoint(held)
    assert len(train) + len(held) == 50


def test_file_corpus_txt_jsonl_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond one\n\n\nthird\n")
    rows = [{"text": f"json doc {i}", "id": i} for i in range(5)]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    corpus = FileCorpus(tmp_path, heldout_fraction=0.0)
    texts = sorted(d.text for d in corpus.documents("train"))
    assert texts == sorted(
        ["first paragraph\nstill first", "second one", "third"] + [r["text"] for r in rows]
    )
    a, b = ids(corpus), ids(corpus, seed=3)
    assert a == ids(corpus) and a != b and sorted(a) == sorted(b)
    assert {i >> 32 for i in a} == {0, 1}  # doc_id = (file index << 32) | document index
    with pytest.raises(KeyError, match="content"):
        list(FileCorpus(tmp_path / "b.jsonl", text_field="content").documents())
    (tmp_path / "c.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        FileCorpus(tmp_path / "c.csv")
    with pytest.raises(FileNotFoundError):
        FileCorpus(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="unknown corpus"):
        open_corpus("no-such-corpus")


def test_hf_corpus_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install datasets"):
        open_corpus("hf:some/dataset")


def test_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["one doc", "two doc", None]}), tmp_path / "d.parquet")
    texts = [d.text for d in FileCorpus(tmp_path, heldout_fraction=0.0).documents()]
    assert sorted(texts) == ["one doc", "two doc"]


def test_tokenize_packed_contexts_are_deterministic_prefixes():
    tok = tiny_tokenizer()
    corpus = TextListCorpus(TEXTS)
    a = tokenize_corpus(tok, corpus, 20, ctx_len=16, seed=3)
    b = tokenize_corpus(tok, corpus, 10, ctx_len=16, seed=3)
    c = tokenize_corpus(tok, corpus, 20, ctx_len=16, seed=4)
    assert a.input_ids.shape == (20, 16) and a.attention_mask.all()  # packing: no padding
    assert torch.equal(a.input_ids[:10], b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    # Separators and only separators carry doc id -1; text tokens decode back to their doc.
    eos = tok.eos_token_id
    assert torch.equal(a.doc_ids == -1, a.input_ids == eos)
    flat_ids, flat_docs = a.input_ids.flatten(), a.doc_ids.flatten()
    first_doc = int(flat_docs[0])
    text = tok.decode(flat_ids[flat_docs == first_doc])
    assert text == TEXTS[first_doc]
    batches = list(iter_context_batches(tok, corpus, 6, ctx_len=16, seed=3))
    assert torch.equal(torch.cat([x.input_ids for x in batches])[:20], a.input_ids)


def test_heldout_contexts_use_heldout_documents_only():
    tok = tiny_tokenizer()
    corpus = TextListCorpus(TEXTS, heldout_fraction=0.2)
    train = tokenize_corpus(tok, corpus, 40, ctx_len=16)
    held = tokenize_corpus(tok, corpus, 10, ctx_len=16, split="heldout")
    train_docs = set(train.doc_ids.unique().tolist()) - {-1}
    held_docs = set(held.doc_ids.unique().tolist()) - {-1}
    assert held_docs and train_docs.isdisjoint(held_docs)
    assert all(is_heldout(TEXTS[d], 0.2) for d in held_docs)


def test_unpacked_padding_and_bos():
    tok = tiny_tokenizer()
    corpus = TextListCorpus(["short", "a much longer document " * 10])
    out = tokenize_corpus(tok, corpus, 2, ctx_len=12, packing=False, prepend_bos=True)
    assert (out.input_ids[:, 0] == tok.bos_token_id).all()
    assert (out.doc_ids[:, 0] == -1).all()
    lengths = out.attention_mask.sum(1).sort().values.tolist()
    assert lengths[1] == 12 and lengths[0] < 12  # truncated vs padded
    pad_rows = out.attention_mask == 0
    assert (out.input_ids[pad_rows] == tok.pad_token_id).all()
    assert tok.bos_token_id in out.special_ids and tok.pad_token_id in out.special_ids
    with pytest.warns(UserWarning, match="ran out"):
        assert len(tokenize_corpus(tok, corpus, 5, ctx_len=12, packing=False)) == 2


@pytest.mark.skipif(importlib.util.find_spec("sae_probes") is None, reason="sae-probes data")
def test_default_corpus_is_mixed_deterministic_and_split():
    corpus = SaeProbesCorpus()
    first = [d for _, d in zip(range(60), corpus.documents("train", seed=0))]
    again = [d for _, d in zip(range(60), corpus.documents("train", seed=0))]
    assert [d.doc_id for d in first] == [d.doc_id for d in again]
    assert len({d.doc_id >> 32 for d in first}) == len(corpus.datasets)  # every source early
    held = [d for _, d in zip(range(30), corpus.documents("heldout", seed=0))]
    assert all(is_heldout(d.text, corpus.heldout_fraction) for d in held)
    assert not any(is_heldout(d.text, corpus.heldout_fraction) for d in first)
    assert {d.doc_id for d in held}.isdisjoint(d.doc_id for d in first)
