"""LLM-free proxies on hand-made activation records, and the records / logit lens on the tiny
model against direct computation."""

import numpy as np
import pytest
import torch
from eval_helpers import HOOKPOINT, corpus, trained_sae
from tiny_model import tiny_model

from saekit.data.corpora import tokenize_corpus
from saekit.data.hooks import capture
from saekit.data.masking import token_mask
from saekit.evaluation.interp import (
    LatentRecords,
    example_window,
    interp_report,
    logit_lens,
    pearson,
    position_correlation,
    quantile_examples,
    record_activations,
    simulate,
    simulator_index,
    simulator_scores,
    token_stats,
    top_examples,
)


def records_from_dense(input_ids, acts, kept=None):
    """LatentRecords from dense activations [n_ctx, ctx_len, n_latents] (test helper)."""
    input_ids = np.asarray(input_ids)
    flat = np.asarray(acts, dtype=np.float32).reshape(-1, np.asarray(acts).shape[-1])
    if kept is None:
        kept = np.ones(input_ids.shape, dtype=bool)
        kept[:, 0] = False
    kept = np.asarray(kept).ravel()
    flat[~kept] = 0
    tok, lat = np.nonzero(flat)
    order = np.lexsort((tok, lat))
    offsets = np.zeros(flat.shape[1] + 1, dtype=np.int64)
    np.cumsum(np.bincount(lat, minlength=flat.shape[1]), out=offsets[1:])
    return LatentRecords(input_ids, kept, tok[order], flat[tok, lat][order], offsets)


IDS = [[5, 6, 5, 7], [5, 6, 7, 7]]
ACTS = np.zeros((2, 4, 3))
ACTS[0, 1, 0] = ACTS[1, 1, 0] = 1.0  # latent 0: token 6
ACTS[0, 3, 1] = ACTS[1, 2, 1] = ACTS[1, 3, 1] = 2.0  # latent 1: token 7
ACTS[1, 0, 2] = 9.0  # latent 2: only on an excluded first position -> dead


def test_records_layout():
    r = records_from_dense(IDS, ACTS)
    assert r.n_latents == 3 and r.n_kept == 6
    assert r.density().tolist() == pytest.approx([2 / 6, 3 / 6, 0])
    tok, val = r.entries(1)
    assert tok.tolist() == [3, 6, 7] and val.tolist() == [2, 2, 2]
    assert r.dense(0).tolist() == [0, 1, 0, 0, 0, 1, 0, 0]


def test_token_lookup_simulator_hand_computed():
    r = records_from_dense(IDS, ACTS)
    scores = simulator_scores(r, [0, 1])
    # train = context 0: table 6 -> 1, 5 -> 0, 7 -> 0 for latent 0; test tokens 6, 7, 7.
    assert scores[0] == {"pearson_r": pytest.approx(1.0), "auc": pytest.approx(1.0)}
    # latent 1: table 7 -> 2 (its only train token 7 at position 3), test 6, 7, 7 -> exact
    assert scores[1]["pearson_r"] == pytest.approx(1.0)


def test_bigram_table_with_back_off():
    ids = [[1, 2, 1, 2, 3, 2, 3, 2]] * 2
    acts = np.zeros((2, 8, 1))
    for c in range(2):
        for p in range(1, 8):
            if ids[c][p] == 2 and ids[c][p - 1] == 1:
                acts[c, p, 0] = 1.0  # fires on "2" only after "1"
    r = records_from_dense(ids, acts)
    index = simulator_index(r)
    truth = r.dense(0)[index.test]
    # (1, 2) and (3, 2) are each seen twice on the train half: the bigram table is exact
    assert simulate(r.dense(0), index, bigrams=True).tolist() == truth.tolist()
    unigram = simulate(r.dense(0), index, bigrams=False)
    assert unigram.tolist() == [0.5, 0, 0.5, 0, 0.5, 0, 0.5]  # token 2's mean over the train half
    assert pearson(unigram, truth) == pytest.approx(np.corrcoef(unigram, truth)[0, 1])
    # with min_count 3 the bigrams back off to the token means
    assert simulate(r.dense(0), index, bigrams=True, min_count=3).tolist() == unigram.tolist()


def test_examples_windows_and_quantiles():
    r = records_from_dense(IDS, ACTS)
    # latent 1 fires (2.0) at flat tokens 3, 6, 7: one example per context, ties in order
    assert top_examples(r, 1, n=5, before=1, after=1) == [
        [0, 3, [[3, 2.0]]],
        [1, 2, [[2, 2.0], [3, 2.0]]],
    ]
    assert example_window(r, 1, 7, before=3, after=0) == [1, 3, [[2, 2.0], [3, 2.0]]]
    qs = quantile_examples(
        r, 1, n_bins=3, per_bin=1, before=0, after=0, rng=np.random.default_rng(0)
    )
    assert len(qs) == 3 and all(q["range"] == [2.0, 2.0] for q in qs)
    assert top_examples(r, 2, 3, 1, 1) == []  # dead


def test_token_stats_position_and_report():
    r = records_from_dense(IDS, ACTS)
    assert token_stats(r, 1) == [(7, 1.0, 3)]
    assert token_stats(r, 2) == []
    pos = np.tile(np.arange(4), 2)[r.kept]
    assert position_correlation(r, 1) == pytest.approx(
        np.corrcoef(np.abs(r.dense(1))[r.kept], pos)[0, 1]
    )
    rep = interp_report(r, [0, 1])
    assert rep["n_latents_scored"] == 2 and rep["frac_dead_on_corpus"] == pytest.approx(1 / 3)
    assert rep["mean_simulator_r"] == pytest.approx(1.0)
    assert rep["mean_single_token_share"] == pytest.approx(1.0)
    assert set(rep["per_latent"]) == {"0", "1"}
    assert np.isnan(pearson(np.ones(3), np.arange(3.0)))


def test_record_activations_match_direct_encoding():
    from saekit.evaluation.evaluate import model_source
    from saekit.formats.native import load

    sae = load(trained_sae())
    model, tok = model_source(sae).load()
    contexts = tokenize_corpus(tok, corpus(), 6, 32, "heldout")
    r = record_activations(sae, model, contexts, HOOKPOINT, batch_size=4)
    act = capture(model, contexts.input_ids, contexts.attention_mask, [HOOKPOINT])[HOOKPOINT]
    mask = token_mask(contexts.input_ids, contexts.attention_mask, contexts.special_ids)
    assert r.kept.tolist() == mask.flatten().tolist()
    codes = sae.encode(act[mask].float())  # [n_kept, n_latents]
    for i in (0, 5, 77):
        torch.testing.assert_close(
            torch.from_numpy(r.dense(i)[r.kept]).float(), codes[:, i], atol=1e-5, rtol=1e-4
        )
    assert r.offsets[-1] == int((codes != 0).sum())
    # the training data's norm-outlier cut, read from the SAE's provenance, drops tokens
    from saekit.data.masking import Masking
    from saekit.evaluation.interp import training_masking
    from saekit.sae.provenance import Provenance

    meta = {"data": {"masking": {"exclude_first": True, "max_norm_factor": 1.0}}}
    assert Provenance.from_metadata(meta).max_norm_factor == 1.0
    assert training_masking(sae).max_norm_factor == Provenance.of(sae).max_norm_factor
    cut = record_activations(sae, model, contexts, HOOKPOINT, masking=Masking(max_norm_factor=1.0))
    norms = act.norm(dim=-1)
    assert 0 < cut.n_kept < r.n_kept and not cut.kept[~mask.flatten()].any()
    median = norms.flatten()[mask.flatten()].median()  # one batch of 6 contexts: one median
    assert norms.flatten()[cut.kept].max() <= median


def test_logit_lens_matches_manual_product():
    model = tiny_model()
    W_dec = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    lens = logit_lens(model, W_dec, [1, 3], top=5)
    gamma = model.model.norm.weight
    logits = (W_dec[3] * gamma) @ model.lm_head.weight.T
    assert [t for t, _ in lens[3]["top"]] == logits.topk(5).indices.tolist()
    assert [t for t, _ in lens[3]["bottom"]] == (-logits).topk(5).indices.tolist()
    assert lens[3]["top"][0][1] == pytest.approx(float(logits.max()), rel=1e-5)
    assert logit_lens(model, torch.randn(2, 7)) is None  # not the residual width


@pytest.mark.slow
def test_real_model_spliced_interp_and_logit_lens():
    """SmolLM2-135M (offline package), a few short contexts: the model-based groups run on a
    real LM, and the logit lens uses its final RMSNorm scale and tied unembedding."""
    import saekit
    from saekit.evaluation.evaluate import EvalSettings, ModelSource, evaluate_sae

    source = ModelSource("default", "model.layers.3")
    model, tok = source.load()
    sae = saekit.create("topk", d_in=576, n_latents=256, k=16)
    gamma = model.model.norm.weight
    lens = logit_lens(model, sae.W_dec, [7], top=5)
    manual = model.get_output_embeddings().weight @ (sae.W_dec[7].detach() * gamma)
    assert [t for t, _ in lens[7]["top"]] == manual.topk(5).indices.tolist()
    settings = EvalSettings(
        groups=("spliced", "interp"),
        spliced_contexts=2,
        ctx_len=32,
        interp_contexts=4,
        interp_latents=8,
    )
    doc = evaluate_sae(sae, None, settings, source=source)
    sp = doc["spliced"]
    assert 1.0 < sp["ce_clean"] < 8.0 and sp["ce_zero_ablation"] > sp["ce_clean"]
    assert sp["n_tokens"] == 2 * 30  # 32 positions − the first − the last, per context
    assert doc["interp"]["n_latents_scored"] == 8
