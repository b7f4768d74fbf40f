"""The trainer: exact resume after an interruption, bad data, atomic checkpoints, schedule,
initialisation."""

import json
import math

import pytest
import torch
from train_helpers import InterruptAt

import saekit
from saekit.data.synthetic import SyntheticStream, make_recipe
from saekit.formats import native
from saekit.sae.standardise import standardise
from saekit.training import checkpoint as ckpt
from saekit.training.init import geometric_median, input_scale
from saekit.training.trainer import NonFiniteActivationsError, TrainConfig, Trainer, lr_factor

RECIPE = "superposition:n_features=64,d_in=16,k_avg=3"


def saes():
    return {
        "topk": saekit.create("topk", d_in=16, n_latents=64, k=4),
        "jumprelu": saekit.create("jumprelu", d_in=16, n_latents=64, target_l0=4.0),
        "batchtopk": saekit.create("batchtopk", d_in=16, n_latents=64, k=4),
    }


def config(**kw):
    base = dict(
        steps=40, lr=3e-3, warmup_steps=5, log_every=5, progress_bar=False, dead_window_tokens=1024
    )
    base.update(kw)
    return TrainConfig(**base)


def stream():
    return SyntheticStream(make_recipe(RECIPE, seed=0), batch_size=128, seed=0)


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    full = Trainer(saes(), stream(), config(), tmp_path / "full")
    full.fit()

    # Interrupted during step 23 (2 init batches + 23 training batches read).
    part = Trainer(saes(), InterruptAt(stream(), 25), config(), tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    assert part.step == 23
    resumed = Trainer.resume(tmp_path / "part", stream())
    assert resumed.step == 23
    resumed.fit()

    for name in ("topk", "jumprelu", "batchtopk"):
        a = native.load(tmp_path / "full" / "saes" / name).state_dict()
        b = native.load(tmp_path / "part" / "saes" / name).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for ma, mb in zip(full.members, resumed.members):
        sa, sb = ma.optimizer.state_dict()["state"], mb.optimizer.state_dict()["state"]
        for i in sa:
            assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])
    # The metrics log has no duplicated steps after resuming and matches the full run.
    log_full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    log_part = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r) for r in log_full] == [json.loads(r) for r in log_part]


def test_nan_activations_fail_clearly_without_training_on_them(tmp_path):
    class Poisoned(InterruptAt):
        def __iter__(self):
            for i, batch in enumerate(self.inner):
                if i == self.n:
                    batch.x[3, 2] = float("nan")
                yield batch

    trainer = Trainer(saes(), Poisoned(stream(), 7), config(), tmp_path)
    before = None
    with pytest.raises(
        NonFiniteActivationsError, match=r"NaN/Inf activations .* step 5 \(rows \[3\]\)"
    ):
        trainer.fit()
    before = {n: p.clone() for n, p in trainer.members[0].sae.named_parameters()}
    assert trainer.step == 5
    for n, p in trainer.members[0].sae.named_parameters():
        assert torch.isfinite(p).all() and torch.equal(p, before[n])


def test_checkpoint_write_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, 10, {"w": torch.ones(3), "step": 10})

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 5)  # a partial file, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        ckpt.write_checkpoint(root, 20, {"w": torch.zeros(3), "step": 20})
    latest = ckpt.latest_checkpoint(root)
    assert latest is not None and latest.name == "step-000000010"
    state = ckpt.read_checkpoint(latest)
    assert state["step"] == 10 and torch.equal(state["w"], torch.ones(3))
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]


def test_checkpoint_state_round_trip_keeps_int_keys_and_nesting(tmp_path):
    state = {
        "opt": {
            "state": {0: {"m": torch.arange(3.0)}, 7: {"m": torch.ones(2)}},
            "groups": [{"betas": [0.9, 0.99], "params": [0, 7]}],
        },
        "none": None,
    }
    ckpt.write_checkpoint(tmp_path, 1, state)
    back = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert set(back["opt"]["state"]) == {0, 7}
    assert torch.equal(back["opt"]["state"][7]["m"], torch.ones(2))
    assert back["opt"]["groups"][0]["betas"] == [0.9, 0.99] and back["none"] is None


def test_lr_schedule_warms_up_and_decays_to_zero():
    cfg = TrainConfig(steps=100, warmup_steps=10, decay_fraction=0.2)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(50, cfg) == pytest.approx(1.0)
    assert lr_factor(90, cfg) == pytest.approx(0.5)
    assert lr_factor(100, cfg) == pytest.approx(0.0)


def test_geometric_median_is_robust_and_input_scale_normalises():
    # Collinear points 0, 1, 2, 100 on a line: any point in [1, 2] minimises the sum of
    # distances; Weiszfeld from the mean (25.75) lands inside that interval, far from the mean.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [100.0, 0.0]])
    m = geometric_median(x)
    assert 1.0 - 1e-3 <= float(m[0]) <= 2.0 + 1e-3 and abs(float(m[1])) < 1e-6
    y = torch.randn(500, 9) * 5 + 3
    s = input_scale(y)
    assert float((y * s).norm(dim=-1).mean()) == pytest.approx(math.sqrt(9), rel=1e-5)


def test_trainer_rejects_mismatched_width():
    with pytest.raises(ValueError, match="d_in=8 but the stream has d_in=16"):
        Trainer({"a": saekit.create("topk", d_in=8, n_latents=16, k=2)}, stream(), config())


def test_heldout_fvu_is_logged_and_matches_the_saved_sae(tmp_path):
    from saekit.data import Batch

    heldout = Batch(next(iter(SyntheticStream(make_recipe(RECIPE, seed=0), 512, seed=9))).x, {})
    sae = {"topk": saekit.create("topk", d_in=16, n_latents=64, k=4)}
    Trainer(sae, stream(), config(), tmp_path, heldout=heldout).fit()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert rows[-1]["heldout_fvu"] < rows[0]["heldout_fvu"] < 1.5
    saved = native.load(tmp_path / "saes" / "topk")  # raw units: the scale is folded in
    x = heldout.x
    with torch.no_grad():
        expected = float((saved(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert rows[-1]["heldout_fvu"] == pytest.approx(expected, rel=1e-4)


def test_standardised_sae_is_scale_invariant_and_reloads_identically(tmp_path):
    sae = saekit.create("topk", d_in=16, n_latents=64, k=4, standardise_tokens=True)
    x = torch.randn(32, 16) * 3 + 1
    assert torch.allclose(sae.encode(x), sae.encode(5 * x), atol=1e-5)
    assert torch.allclose(sae(5 * x), 5 * sae(x), atol=1e-4)  # mapped back per token
    trainer = Trainer({"std": sae}, stream(), config(init_b_dec="mean"), tmp_path)
    trainer._initialise()
    sample = torch.cat([b.x for b, _ in zip(stream(), range(2))])
    expected = standardise(sample)[0].mean(0)
    assert torch.allclose(sae.b_dec, expected, atol=1e-6)  # b_dec in standardised units
    assert not torch.allclose(sae.b_dec, sample.mean(0) * trainer.scale, atol=1e-2)
    trainer.fit()
    saved = native.load(tmp_path / "saes" / "std")
    assert saved.cfg.standardise_tokens
    assert saved.metadata["normalisation"]["per_token_standardisation"] is True
    assert torch.equal(saved.encode(x), trainer.export(trainer.members[0]).encode(x))
    with pytest.raises(ValueError, match="not to transcoders"):
        saekit.create("transcoder", d_in=16, n_latents=64, standardise_tokens=True)


def test_train_config_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="option 'steps' must be >= 1, got 0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="option 'init_b_dec' must be one of"):
        TrainConfig(init_b_dec="median")
    assert TrainConfig(init_b_dec="zero").init_b_dec == "zero"
