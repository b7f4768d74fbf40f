"""Hook capture on a tiny random Llama: exact agreement with output_hidden_states, early stop,
inputs, tuple outputs, replacing activations, token masks and errors."""

import pytest
import torch
from tiny_model import D_MODEL, N_LAYERS, random_batch, tiny_model, tiny_tokenizer

from saekit.data.hooks import (
    capture,
    get_module,
    hook_sites,
    list_hookpoints,
)
from saekit.data.masking import Masking, predictions, token_mask


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _hidden_states(model, ids, am):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states


def test_capture_equals_output_hidden_states(model):
    ids, am = random_batch(3, 16)
    am[1, 12:] = 0  # some right padding
    layers = [f"model.layers.{i}" for i in range(N_LAYERS - 1)]  # the last entry is post-norm
    acts = capture(model, ids, am, layers)
    hs = _hidden_states(model, ids, am)
    for i, name in enumerate(layers):
        assert acts[name].shape == (3, 16, D_MODEL)
        assert torch.equal(acts[name], hs[i + 1])  # hidden_states[L + 1] = output of layer L


def test_capture_inputs_equal_previous_outputs(model):
    ids, am = random_batch(2, 12)
    acts = capture(model, ids, am, ["model.layers.0", "model.layers.2"], which="input")
    hs = _hidden_states(model, ids, am)
    assert torch.equal(acts["model.layers.0"], hs[0])  # embeddings
    assert torch.equal(acts["model.layers.2"], hs[2])


def test_sites_choose_input_or_output_per_hookpoint(model):
    ids, am = random_batch(2, 12)
    sites = ["model.layers.0:in", "model.layers.2:out", "model.layers.1"]
    acts = capture(model, ids, am, sites, which="input")  # the bare name reads its input
    hs = _hidden_states(model, ids, am)
    assert torch.equal(acts["model.layers.0:in"], hs[0])
    assert torch.equal(acts["model.layers.2:out"], hs[3])
    assert torch.equal(acts["model.layers.1"], hs[1])
    with pytest.raises(ValueError, match="the only suffixes are :in and :out"):
        capture(model, ids, am, ["model.layers.0:inp"])
    with pytest.raises(ValueError, match="unknown hookpoint 'model.layers.9'"):
        capture(model, ids, am, ["model.layers.9:in"])  # a KeyError that is a ValueError too


def test_early_stop_skips_later_layers_with_same_values(model):
    ids, am = random_batch(2, 10)
    calls = []
    handles = [
        get_module(model, f"model.layers.{i}").register_forward_hook(
            lambda *_, i=i: calls.append(i)
        )
        for i in range(N_LAYERS)
    ]
    handles.append(model.lm_head.register_forward_hook(lambda *_: calls.append("lm_head")))
    try:
        # Requested out of execution order: the stop waits for the later one.
        acts = capture(model, ids, am, ["model.layers.1", "model.layers.0"])
        assert calls == [0, 1]
        calls.clear()
        hs = _hidden_states(model, ids, am)
        assert calls == [0, 1, 2, 3, "lm_head"]
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(acts["model.layers.1"], hs[2])
    assert torch.equal(acts["model.layers.0"], hs[1])


def test_tuple_output_and_hook_cleanup(model):
    ids, am = random_batch(2, 8)
    n_hooks = sum(len(m._forward_hooks) for m in model.modules())
    acts = capture(model, ids, am, ["model.layers.1.self_attn", "model.layers.1.mlp.up_proj"])
    assert acts["model.layers.1.self_attn"].shape == (2, 8, D_MODEL)  # first tuple element
    assert acts["model.layers.1.mlp.up_proj"].shape == (2, 8, 64)
    assert sum(len(m._forward_hooks) for m in model.modules()) == n_hooks


def test_hook_sites_replace_an_output_or_an_input_alike(model):
    ids, am = random_batch(2, 8)

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = n_hooks()
    halve = lambda x: x / 2  # noqa: E731

    def logits(fns, which="output"):
        with torch.no_grad(), hook_sites(model, fns, which):
            return model(input_ids=ids, attention_mask=am).logits

    # Layer 1's output is layer 2's input: halving either gives the same forward.
    by_output = logits({"model.layers.1": halve})
    assert torch.equal(logits({"model.layers.2": halve}, which="input"), by_output)
    assert torch.equal(logits({"model.layers.2:in": halve}), by_output)
    assert not torch.allclose(logits({}), by_output)
    seen = {}
    logits({"model.layers.1": halve, "model.layers.2:in": lambda x: seen.setdefault("x", x)})
    assert torch.equal(seen["x"], _hidden_states(model, ids, am)[2] / 2)  # read after the change
    with pytest.raises(TypeError, match="cannot replace the output of 'model'"):
        logits({"model": halve})  # a ModelOutput can be read, not replaced
    assert n_hooks() == before


def test_list_hookpoints_widths(model):
    widths = dict(list_hookpoints(model))
    assert widths["model.layers.0"] == D_MODEL
    assert widths["model.layers.3.mlp.up_proj"] == 64
    assert widths["model.layers.0.self_attn.k_proj"] == 16  # 2 KV heads x head_dim 8
    assert widths["lm_head"] == len(tiny_tokenizer())
    assert "" not in widths and "model.layers" not in widths  # ModuleList has no output


def test_unknown_hookpoint_lists_close_matches(model):
    ids, am = random_batch(1, 4)
    with pytest.raises(KeyError, match="model.layers.1"):
        capture(model, ids, am, ["model.layer.1"])
    with pytest.raises(ValueError, match="which"):
        capture(model, ids, am, ["model.layers.1"], which="middle")


def test_non_finite_activations_raise():
    broken = tiny_model()
    broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    ids, am = random_batch(1, 6)
    with pytest.raises(FloatingPointError, match="model.layers.1"):
        capture(broken, ids, am, ["model.layers.1"])


def test_token_mask_padding_specials_first_and_outliers():
    ids = torch.tensor([[5, 6, 7, 8, 9], [3, 3, 1, 6, 7]])  # row 1: left padding, then BOS
    am = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    keep = token_mask(ids, am, special_ids=(1, 3))
    assert keep.tolist() == [[False, True, True, True, True], [False, False, False, True, True]]
    keep = token_mask(ids, am, special_ids=(), exclude_first=False)
    assert keep.tolist() == [[True] * 5, [False, False, True, True, True]]
    acts = torch.ones(2, 5, 4)
    acts[0, 3] *= 100  # one massive token
    keep = token_mask(ids, am, (1, 3), activations=acts, max_norm_factor=10.0)
    assert keep.tolist() == [[False, True, True, False, True], [False, False, False, True, True]]


def test_masking_of_a_pair_and_the_counted_predictions():
    ids = torch.tensor([[5, 6, 7, 2, 9, 8], [5, 6, 7, 8, 3, 3]])  # 2 = EOS, 3 = padding
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    source, target = torch.ones(2, 6, 4), torch.ones(2, 6, 4)
    source[0, 1] *= 100  # an outlier of the source
    target[1, 2] *= 100  # and one of the target: each drops the token from both
    keep = Masking(max_norm_factor=10.0).keep(ids, am, (2, 3), [source, target])
    assert keep.tolist() == [[0, 0, 1, 0, 1, 1], [0, 1, 0, 1, 0, 0]]
    # predictions at kept tokens whose next token is attended; the last position has none
    base = Masking().keep(ids, am, (2, 3))
    assert predictions(base, am).tolist() == [[0, 1, 1, 0, 1, 0], [0, 1, 1, 0, 0, 0]]
