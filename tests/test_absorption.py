"""The absorption group (first-letter task) on a tiny Llama with a planted letter feature.

The planted model: a word-level tokenizer whose vocabulary is 30 four-letter words per
letter (the template's other words are unknown), and embeddings e_L + noise, e_L the letter's
own dimension; the hookpoint is the embedding, so the letter direction is exactly there. A
hand-built ReLU SAE has one main latent per letter (atom e_L). For 12 words of A the main
latent is switched off and a latent of the word alone, atom (e_A + e_w)/√2, carries the letter
(full absorption); for 10 words of B the main latent fires at half strength and a word latent
carries the other half (absorption fraction ½). Plus the prompt position on a BPE tokenizer,
the formula's branches, skipping without an LM, and the document through `saekit eval`."""

import functools
import json
import math
import string

import numpy as np
import pytest
import torch
from tiny_model import tiny_model, tiny_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import saekit
from saekit.data.hooks import capture
from saekit.evaluation.absorption import (
    SUFFIX,
    WORD,
    absorption_metrics,
    first_letter_task,
    letter_tokens,
    score_words,
    word_positions,
)
from saekit.evaluation.evaluate import EvalSettings, ModelSource, evaluate_sae

WORDS_PER_LETTER = 30
N_ABSORBED, N_PARTIAL = 12, 10  # words of A fully absorbed, of B half absorbed
D = 64  # 26 letter dims, then one per absorbed/partial word, then noise
NOISE_DIMS = slice(56, 64)
HOOKPOINT = "model.embed_tokens"


def words_of(letter: int) -> list[str]:
    """Four-letter words (none of the template's words, which stay unknown)."""
    lower = string.ascii_lowercase
    return [lower[letter] + "".join(lower[(k // 26**i) % 26] for i in range(3))
            for k in range(WORDS_PER_LETTER)]  # fmt: skip


ABSORBED = words_of(0)[:N_ABSORBED]
PARTIAL = words_of(1)[:N_PARTIAL]
OWN_DIM = {w: 26 + i for i, w in enumerate(ABSORBED + PARTIAL)}


@functools.lru_cache(maxsize=1)
def planted() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    words = [w for L in range(26) for w in words_of(L)]
    vocab = {t: i for i, t in enumerate(["[UNK]", "[PAD]", ":", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=D, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                      pad_token_id=1, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    emb = torch.zeros(len(vocab), D)
    emb[:, NOISE_DIMS] = 0.05 * torch.randn(len(vocab), NOISE_DIMS.stop - NOISE_DIMS.start)
    for w in words:
        emb[vocab[w], string.ascii_lowercase.index(w[0])] = 1.0
        if w in OWN_DIM:
            emb[vocab[w], OWN_DIM[w]] = 1.0
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb)
    return model, tokenizer


def planted_sae(absorbing: bool = True):
    """ReLU SAE, 26 main latents then one latent per absorbed/partial word (docstring).
    absorbing=False: main latents read only e_L, word latents only their own dimension."""
    sae = saekit.create("relu", d_in=D, n_latents=26 + len(OWN_DIM))
    enc, dec = torch.zeros(sae.n_latents, D), torch.zeros(sae.n_latents, D)
    for L in range(26):
        enc[L, L] = dec[L, L] = 1.0
    for i, (w, dim) in enumerate(OWN_DIM.items()):
        j, L = 26 + i, string.ascii_lowercase.index(w[0])
        if not absorbing:
            enc[j, dim] = dec[j, dim] = 1.0
            continue
        share = 1.0 if w in ABSORBED else 0.5  # of the letter carried by the word latent
        enc[L, dim] = -share  # the main latent gives way on this word
        atom = torch.zeros(D)
        atom[L], atom[dim] = share, 1.0
        dec[j] = atom / atom.norm()
        enc[j, dim] = atom.norm()  # so that f_j d_j = share e_L + e_w exactly
    with torch.no_grad():
        sae.W_enc.copy_(enc)
        sae.W_dec.copy_(dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@functools.lru_cache(maxsize=1)
def planted_task():
    model, tokenizer = planted()
    return first_letter_task(model, tokenizer, HOOKPOINT, max_words=10_000, n_icl=2, seed=0)


def test_word_token_position_on_the_bpe_tokenizer():
    """On the tiny byte-level BPE tokenizer (letter tokens with and without "Ġ"): each kept
    word sits at its position in the whole prompt, and the task's activation is the one the
    whole prompt gives there."""
    tok, model = tiny_tokenizer(), tiny_model()
    vocab = letter_tokens(tok)
    texts = [t for _, t in vocab]
    assert all(WORD.fullmatch(t) for t in texts) and "<pad>" not in texts
    assert any(t.startswith(" ") for t in texts) and any(not t.startswith(" ") for t in texts)
    task = first_letter_task(model, tok, "model.layers.1", max_words=40, n_icl=3, seed=1)
    assert len(task.words) + task.n_dropped == min(40, len(vocab)) and len(task.words) >= 30
    ids = dict((t, i) for i, t in vocab)
    positions = word_positions(tok, task.prompts, [ids[w] for w in task.words])
    for prompt, word, pos in zip(task.prompts[:8], task.words, positions):
        full = tok(prompt + SUFFIX)["input_ids"]
        assert pos > 0 and full[pos] == ids[word] and tok.decode(full[pos]) == word
        assert prompt.endswith("\n" + word) and prompt.count("\n") == 3
    # the activation at the word is the same with the suffix (the model is causal)
    i = 5
    full = torch.tensor([tok(task.prompts[i] + SUFFIX)["input_ids"]])
    act = capture(model, full, torch.ones_like(full), ["model.layers.1"])["model.layers.1"]
    torch.testing.assert_close(task.x[i], act[0, positions[i]].float())
    # a word whose token is not the one the prompt ends in is dropped ("and" ≠ " and")
    last = len(tok("the\n and")["input_ids"]) - 1
    assert word_positions(tok, ["the\nand", "the\n and"], [ids[" and"]] * 2) == [-1, last]


def test_planted_absorption_is_measured():
    task = planted_task()
    assert task.n_dropped == 0 and len(task.words) == 26 * WORDS_PER_LETTER
    assert task.probe_f1.min() == 1.0  # the letter is one dimension: the probe is exact
    res = absorption_metrics(planted_sae(), task)
    assert res["n_letters_kept"] == 26 and "note" not in res
    letters = res["letters"]
    test_words = np.array(task.words)[task.test]
    a_words = [w for w in test_words if w[0] == "a"]
    b_words = [w for w in test_words if w[0] == "b"]
    absorbed = np.mean([w in ABSORBED for w in a_words])
    partial = np.mean([w in PARTIAL for w in b_words])
    assert 0 < absorbed < 1 and 0 < partial < 1  # the split holds both kinds of word
    a, b = letters["A"], letters["B"]
    assert a["n_words_scored"] == len(a_words) and b["n_words_scored"] == len(b_words)
    assert a["main_latents"] == [0] and b["main_latents"] == [1]
    assert a["absorption_fraction"] == pytest.approx(absorbed)
    assert a["full_absorption_rate"] == pytest.approx(absorbed)
    # each partially absorbed word: m ≈ s ≈ proj/2 (up to the noise), fraction ≈ ½
    assert b["absorption_fraction"] == pytest.approx(0.5 * partial, abs=0.02)
    assert b["full_absorption_rate"] == 0.0
    for letter, row in letters.items():
        assert row["num_split_features"] == 0
        if letter not in "AB":
            assert row["absorption_fraction"] == 0 and row["full_absorption_rate"] == 0
            assert row["main_latents"] == [ord(letter) - ord("A")]
            assert row["sparse_probe_f1"][0] == 1.0
    assert res["mean_absorption_fraction_score"] == pytest.approx(
        (a["absorption_fraction"] + b["absorption_fraction"]) / 26
    )
    assert res["mean_full_absorption_score"] == pytest.approx(absorbed / 26)
    assert res["mean_num_split_features"] == 0


def test_sae_without_absorption_scores_zero():
    res = absorption_metrics(planted_sae(absorbing=False), planted_task())
    assert res["n_letters_kept"] == 26
    assert res["mean_absorption_fraction_score"] == 0
    assert res["mean_full_absorption_score"] == 0
    assert res["mean_num_split_features"] == 0


def test_absorption_fraction_branches():
    """score_words on hand numbers: one latent of the letter (main, index 0) and four others
    with their cosines to û_L."""
    cos = np.array([1.0, 0.5, 0.5, 0.05, 0.5])
    rows = [  # a_j per latent, proj, expected fraction, fully absorbed
        ([1.0, 0.0, 0.0, 0.0, 0.0], 1.0, 0.0, False),  # m ≥ proj
        ([0.5, 0.1, 0.0, 0.9, 0.0], 1.0, 0.0, False),  # s/proj = 0.1 < 0.4 (latent 3: cos < 0.1)
        ([0.0, 0.6, 0.1, 0.0, 0.0], 1.0, 1.0, True),  # m ≤ 0, latent 1 holds 0.6 of proj
        ([0.4, 0.3, 0.2, 0.0, 0.1], 1.0, 0.6 / 1.0, False),  # min(0.6, 0.6) / (0.6 + 0.4)
        ([0.2, 0.3, 0.2, 0.0, 0.0], 1.0, 0.5 / 0.7, False),  # min(s = 0.5, 0.8) / (0.5 + 0.2)
        ([0.0, 0.3, 0.0, 0.0, 0.2], -1.0, 0.0, False),  # proj ≤ 0
        ([0.0, 0.0, 0.0, 0.0, 0.3], 1.0, 0.0, False),  # s = 0.3 < 0.4 proj; a/proj < 0.4
    ]
    a = np.array([r[0] for r in rows])
    proj = np.array([r[1] for r in rows])
    codes = a / cos  # unit atoms: a_j = f_j cos_j
    fraction, full = score_words(proj, a, codes, cos, [0])
    np.testing.assert_allclose(fraction, [r[2] for r in rows])
    assert full.tolist() == [r[3] for r in rows]
    # a signed main latent that fires negatively is not "off": no full absorption
    signed = codes.copy()
    signed[2, 0] = -0.3
    assert not score_words(proj, a, signed, cos, [0])[1][2]


def test_without_a_language_model_the_group_is_skipped():
    doc = evaluate_sae(planted_sae(), None, EvalSettings(groups=("absorption",)))
    assert "absorption" not in doc
    assert "no language model" in doc["skipped"]["absorption"]


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "model"
    model, tokenizer = planted()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_eval_document_and_one_task_for_several_saes(planted_dir):
    source = ModelSource(str(planted_dir), HOOKPOINT)
    settings = EvalSettings(groups=("absorption",), absorption_words=10_000, absorption_icl=2)
    shared: dict = {}
    docs = [evaluate_sae(planted_sae(absorbing), None, settings, source, shared)
            for absorbing in (True, False)]  # fmt: skip
    assert len(shared) == 1  # the words, activations and probe were built once
    task = next(iter(shared.values()))
    assert np.array_equal(task.test, planted_task().test)  # same words, same split
    absorbing, clean = (d["absorption"] for d in docs)
    direct = absorption_metrics(planted_sae(), planted_task())
    for key in ("mean_absorption_fraction_score", "mean_full_absorption_score", "n_words"):
        assert absorbing[key] == pytest.approx(direct[key]), key
    assert absorbing["letters"]["A"] == direct["letters"]["A"]
    assert clean["mean_absorption_fraction_score"] == 0
    assert absorbing["n_words"] == 26 * WORDS_PER_LETTER and absorbing["n_test_words"] > 0
    assert docs[0]["settings"]["absorption_words"] == 10_000 and docs[0]["skipped"] == {}
    json.dumps(docs[0], allow_nan=False)


def test_cli_eval_absorption(planted_dir, tmp_path, capsys):
    from saekit.cli.main import main
    from saekit.formats.native import save

    sae_dir = tmp_path / "sae"
    meta = {"data": {"source": "model", "model": str(planted_dir), "hookpoint": HOOKPOINT}}
    save(planted_sae(), sae_dir, metadata=meta)
    args = ["eval", str(sae_dir), "-g", "absorption", "--absorption-words", "500",
            "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((sae_dir / "eval.json").read_text())
    res = doc["absorption"]
    assert res["n_words"] == 500 and res["settings"]["max_words"] == 500
    assert set(res["letters"]) == set(string.ascii_uppercase)
    assert 0 < res["mean_full_absorption_score"] <= res["mean_absorption_fraction_score"]
    assert not math.isnan(res["probe_test_accuracy"])
    printed = capsys.readouterr().out
    assert "absorption:" in printed and "letters kept" in printed
