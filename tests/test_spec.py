"""Data specs (saekit.data.spec): every accepted spelling, its parts, its round trip, and
one-line errors."""

import pytest

from saekit.data import open_stream
from saekit.data.spec import DataSpec, parse_data_spec

PAIR = "model.layers.6.mlp:in->out"


@pytest.mark.parametrize(
    "text, kind, source, hookpoints, split",
    [
        ("synthetic:", "synthetic", "superposition", (), None),
        ("synthetic:tree:rho=0.3,d_in=8", "synthetic", "tree:rho=0.3,d_in=8", (), None),
        ("synthetic:readout#heldout", "synthetic", "readout", (), "heldout"),
        ("model:", "model", "default", (), None),
        ("model:@model.layers.6", "model", "default", ("model.layers.6",), None),
        ("model:gemma3@model.layers.3:in", "model", "gemma3", ("model.layers.3:in",), None),
        ("model:/m/tiny@model.layers.1, model.layers.2", "model", "/m/tiny",
         ("model.layers.1", "model.layers.2"), None),
        (f"model:default@{PAIR}", "model", "default", (PAIR,), None),
        ("model:default@model.layers.5->model.layers.6.mlp:in#train", "model", "default",
         ("model.layers.5->model.layers.6.mlp:in",), "train"),
        ("cache:acts/", "cache", "acts/", (), None),
        ("cache:acts/#train", "cache", "acts/", (), "train"),
        (f"cache:acts/@{PAIR}#heldout", "cache", "acts/", (PAIR,), "heldout"),
        ("cache:acts/@a,b", "cache", "acts/", ("a", "b"), None),
    ],
)  # fmt: skip
def test_accepted_specs_and_their_parts(text, kind, source, hookpoints, split):
    spec = parse_data_spec(text)
    assert spec == DataSpec(kind, source, hookpoints, split)
    assert parse_data_spec(str(spec)) == spec


def test_one_hookpoint_of_several():
    spec = parse_data_spec("cache:acts/@a,b#heldout")
    with pytest.raises(ValueError, match="several hookpoints"):
        _ = spec.hookpoint
    assert str(spec.with_hookpoint("b")) == "cache:acts/@b#heldout"
    assert parse_data_spec("model:x").hookpoint is None


def test_a_cache_directory_named_with_at_and_hash(tmp_path):
    odd = tmp_path / "run@2#3"
    odd.mkdir()
    assert parse_data_spec(f"cache:{odd}") == DataSpec("cache", str(odd))
    assert parse_data_spec(f"cache:{odd}#train") == DataSpec("cache", str(odd), (), "train")
    assert parse_data_spec(f"cache:{odd}@h#train") == DataSpec("cache", str(odd), ("h",), "train")


@pytest.mark.parametrize(
    "text, message",
    [
        ("ftp:x", "unknown data source 'ftp:x'; use synthetic:"),
        ("acts/", "unknown data source"),
        ("cache:", "a cache spec needs a directory"),
        ("cache:#train", "a cache spec needs a directory"),
        ("synthetic:tree@model.layers.1", "synthetic data has no hookpoints"),
        ("cache:acts/#test", "split must be 'train' or 'heldout', got 'test'"),
        ("cache:acts/#eval", "no longer 'eval'"),
        ("model:x@model.layers.1:inp", "the only suffixes are :in and :out"),
        ("model:x@model.layers.1->", "bad hookpoint pair"),
    ],
)
def test_bad_specs_are_one_line_value_errors(text, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_data_spec(text)
    assert "\n" not in str(e.value)


def test_the_spec_split_wins_over_the_callers():
    spec = "synthetic:superposition:n_features=16,d_in=4,k_avg=2"
    train = next(iter(open_stream(spec, 8, seed=1))).x
    held = next(iter(open_stream(spec, 8, seed=1, split="heldout"))).x
    assert not train.equal(held)
    assert next(iter(open_stream(f"{spec}#train", 8, seed=1, split="heldout"))).x.equal(train)
    assert next(iter(open_stream(f"{spec}#heldout", 8, seed=1))).x.equal(held)
