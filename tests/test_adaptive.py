"""Adaptive-sparsity curves (saekit/evaluation/adaptive.py): one-pass curves equal to
encode + decode, their shapes, the summary fields and table, and the group via `saekit eval`."""

import json

import pytest
import torch

from saekit.data.synthetic import SyntheticStream, make_recipe
from saekit.evaluation import tables
from saekit.evaluation.adaptive import adaptive_curve, adaptive_report, settings_for
from saekit.evaluation.base import Skip
from saekit.formats import native
from saekit.sae import create
from saekit.training.trainer import TrainConfig, Trainer

RECIPE = "superposition:n_features=96,d_in=24,k_avg=4"


def steps_of(sae, x, **knobs):
    """(codes, pursuit steps per token)."""
    codes, stats = sae.encode_with_stats(x, **knobs)
    return codes, stats["pursuit_steps"]


@pytest.fixture(scope="module")
def trained():
    """MP-SAE (T = 4), TopK (k = 4) and BatchTopK (k = 4) trained together for 250 steps on a
    small superposition toy, exported to raw units; plus held-out x [2048, 24]."""
    recipe = make_recipe(RECIPE, seed=0)
    saes = {
        "mpsae": create("mpsae", d_in=24, n_latents=96, n_steps=4),
        "topk": create("topk", d_in=24, n_latents=96, k=4),
        "batchtopk": create("batchtopk", d_in=24, n_latents=96, k=4),
    }
    cfg = TrainConfig(steps=250, lr=1e-2, dead_window_tokens=20_000, progress_bar=False)
    trainer = Trainer(saes, SyntheticStream(recipe, 256, seed=0), cfg)
    trainer.fit()
    x, _ = recipe.sample(2048, torch.Generator().manual_seed(5))
    return {m.name: trainer.export(m) for m in trainer.members}, x


def by_setting(points, name):
    return sorted((p for p in points if p["setting"] == name), key=lambda p: p["value"])


def test_mp_error_is_monotone_and_extrapolates(trained):
    saes, x = trained
    rep = adaptive_report(saes["mpsae"], x)
    assert rep["knob"] == "n_steps" and rep["train_value"] == 4
    for name in ("mp_steps", "mp_threshold"):
        curve = rep["curves"][name]
        fvu = [p["fvu"] for p in curve["points"]]
        assert [p["n_steps"] for p in curve["points"]] == list(range(1, 17))
        assert curve["monotonicity_violations"] == 0
        assert all(b <= a for a, b in zip(fvu, fvu[1:]))
        assert curve["extrapolation_gain"] > 0.01  # error keeps falling past the training T
    steps = rep["curves"]["mp_steps"]
    assert steps["fvu_at_train"] < 0.15 and steps["fvu_at_4x"] < 0.3 * steps["fvu_at_train"]
    assert steps["points"][0]["l0"] == 1.0 and steps["l0_at_train"] <= 4.0
    # The residual stop ends tokens early: fewer atoms than the fixed-step curve at 4T.
    thr = rep["curves"]["mp_threshold"]
    assert 0 < thr["relative_threshold"] < 1
    assert thr["l0_at_4x"] < 0.6 * steps["l0_at_4x"]


def test_curves_equal_encode_then_decode(trained):
    """The one-pass curves are what encode(x, n_steps=t / k=k) + decode give."""
    saes, x = trained
    centred = (x.double() - x.double().mean(0)).pow(2).sum()
    mp, topk = saes["mpsae"], saes["topk"]
    points = adaptive_curve(mp, x, relative_threshold=0.05)
    with torch.no_grad():
        for t in (1, 3, 4, 9, 16):
            codes = mp.encode(x, n_steps=t, residual_threshold=0.0, relative_threshold=0.0)
            p = by_setting(points, "mp_steps")[t - 1]
            fvu = float((x - mp.decode(codes)).double().pow(2).sum() / centred)
            assert p["fvu"] == pytest.approx(fvu, rel=1e-5)
            assert p["l0"] == pytest.approx(float((codes != 0).sum(1).double().mean()))
            codes, steps = steps_of(mp, x, n_steps=t, relative_threshold=0.05)
            p = by_setting(points, "mp_threshold")[t - 1]
            assert p["steps"] == pytest.approx(float(steps.double().mean()), abs=2e-3)
            fvu = float((x - mp.decode(codes)).double().pow(2).sum() / centred)
            assert p["fvu"] == pytest.approx(fvu, rel=1e-3)
        points = adaptive_curve(topk, x)
        for k in (1, 4, 16):
            codes = topk.encode(x, k=k)
            p = by_setting(points, "topk_k")[k - 1]
            fvu = float((x - topk.decode(codes)).double().pow(2).sum() / centred)
            assert p["fvu"] == pytest.approx(fvu, rel=1e-5)


def test_topk_curve_shape(trained):
    """TopK improves up to about its training k, then degrades as k grows (the paper's
    finding), unlike MP; BatchTopK gets both a per-token k and a threshold curve."""
    saes, x = trained
    rep = adaptive_report(saes["topk"], x)
    curve = rep["curves"]["topk_k"]
    fvu = {p["k"]: p["fvu"] for p in curve["points"]}
    assert rep["knob"] == "k" and set(fvu) == set(range(1, 17))
    best = min(fvu, key=fvu.get)
    assert 3 <= best <= 8
    assert fvu[1] > 2 * fvu[4] and fvu[16] > 1.3 * fvu[best]
    assert curve["monotonicity_violations"] >= 5
    btk = adaptive_report(saes["batchtopk"], x)
    assert btk["knob"] == "threshold_divisor" and set(btk["curves"]) == {"topk_k", "threshold"}
    l0 = [p["l0"] for p in btk["points"]]
    assert l0 == sorted(l0) and l0[0] < 1 < 12 < l0[-1]  # θ/v with v = 1/4 … 16
    assert btk["l0_at_train"] == pytest.approx(4.0, abs=0.5)


def test_report_fields_and_table(trained):
    saes, x = trained
    reps = {name: adaptive_report(sae, x[:512]) for name, sae in saes.items()}
    for rep in reps.values():
        for key in ("knob", "train_value", "points", "fvu_at_train", "ev_at_train",
                    "extrapolation_gain", "monotonicity_violations", "normalised_area_fvu",
                    "n_tokens", "curves"):  # fmt: skip
            assert key in rep
        assert rep["ev_at_train"] == pytest.approx(1 - rep["fvu_at_train"])
        for p in rep["points"]:
            assert {"setting", "value", "l0", "fvu", "ev", "mse", rep["knob"]} <= set(p)
        json.dumps(rep, allow_nan=False)
    docs = {name: {"adaptive": rep} for name, rep in reps.items()}
    header, rows = tables.build(tables.adaptive_rows(docs), tables.ADAPTIVE, "SAE: setting")
    by_name = {r[0]: dict(zip(header, r)) for r in rows}
    assert list(by_name) == ["mpsae: mp_steps", "mpsae: mp_threshold", "topk: topk_k",
                             "batchtopk: topk_k", "batchtopk: threshold"]  # fmt: skip
    assert by_name["mpsae: mp_steps"]["train"] == "T4" and by_name["mpsae: mp_steps"]["stop"] == "–"
    tau = reps["mpsae"]["curves"]["mp_threshold"]["relative_threshold"]
    assert by_name["mpsae: mp_threshold"]["stop"] == f"τ_rel={tau:.3g}"
    assert by_name["batchtopk: threshold"]["train"] == "θ/1"
    fvu = reps["topk"]["curves"]["topk_k"]["fvu_at_2x"]
    assert by_name["topk: topk_k"]["FVU @2×"] == f"{fvu:.4f}"


def test_jumprelu_threshold_sweep():
    sae = create("jumprelu", d_in=8, n_latents=64, init_threshold=0.3, seed=1)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(2))
    rep = adaptive_report(sae, x)
    assert rep["knob"] == "threshold_divisor" and list(rep["curves"]) == ["threshold"]
    l0 = {p["threshold_divisor"]: p["l0"] for p in rep["points"]}
    with torch.no_grad():
        assert l0[1.0] == pytest.approx(float((sae.encode(x) != 0).sum(1).double().mean()))
    assert l0[0.25] < l0[1.0] < l0[16.0]


def test_relu_has_no_knob():
    relu = create("relu", d_in=8, n_latents=16)
    assert settings_for(relu) == [] and adaptive_curve(relu, torch.randn(4, 8)) == []
    with pytest.raises(Skip, match="no inference sparsity knob"):
        adaptive_report(relu, torch.randn(4, 8))


def test_adaptive_group_through_saekit_eval(trained, tmp_path, capsys):
    from saekit.cli.main import main

    saes, _ = trained
    dirs = [str(native.save(saes[name], tmp_path / name)) for name in ("mpsae", "topk")]
    out = tmp_path / "all.json"
    args = ["eval", *dirs, "--data", f"synthetic:{RECIPE}", "-g", "core,adaptive", "--tokens",
            "1000", "--out", str(out), "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    docs = json.loads(out.read_text())
    mp = docs[dirs[0]]["adaptive"]
    assert mp["n_tokens"] == 1000 and mp["curves"]["mp_steps"]["monotonicity_violations"] == 0
    assert docs[dirs[1]]["adaptive"]["knob"] == "k"
    printed = capsys.readouterr().out
    assert "adaptive sparsity:" in printed and "topk: topk_k" in printed
