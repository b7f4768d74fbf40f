"""The evaluation suite: hand-computed core metrics, the JSON document, group selection and
skipping, model-based groups on the tiny model, and `saekit eval` end to end."""

import json
import math

import pytest
import torch
from eval_helpers import HOOKPOINT, corpus, corpus_texts, model_dir, trained_sae

import saekit
from saekit.data.corpora import tokenize_corpus
from saekit.data.model_stream import ModelStream
from saekit.data.stream import TensorStream
from saekit.evaluation.evaluate import (
    SCHEMA,
    EvalSettings,
    ModelSource,
    _finite_or_none,
    evaluate,
    evaluate_sae,
    model_source,
    saebench_view,
)
from saekit.formats.native import load


def hand_sae():
    """TopK (k=1) with atoms e1, e2 and −(1, 1)/√2, encoder = decoder, no biases."""
    sae = saekit.create("topk", d_in=2, n_latents=3, k=1)
    atoms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-(0.5**0.5), -(0.5**0.5)]])
    with torch.no_grad():
        sae.W_dec.copy_(atoms)
        sae.W_enc.copy_(atoms)
    return sae


X = torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 4.0]])


def test_core_group_hand_computed():
    # codes: [3,0,0], [0,2,0], [0,4,0] -> x̂ = [3,0], [0,2], [0,4]; errors 1, 0, 1.
    doc = evaluate_sae(
        hand_sae(), TensorStream(X, 3, shuffle=False), EvalSettings(groups=("core",), n_tokens=3)
    )
    core = doc["core"]
    centred = 31 - 65 / 3  # Σ‖x‖² − ‖Σx‖²/n
    assert core["fvu"] == pytest.approx(2 / centred)
    assert core["l0"] == 1.0 and core["mse"] == pytest.approx(2 / 3)
    assert core["l2_norm_in"] == pytest.approx((10**0.5 + 2 + 17**0.5) / 3)
    assert core["l2_norm_out"] == pytest.approx(3.0)
    assert core["frac_dead"] == pytest.approx(1 / 3)
    # densities 1/3, 2/3, 0: both alive latents are > 10% dense, so all the mass is "dense"
    assert core["normalized_freq_over_10_percent"] == pytest.approx(1.0)
    # max cosine to another atom: e1 -> 0 (e2), e2 -> 0, a3 -> −1/√2
    assert core["dec_max_cos"] == pytest.approx(-(0.5**0.5) / 3, abs=1e-6)
    assert doc["density"]["n_dead"] == 1 and sum(doc["density"]["counts"]) == 2
    sb = doc["saebench"]["core"]
    assert sb["sparsity"]["l0"] == 1.0
    assert sb["misc_metrics"]["frac_alive"] == pytest.approx(2 / 3)
    assert sb["shrinkage"]["l2_norm_out"] == pytest.approx(3.0)
    assert sb["reconstruction_quality"]["explained_variance"] == core["ev_saebench_v060"]


def test_document_shape_and_strict_json():
    doc = evaluate_sae(
        hand_sae(), TensorStream(X, 3, shuffle=False), EvalSettings(n_tokens=3), name="hand"
    )
    assert doc["schema"] == SCHEMA and doc["schema_version"] == 1
    assert doc["sae"] == {
        "name": "hand",
        "architecture": "topk",
        "d_in": 2,
        "n_latents": 3,
        "config": hand_sae().cfg.to_dict(),
    }
    # default groups: synthetic and spliced do not apply here, and say why
    assert set(doc["skipped"]) == {"synthetic", "spliced"}
    assert "synthetic recipe" in doc["skipped"]["synthetic"]
    assert "adaptive" in doc and doc["adaptive"]["knob"] == "k"
    assert set(doc["timing_s"]) == {"core", "synthetic", "spliced", "adaptive"}
    json.dumps(doc, allow_nan=False)


def test_non_finite_values_become_null():
    assert _finite_or_none({"a": math.nan, "b": [1.0, math.inf], "c": {"d": 2}}) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": 2},
    }


def test_unknown_group_is_rejected():
    with pytest.raises(ValueError, match="unknown metric group"):
        EvalSettings(groups=("core", "bogus"))


def test_saebench_view_maps_spliced_names():
    view = saebench_view(
        {
            "spliced": {
                "ce_loss_score": 0.9,
                "ce_clean": 3.0,
                "ce_spliced": 3.2,
                "ce_zero_ablation": 8.0,
                "kl_div_score": 0.8,
                "kl_spliced": 0.1,
                "kl_zero_ablation": 2.0,
            }
        }
    )
    perf = view["core"]["model_performance_preservation"]
    assert perf == {
        "ce_loss_score": 0.9,
        "ce_loss_with_ablation": 8.0,
        "ce_loss_with_sae": 3.2,
        "ce_loss_without_sae": 3.0,
    }
    assert view["core"]["model_behavior_preservation"]["kl_div_with_sae"] == 0.1


def test_synthetic_evaluate_keeps_the_post_training_contract():
    from saekit.data import open_stream

    spec = "synthetic:superposition:n_features=32,d_in=8,k_avg=2"
    sae = saekit.create("topk", d_in=8, n_latents=32, k=2)
    doc = evaluate(sae, open_stream(spec, batch_size=256, split="heldout"), n_tokens=512)
    assert doc["core"]["n_tokens"] == 512 and "mmcs_gt_to_learned" in doc["synthetic"]
    assert doc["skipped"] == {}


def test_model_source_from_metadata_and_spec():
    sae = hand_sae()
    sae.metadata = {
        "data": {"source": "model", "model": {"name": "m"}, "hookpoint": "h", "which": "input"}
    }
    assert model_source(sae) == ModelSource("m", "h", "input")
    sae.metadata = {
        "data": {"source": "synthetic"},
        "training": {"data_spec": "model:x@model.layers.3"},
    }
    assert model_source(sae) == ModelSource("x", "model.layers.3")
    sae.metadata = {"data": {"source": "synthetic"}}
    assert model_source(sae) is None


def test_model_groups_on_the_tiny_model():
    sae = load(trained_sae())
    source = model_source(sae)
    assert source == ModelSource(str(model_dir()), HOOKPOINT)
    model, tok = source.load()
    stream = ModelStream(model, tokenize_corpus(tok, corpus(), 24, 32, "heldout"), HOOKPOINT, 256)
    settings = EvalSettings(
        groups=("core", "spliced", "adaptive", "afa", "interp"),
        n_tokens=512,
        corpus=corpus(),
        spliced_contexts=6,
        ctx_len=32,
        interp_contexts=24,
        interp_latents=16,
    )
    doc = evaluate_sae(sae, stream, settings)
    assert doc["skipped"] == {}
    sp = doc["spliced"]
    # the definitions, from the raw values in the same document
    assert sp["ce_loss_score"] == pytest.approx(
        (sp["ce_zero_ablation"] - sp["ce_spliced"]) / (sp["ce_zero_ablation"] - sp["ce_clean"])
    )
    assert sp["delta_ce"] == pytest.approx(sp["ce_spliced"] - sp["ce_clean"])
    assert (
        doc["saebench"]["core"]["model_performance_preservation"]["ce_loss_score"]
        == sp["ce_loss_score"]
    )
    ad = doc["adaptive"]
    assert ad["knob"] == "k" and ad["train_value"] == 8
    at_train = [p for p in ad["points"] if p["k"] == 8][0]
    assert at_train["l0"] <= 8 and ad["monotonicity_violations"] >= 0
    assert doc["afa"]["n_tokens"] == 512 and "median_eps_lbo_h" in doc["afa"]
    it = doc["interp"]
    assert it["n_latents_scored"] == 16 and -1 <= it["mean_simulator_r"] <= 1
    assert len(it["per_latent"]) == 16 and "logit_lens_examples" in it
    some = next(iter(it["per_latent"].values()))
    assert "⟦" in some["top_contexts"][0] and some["quantile_contexts"][0]["text"]
    json.dumps(doc, allow_nan=False)


def test_cli_eval_groups_and_table(tmp_path, capsys):
    from saekit.cli.main import main

    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(corpus_texts(1500, seed=3)))
    sae_dir = trained_sae()
    out = tmp_path / "all.json"
    rc = main(
        [
            "eval",
            str(sae_dir),
            "--groups",
            "core,spliced,adaptive",
            "--tokens",
            "512",
            "--corpus",
            str(text),
            "--contexts",
            "4",
            "--ctx-len",
            "32",
            "--out",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    docs = json.loads(out.read_text())
    doc = docs[str(sae_dir)]
    assert {"core", "spliced", "adaptive"} <= set(doc) and doc["skipped"] == {}
    assert doc["data"]["spec"].startswith("model:") and doc["sae"]["path"].endswith("topk")
    table = capsys.readouterr().out
    assert "FVU" in table and "CE score" in table and "topk" in table
    assert main(["eval", str(sae_dir), "--groups", "core,bogus"]) == 2
    assert "unknown metric group" in capsys.readouterr().err
