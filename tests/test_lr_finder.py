"""The learning-rate range test: the loss falls, then diverges; the suggestion lies below the
rate of the lowest loss and the run stops once the loss blows up."""

import pytest

from saekit.data.synthetic import SyntheticStream, make_recipe
from saekit.sae import create
from saekit.training.lr_finder import find_lr


def test_range_test_finds_the_falling_region_and_stops_at_divergence(tmp_path):
    stream = SyntheticStream(
        make_recipe("superposition:d_in=32,n_features=128,k_avg=4"), batch_size=256, seed=0
    )
    sae = create("topk", d_in=32, n_latents=128, k=4)
    result = find_lr(sae, stream, lr_min=1e-5, lr_max=10.0, steps=120)
    best = min(range(len(result.losses)), key=result.losses.__getitem__)
    # the loss at the best rate is well below where it started ...
    assert result.losses[best] < 0.8 * result.losses[0]
    # ... the rates grew geometrically, one per step ...
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-6) and ratios[0] > 1
    # ... an lr of 10 blows up an Adam-trained SAE: the test stopped before the last step
    assert len(result.lrs) < 120 and result.losses[-1] > 2 * result.losses[best]
    assert result.suggested == pytest.approx(result.lrs[best] / 10)
    assert 1e-5 < result.suggested < 1.0
    assert "suggested --lr" in result.summary()
    ax = result.figure().axes[0]
    loss, suggested = ax.lines
    assert list(loss.get_xdata()) == result.lrs and list(loss.get_ydata()) == result.losses
    assert list(suggested.get_xdata()) == [result.suggested] * 2
    assert (ax.get_xscale(), ax.get_xlabel()) == ("log", "learning rate")


def test_range_test_refuses_what_it_cannot_do():
    stream = SyntheticStream(
        make_recipe("superposition:d_in=16,n_features=32,k_avg=2"), batch_size=64, seed=0
    )
    with pytest.raises(ValueError, match="lr_min < lr_max"):
        find_lr(create("topk", d_in=16, n_latents=32, k=2), stream, lr_min=1e-2, lr_max=1e-3)
    with pytest.raises(ValueError, match="without gradients"):
        find_lr(create("itda", d_in=16, n_latents=32), stream)


def test_saekit_train_find_lr_prints_a_suggestion_and_plots(tmp_path, capsys):
    from saekit.cli.main import main

    out = tmp_path / "run"
    spec = "synthetic:superposition:d_in=16,n_features=64,k_avg=3"
    args = ["train", "--data", spec, "--n-latents", "64", "--k", "4", "--out", str(out)]
    assert main([*args, "--find-lr", "40", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "topk: lr range test: 40 steps from 1.0e-06" in printed and "suggested --lr" in printed
    assert "saekit's default --lr for this SAE: 8.5e-03" in printed  # 5.3e-4 / sqrt(64 / 2^14)
    assert (out / "lr_range_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "saes").exists()  # nothing was trained
