"""The evaluation suite: hand-computed core metrics, one pass over a small split, the JSON
document, group selection and skipping, SAEBench names only under SAEBench's convention,
every group on the tiny model, a g-SAE's two inference modes, and `saekit eval` in-process
(tables, report page, a cache without an eval split)."""

import json
import math

import pytest
import torch
from eval_helpers import HOOKPOINT, corpus, corpus_texts, model_dir, trained_sae

import saekit
from saekit.data.corpora import tokenize_corpus
from saekit.data.model_stream import ModelStream
from saekit.data.stream import TensorStream
from saekit.evaluation import tables
from saekit.evaluation.base import GROUPS
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
from saekit.evaluation.metrics import ReconstructionMetrics
from saekit.evaluation.steering_effect import median_token_norm
from saekit.formats.native import load
from saekit.sae.provenance import Provenance


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


def test_core_scores_a_standardised_sae_in_the_input_units():
    """A per-token standardised SAE: core's FVU is that of sae(x) against raw x (decode(codes)
    alone would be in standardised units); the adaptive curve at the trained k agrees with
    the SAE's own loss units, the standardised ones."""
    import saekit
    from saekit.evaluation.adaptive import adaptive_curve

    g = torch.Generator().manual_seed(0)
    x = 5 + 3 * torch.randn(64, 16, generator=g)  # a large per-token mean and scale
    sae = saekit.create("topk", d_in=16, n_latents=32, k=4, standardise_tokens=True)
    doc = evaluate_sae(sae, TensorStream(x, 16, shuffle=False), EvalSettings(groups=("core",)))
    with torch.no_grad():
        err = (x - sae(x)).pow(2).sum()
    assert doc["core"]["fvu"] == pytest.approx(float(err / (x - x.mean(0)).pow(2).sum()), rel=1e-5)
    with torch.no_grad():
        xs = sae.coder_input(x)[0]
        err_std = (xs - sae.decode(sae.encode(x))).pow(2).sum()
    at_k = next(r for r in adaptive_curve(sae, x) if r["value"] == 4)
    assert at_k["fvu"] == pytest.approx(float(err_std / (xs - xs.mean(0)).pow(2).sum()), rel=1e-4)


def test_core_reads_a_small_split_once():
    """A looping stream of 10 tokens asked for 100: 10 tokens, each once (not 100 with
    repeats), the same metrics as those 10 tokens by hand; the stream loops again after."""
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    stream = TensorStream(x, 5, seed=1)  # shuffled, loop=True
    doc = evaluate_sae(hand_sae(), stream, EvalSettings(groups=("core",), n_tokens=100))
    acc = ReconstructionMetrics(3)
    sae = hand_sae()
    with torch.no_grad():
        codes = sae.encode(x)
        acc.update(x, sae.decode(codes), codes)
    want = acc.compute()
    assert doc["core"]["n_tokens"] == 10 and doc["density"]["n_tokens"] == 10
    for key in ("fvu", "l0", "mse", "frac_dead"):
        assert doc["core"][key] == pytest.approx(want[key]), key
    assert stream.loop and len(list(zip(range(5), stream))) == 5


def test_document_shape_and_strict_json():
    doc = evaluate_sae(
        hand_sae(), TensorStream(X, 3, shuffle=False), EvalSettings(n_tokens=3), name="hand"
    )
    assert doc["schema"] == SCHEMA and doc["schema_version"] == 2
    assert doc["sae"] == {
        "name": "hand",
        "architecture": "topk",
        "d_in": 2,
        "n_latents": 3,
        "config": hand_sae().cfg.to_dict(),
    }
    assert doc["settings"]["groups"] == ["core", "synthetic", "spliced", "adaptive"]
    assert doc["settings"]["convention"] == "saekit" and doc["settings"]["n_tokens"] == 3
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


def test_unknown_group_or_convention_is_rejected():
    with pytest.raises(ValueError, match="unknown metric group"):
        EvalSettings(groups=("core", "bogus"))
    with pytest.raises(ValueError, match="unknown spliced convention 'sae_bench'"):
        EvalSettings(convention="sae_bench")


SPLICED = {
    "ce_loss_score": 0.9,
    "ce_clean": 3.0,
    "ce_spliced": 3.2,
    "ce_zero_ablation": 8.0,
    "kl_div_score": 0.8,
    "kl_spliced": 0.1,
    "kl_zero_ablation": 2.0,
}


def test_saebench_names_only_under_saebench_convention():
    ours = saebench_view({"spliced": {**SPLICED, "convention": "saekit"}})
    assert "core" not in ours  # the numbers exist, but not under SAEBench's names
    view = saebench_view({"spliced": {**SPLICED, "convention": "saebench"}})
    assert view["core"]["model_performance_preservation"] == {
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


def test_provenance_and_model_source_from_metadata_and_spec():
    sae = hand_sae()
    sae.metadata = {
        "data": {"source": "model", "model": {"name": "m"}, "hookpoint": "h", "which": "input"},
        "training": {"data_spec": "model:m@h"},
    }
    assert Provenance.of(sae) == Provenance("model", "m", "h", "input", None, "model:m@h")
    assert model_source(sae) == ModelSource("m", "h", "input")
    sae.metadata = {
        "data": {"source": "synthetic"},
        "training": {"data_spec": "model:x@model.layers.3"},
    }
    assert model_source(sae) == ModelSource("x", "model.layers.3")
    sae.metadata = {"data": {"source": "synthetic"}}
    assert model_source(sae) is None
    assert Provenance.from_metadata({"data": "damaged"}) == Provenance()


def tiny_stream(n_contexts=24):
    model, tok = ModelSource(str(model_dir()), HOOKPOINT).load()
    return ModelStream(
        model, tokenize_corpus(tok, corpus(), n_contexts, 32, "heldout"), HOOKPOINT, 256
    )


def test_every_model_group_on_the_tiny_model():
    sae = load(trained_sae())
    source = model_source(sae)
    assert source == ModelSource(str(model_dir()), HOOKPOINT)
    settings = EvalSettings(
        groups=("core", "spliced", "adaptive", "afa", "steering", "interp"),
        n_tokens=512,
        corpus=corpus(),
        spliced_contexts=6,
        ctx_len=32,
        steer_latents=5,
        steer_contexts=4,
        steer_max_position=8,
        interp_contexts=24,
        interp_latents=16,
    )
    doc = evaluate_sae(sae, tiny_stream(), settings)
    assert doc["skipped"] == {}
    core, sp = doc["core"], doc["spliced"]
    # the definitions, from the raw values in the same document
    assert sp["ce_loss_score"] == pytest.approx(
        (sp["ce_zero_ablation"] - sp["ce_spliced"]) / (sp["ce_zero_ablation"] - sp["ce_clean"])
    )
    assert sp["delta_ce"] == pytest.approx(sp["ce_spliced"] - sp["ce_clean"])
    assert sp["convention"] == "saekit" and list(sp["variants"]) == ["sae"]
    assert sp["variants"]["sae"]["ce_spliced"] == sp["ce_spliced"] and 0 < sp["l0"] <= 8
    assert "model_performance_preservation" not in doc["saebench"]["core"]
    # adaptive reads core's tokens (sample_tokens > n_tokens: all of them): at the training
    # k its point is core's own FVU and L0
    ad = doc["adaptive"]
    assert ad["knob"] == "k" and ad["train_value"] == 8 and ad["n_tokens"] == 512
    assert ad["fvu_at_train"] == pytest.approx(core["fvu"], rel=1e-6)
    assert ad["l0_at_train"] == pytest.approx(core["l0"])
    afa = doc["afa"]
    assert afa["n_tokens"] == 512 and len(afa["zf_sample"]["input_norm"]) == 512
    assert afa["median_eps_lbo_width"] < afa["median_eps_lbo_active"]  # p − 1 > h − 1
    st = doc["steering"]
    assert st["n_atoms"] == len(st["latents"]) == 5 and st["n_contexts"] == 4
    ctx = tokenize_corpus(source.load()[1], corpus(), 4, 32, "heldout", 0)
    median = median_token_norm(
        source.load()[0], ctx.input_ids, ctx.attention_mask, HOOKPOINT, "output", ctx.special_ids
    )
    assert st["alpha"] == pytest.approx(0.5 * median)
    it = doc["interp"]
    assert it["n_latents_scored"] == 16 and -1 <= it["mean_simulator_r"] <= 1
    assert len(it["per_latent"]) == 16 and "logit_lens_examples" in it
    some = next(iter(it["per_latent"].values()))
    assert "⟦" in some["top_contexts"][0] and some["quantile_contexts"][0]["text"]
    json.dumps(doc, allow_nan=False)


def test_saebench_convention_replaces_and_scores_every_position():
    sae = load(trained_sae())
    docs = {
        convention: evaluate_sae(
            sae,
            None,
            EvalSettings(
                groups=("spliced",),
                corpus=corpus(),
                spliced_contexts=4,
                ctx_len=32,
                convention=convention,
            ),  # fmt: skip
        )["spliced"]
        for convention in ("saekit", "saebench")
    }
    ours, theirs = docs["saekit"], docs["saebench"]
    assert theirs["n_tokens"] > ours["n_tokens"] and theirs["n_spliced"] > ours["n_spliced"]
    assert theirs["ce_clean"] != ours["ce_clean"]  # position 0's prediction is scored too
    assert "every attended position" in theirs["convention_description"]


def test_gsae_is_spliced_in_both_modes_beside_an_identical_topk():
    """A g-SAE and a TopK SAE with the same weights: the g-SAE's label-free topk mode is the
    TopK SAE exactly (and is what core and the headline report); its gradient mode reads
    the labels and is marked so, in the JSON and in the table."""
    topk = saekit.create("topk", d_in=32, n_latents=64, k=4, seed=1)
    gsae = saekit.create("gsae", d_in=32, n_latents=64, k=4, seed=1, beta=50.0)
    source = ModelSource(str(model_dir()), HOOKPOINT)
    settings = EvalSettings(
        groups=("core", "spliced"), n_tokens=256, corpus=corpus(), spliced_contexts=4, ctx_len=32
    )
    shared: dict = {}
    docs = {
        name: evaluate_sae(sae, tiny_stream(8), settings, source, shared, name)
        for name, sae in (("topk", topk), ("g", gsae))
    }
    g, t = docs["g"], docs["topk"]
    assert g["core"]["inference_mode"] == "topk" and g["core"]["fvu"] == t["core"]["fvu"]
    variants = g["spliced"]["variants"]
    assert list(variants) == ["topk", "gradient"]
    assert variants["gradient"]["label_informed"] and not variants["topk"]["label_informed"]
    for key in ("ce_spliced", "kl_spliced", "fvu", "l0"):
        assert variants["topk"][key] == pytest.approx(t["spliced"][key], rel=1e-6), key
    assert g["spliced"]["ce_spliced"] == variants["topk"]["ce_spliced"]  # the headline
    assert variants["gradient"]["fvu"] != pytest.approx(variants["topk"]["fvu"])
    header, rows = tables.build(tables.spliced_rows(docs), tables.SPLICED)
    by_name = {r[0]: r for r in rows}
    assert set(by_name) == {"topk", "g[topk]", "g[gradient]"}
    assert by_name["g[gradient]"][header.index("mode")] == "gradient (label-informed)"


def test_cli_eval_groups_tables_and_report(tmp_path, capsys):
    from saekit.cli.main import main

    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(corpus_texts(1500, seed=3)))
    sae_dir = trained_sae()
    out = tmp_path / "all.json"
    args = ["eval", str(sae_dir), "-g", "core,spliced,adaptive,afa,steering", "--tokens", "512",
            "--corpus", str(text), "--contexts", "4", "--ctx-len", "32", "--steer-latents", "3",
            "--steer-contexts", "4", "--out", str(out), "--report", str(tmp_path / "r.html"),
            "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(out.read_text())[str(sae_dir)]
    assert {"core", "spliced", "adaptive", "afa", "steering"} <= set(doc) and doc["skipped"] == {}
    assert doc["data"]["spec"].startswith("model:") and doc["data"]["split"] == "heldout"
    assert doc["sae"]["path"].endswith("topk")
    printed = capsys.readouterr().out
    for title in ("summary:", "afa:", "steering:", "adaptive sparsity:"):
        assert title in printed
    assert "CE/KL convention" in printed and "saekit" in printed
    assert "topk: topk_k" in printed  # the adaptive table's row
    figures = sorted(p.stem for p in (tmp_path).glob("r_*.png"))
    assert figures == [f"r_{n}" for n in ("adaptive", "adaptive_budget", "density",
                                          "pareto_ce", "pareto_fvu", "steering", "zf")]  # fmt: skip
    assert main(["eval", str(sae_dir), "--groups", "core,bogus"]) == 2
    assert "unknown metric group" in capsys.readouterr().err


def test_cli_eval_on_a_cache_without_a_heldout_split(tmp_path, capsys):
    from saekit.cli.main import main
    from saekit.data.cache import write_cache

    model, tok = ModelSource(str(model_dir()), HOOKPOINT).load()
    manifest = write_cache(tmp_path / "cache", model, tok, corpus(), [HOOKPOINT], n_tokens=300,
                           heldout_tokens=0, ctx_len=32)  # fmt: skip
    n_train = manifest["hookpoints"][HOOKPOINT]["splits"]["train"]["n_tokens"]
    base = ["eval", str(trained_sae()), "--data", f"cache:{tmp_path / 'cache'}", "-g", "core",
            "--tokens", "5000", "--threads", "1"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a.json")]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "has no held-out split" in err and "train split" in err
    assert f"the split holds {n_train} tokens, each evaluated once" in err
    doc = json.loads((tmp_path / "a.json").read_text())[str(trained_sae())]
    assert doc["data"]["split"] == "train" and doc["core"]["n_tokens"] == n_train == 300
    assert main([*base, "--split", "train", "--out", str(tmp_path / "b.json")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_all_means_every_group():
    from saekit.cli.eval import parse_groups

    assert parse_groups("all") == GROUPS
    assert set(GROUPS) >= {"spliced", "steering", "afa", "adaptive"}


def test_inference_variants_of_a_gsae_saved_in_topk_mode():
    """The gradient variant uses the gradient even when the g-SAE was saved with
    inference="topk" (its plain encode), and leaves that SAE's config alone."""
    from saekit.evaluation.base import inference_variants

    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(16, 8, generator=gen), 10 * torch.randn(16, 8, generator=gen)
    trained = saekit.create("gsae", d_in=8, n_latents=32, k=2, seed=2, beta=5.0)
    saved = saekit.create("gsae", d_in=8, n_latents=32, k=2, seed=2, beta=5.0, inference="topk")
    topk, gradient = inference_variants(saved)
    with torch.no_grad():
        assert torch.equal(gradient.reconstruct(x, g)[1], trained.encode(x, extras={"grad": g}))
        assert torch.equal(topk.reconstruct(x)[1], saved.encode(x))
    assert saved.cfg.inference == "topk" and gradient.label_informed
    assert [v.name for v in inference_variants(saekit.create("relu", d_in=8, n_latents=4))] == [
        "sae"
    ]
