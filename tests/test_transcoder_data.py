"""Transcoder data on the tiny Llama: a hookpoint pair SOURCE->TARGET captured in one forward
(the target IS the MLP output), streamed, cached with exact resume, and scored by replacing
the MLP in the forward; spec errors are one line."""

import copy
import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_model import N_LAYERS, TEXTS, random_batch, tiny_model, tiny_tokenizer
from torch import nn

from saekit.data import open_stream
from saekit.data.cache import CacheError, CacheStream, load_manifest, read_cache, write_cache
from saekit.data.corpora import TextListCorpus, tokenize_corpus
from saekit.data.hooks import (
    HookPair,
    UnknownHookpoint,
    canonical_hookpoint,
    capture,
    get_module,
)
from saekit.data.masking import Masking, token_mask
from saekit.data.model_stream import ModelStream
from saekit.evaluation.evaluate import EvalSettings, ModelSource, evaluate_sae, model_source
from saekit.evaluation.spliced import estimate_mean_activation, spliced_metrics
from saekit.sae import create

MLP = "model.layers.1.mlp"
PAIR = f"{MLP}:in->out"
DOCS = [f"doc {i}: {TEXTS[i % 8]} {TEXTS[(i * 3) % 8]}" for i in range(200)]
CORPUS = TextListCorpus(DOCS, heldout_fraction=0.2)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def contexts():
    return tokenize_corpus(tiny_tokenizer(), CORPUS, 24, 16, "train")


def copy_transcoder(linear: nn.Linear):
    """saekit's TopK transcoder made an exact copy of a linear map y = x W^T + b: W_enc =
    [I; -I] (2 d_in latents, all kept: k = n_latents), so the codes are ReLU([x; -x]), and
    W_dec = [W^T; -W^T], b_dec = b give codes @ W_dec + b_dec = x W^T + b."""
    d, w = linear.in_features, linear.weight.detach().float()
    b = linear.bias.detach().float() if linear.bias is not None else torch.zeros(len(w))
    sae = create("transcoder", d_in=d, n_latents=2 * d, d_out=len(w), k=2 * d, transcode=True)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.cat([w.T, -w.T]))
        sae.b_dec.copy_(b)
    assert sae.is_transcoder
    return sae.eval()


def seeded_linear(d_in, d_out, seed, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.weight.copy_(scale * torch.randn(d_out, d_in, generator=gen))
        lin.bias.copy_(0.1 * torch.randn(d_out, generator=gen))
    return lin.requires_grad_(False)


# ---- the pair spec -----------------------------------------------------------------------


def test_pair_spellings_and_canonical_form():
    pair = HookPair.parse(PAIR)
    assert (pair.source, pair.target) == (f"{MLP}:in", f"{MLP}:out")
    assert str(pair) == PAIR
    for same in (f"{MLP}:in->{MLP}:out", f"{MLP}:in->{MLP}", f"{MLP}:in->:out", f" {PAIR} "):
        assert canonical_hookpoint(same) == PAIR
    across = HookPair.parse("model.layers.0->model.layers.1.mlp:in")
    assert across.sites == ("model.layers.0:out", "model.layers.1.mlp:in")
    assert str(across) == "model.layers.0->model.layers.1.mlp:in"
    assert canonical_hookpoint("model.layers.2") == "model.layers.2"  # not a pair: unchanged


@pytest.mark.parametrize(
    "spec, message",
    [
        (f"{MLP}:in", None),  # not a pair at all: canonical_hookpoint leaves it
        (f"{MLP}:in->out->out", "write SOURCE->TARGET"),
        (f"->{MLP}", "write SOURCE->TARGET"),
        (f"{MLP}:in->", "write SOURCE->TARGET"),
        (f"{MLP}:input->out", "the only suffixes are :in and :out"),
        (f"{MLP}:in->in", "source and target are the same"),
    ],
)
def test_bad_pairs_are_one_line_value_errors(spec, message):
    if message is None:
        assert canonical_hookpoint(spec) == spec
        return
    with pytest.raises(ValueError, match=message) as exc:
        HookPair.parse(spec)
    assert "\n" not in str(exc.value)
    # open_stream fails on the spec before loading any model
    with pytest.raises(ValueError, match=message):
        open_stream(f"model:no-such-model@{spec}", batch_size=8)


def test_unknown_module_in_a_pair(model, contexts):
    with pytest.raises(UnknownHookpoint, match="unknown hookpoint 'model.layers.1.mpl'") as exc:
        ModelStream(model, contexts, "model.layers.1.mpl:in->out", batch_size=8)
    assert isinstance(exc.value, ValueError)  # the CLI prints ValueErrors as one line
    assert str(exc.value).startswith("unknown hookpoint") and "\n" not in str(exc.value)
    assert "model.layers.1.mlp" in str(exc.value)  # the close match is offered


# ---- capture: one forward, the target is the MLP output ------------------------------------


def test_target_is_the_mlp_output_captured_in_one_truncated_forward(model):
    ids, am = random_batch(3, 14, seed=4)
    am[2, 10:] = 0
    layer = model.model.layers[1]
    calls = []
    handles = [model.model.embed_tokens.register_forward_hook(lambda *_: calls.append("embed"))]
    handles += [
        model.model.layers[i].register_forward_hook(lambda *_, i=i: calls.append(i))
        for i in range(N_LAYERS)
    ]
    try:
        acts = capture(model, ids, am, HookPair.parse(PAIR).sites)
    finally:
        for h in handles:
            h.remove()
    # one forward, stopped inside layer 1 right after its MLP: layer 1 never returns
    assert calls == ["embed", 0]
    x, y = acts[f"{MLP}:in"], acts[f"{MLP}:out"]
    # the source is the MLP input = the post-attention norm's output, the target the MLP
    # applied to it by hand; and residual + target is layer 1's output in a clean forward
    ref = capture(model, ids, am, ["model.layers.1.post_attention_layernorm:out"])
    assert torch.equal(x, ref["model.layers.1.post_attention_layernorm:out"])
    with torch.no_grad():
        assert torch.equal(y, layer.mlp(x))
        hidden = model(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states
    residual = capture(model, ids, am, ["model.layers.1.post_attention_layernorm:in"])
    torch.testing.assert_close(
        residual["model.layers.1.post_attention_layernorm:in"] + y, hidden[2], rtol=0, atol=1e-6
    )


def test_model_stream_pairs_rows_and_resumes_exactly(model, contexts):
    kw = dict(batch_size=40, contexts_per_chunk=6, forward_batch=4, loop=False)
    stream = ModelStream(model, contexts, f"{MLP}:in->{MLP}:out", **kw)
    assert (stream.hookpoint, stream.d_in, stream.d_out) == (PAIR, 32, 32)
    pair = stream.describe()["pair"]
    assert pair == {"source": f"{MLP}:in", "target": f"{MLP}:out", "d_in": 32, "d_out": 32}
    batches = list(stream)
    xs = torch.cat([b.x for b in batches])
    ys = torch.cat([b.extras["target"] for b in batches])
    mlp = model.model.layers[1].mlp
    with torch.no_grad():  # shuffled, but every row keeps its own target
        torch.testing.assert_close(ys, mlp(xs), rtol=0, atol=1e-6)
    # the epoch holds exactly the masked MLP inputs of the contexts (as a set: it is shuffled)
    acts = capture(model, contexts.input_ids, contexts.attention_mask, [f"{MLP}:in"])
    keep = token_mask(contexts.input_ids, contexts.attention_mask, contexts.special_ids)
    want = acts[f"{MLP}:in"][keep]
    assert xs.shape == want.shape
    assert torch.equal(_sorted_rows(xs), _sorted_rows(want))
    # exact resume from the middle of a chunk
    a = ModelStream(model, contexts, PAIR, **kw)
    it = iter(a)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))
    b = ModelStream(model, contexts, PAIR, **kw)
    b.load_state_dict(state)
    for got, want_batch in zip(b, batches[3:], strict=True):
        assert torch.equal(got.x, want_batch.x)
        assert torch.equal(got.extras["target"], want_batch.extras["target"])


def test_norm_outliers_of_the_target_drop_the_token_from_both(model, contexts):
    # one forward for all contexts, so the median the mask uses is the one computed here
    kw = dict(batch_size=1000, contexts_per_chunk=24, forward_batch=24, loop=False)
    stream = ModelStream(model, contexts, PAIR, masking=Masking(max_norm_factor=1.5), **kw)
    batch = next(iter(stream))
    acts = capture(model, contexts.input_ids, contexts.attention_mask, HookPair.parse(PAIR).sites)
    masks = [
        token_mask(contexts.input_ids, contexts.attention_mask, contexts.special_ids, True, a, 1.5)
        for a in acts.values()
    ]
    # after the norm, MLP inputs have near-equal norms: only the target's outliers go
    assert masks[0].sum() == 355 and (masks[0] & masks[1]).sum() == len(batch) == 342
    want = acts[f"{MLP}:out"][masks[0] & masks[1]]
    assert torch.equal(_sorted_rows(batch.extras["target"]), _sorted_rows(want))


def _sorted_rows(t):
    return t[torch.argsort(t[:, 0] * 1e3 + t[:, 1])]


def test_a_single_site_is_a_module_and_which(model, contexts):
    stream = ModelStream(model, contexts, f"{MLP}:in", batch_size=8)
    assert (stream.hookpoint, stream.which, stream.d_out) == (MLP, "input", None)
    assert "target" not in next(iter(stream)).extras


def test_pair_with_a_different_target_width(model, contexts):
    stream = ModelStream(model, contexts, f"{MLP}.up_proj:in->out", batch_size=16)
    batch = next(iter(stream))
    assert (stream.d_in, stream.d_out) == (32, 64)
    assert batch.x.shape == (16, 32) and batch.extras["target"].shape == (16, 64)
    with torch.no_grad():
        up = model.model.layers[1].mlp.up_proj
        torch.testing.assert_close(batch.extras["target"], up(batch.x), rtol=0, atol=1e-6)


# ---- caches holding the pair ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_cache(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("pair-cache")
    write_cache(
        out,
        model,
        tiny_tokenizer(),
        CORPUS,
        [f"{MLP}:in->{MLP}", "model.layers.2", "model.layers.0:in"],  # beside plain ones
        n_tokens=600,
        shard_tokens=64,
        heldout_tokens=100,
        ctx_len=16,
        batch_size=8,
    )
    return out


def test_cache_manifest_and_round_trip_of_the_pair(model, pair_cache):
    manifest = load_manifest(pair_cache)
    assert list(manifest["hookpoints"]) == [PAIR, "model.layers.2", "model.layers.0:in"]
    assert manifest["hookpoints"]["model.layers.0:in"]["which"] == "input"  # the site says so
    entry = manifest["hookpoints"][PAIR]
    assert entry["source"] == f"{MLP}:in" and entry["target"] == f"{MLP}:out"
    assert (entry["d_in"], entry["d_out"], entry["which"]) == (32, 32, "input")
    assert entry["arrays"]["target"] == {"dtype": "float32", "shape": [32]}
    first = entry["splits"]["train"]["shards"][0]["file"]
    assert first == "model.layers.1.mlp.in--out/train-00000.safetensors"
    # a plain hookpoint's entry and directory are as before pairs existed
    plain = manifest["hookpoints"]["model.layers.2"]
    assert set(plain) == {"d_in", "which", "arrays", "splits"} and "target" not in plain["arrays"]
    assert plain["splits"]["train"]["shards"][0]["file"].startswith("model.layers.2/")
    # the stored pair is the one captured directly from the same contexts
    got = read_cache(pair_cache, f"{MLP}:in->{MLP}:out")
    contexts = tokenize_corpus(tiny_tokenizer(), CORPUS, 200, 16, "train")
    xs, ys = [], []
    for start in range(0, 80, 8):
        sub = contexts.subset(slice(start, start + 8))
        acts = capture(model, sub.input_ids, sub.attention_mask, HookPair.parse(PAIR).sites)
        mask = token_mask(sub.input_ids, sub.attention_mask, sub.special_ids)
        xs.append(acts[f"{MLP}:in"][mask])
        ys.append(acts[f"{MLP}:out"][mask])
    assert torch.equal(got["x"], torch.cat(xs)[:600])
    assert torch.equal(got["target"], torch.cat(ys)[:600])


def test_cache_stream_of_the_pair_shuffles_and_resumes_exactly(model, pair_cache):
    spec = f"cache:{pair_cache}@{MLP}:in->{MLP}:out"
    stream = open_stream(spec, batch_size=50, seed=3)
    assert (stream.hookpoint, stream.d_in, stream.d_out) == (PAIR, 32, 32)
    assert stream.describe()["pair"]["target"] == f"{MLP}:out"
    it = iter(stream)
    epoch = [next(it) for _ in range(12)]  # 600 tokens = one epoch
    xs = torch.cat([b.x for b in epoch])
    ys = torch.cat([b.extras["target"] for b in epoch])
    with torch.no_grad():
        torch.testing.assert_close(ys, model.model.layers[1].mlp(xs), rtol=0, atol=1e-6)
    stored = read_cache(pair_cache, PAIR)
    assert torch.equal(_sorted_rows(xs), _sorted_rows(stored["x"]))  # every token once
    # resume after 5 batches = the same next 10 batches, x and target
    a = open_stream(spec, batch_size=50, seed=3)
    ia = iter(a)
    for _ in range(5):
        next(ia)
    state = json.loads(json.dumps(a.state_dict()))
    want = [next(ia) for _ in range(10)]
    b = open_stream(spec, batch_size=50, seed=0)
    b.load_state_dict(state)
    ib = iter(b)
    for w in want:
        g = next(ib)
        assert torch.equal(g.x, w.x) and torch.equal(g.extras["target"], w.extras["target"])
    # the held-out split carries the pair too
    held = next(iter(open_stream(spec, batch_size=20, split="heldout")))
    assert held.extras["target"].shape == (20, 32)


def test_truncated_and_mismatched_pair_shards_are_detected(pair_cache, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(pair_cache, broken)
    shard = broken / "model.layers.1.mlp.in--out" / "train-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CacheError, match="truncated or replaced"):
        CacheStream(broken, PAIR)
    # a shard whose target is missing (renamed), with a manifest updated to its size/hash:
    # the header check still finds that the pair's target array is not there
    renamed = tmp_path / "renamed"
    shutil.copytree(pair_cache, renamed)
    rel = "model.layers.1.mlp.in--out/train-00001.safetensors"
    tensors = load_file(renamed / rel)
    tensors["not_target"] = tensors.pop("target")
    save_file(tensors, renamed / rel)
    manifest = json.loads((renamed / "manifest.json").read_text())
    data = (renamed / rel).read_bytes()
    for sh in manifest["hookpoints"][PAIR]["splits"]["train"]["shards"]:
        if sh["file"] == rel:
            sh["bytes"], sh["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="array 'target' is None"):
        CacheStream(renamed, PAIR)
    CacheStream(renamed, "model.layers.2")  # the other entry is intact


def test_cli_cache_writes_the_pair(tmp_path, capsys):
    from eval_helpers import model_dir

    from saekit.cli.main import main

    (tmp_path / "docs.txt").write_text("\n\n".join(DOCS))
    out = tmp_path / "cache"
    common = ["--model", str(model_dir()), "--corpus", str(tmp_path / "docs.txt")]
    common += ["--ctx-len", "16", "--quiet", "--threads", "1"]
    argv = ["cache", *common, "--hookpoint", PAIR, "--tokens", "200", "--out", str(out)]
    assert main(argv) == 0
    assert f"{PAIR} (d=32->32): train 200 tokens" in capsys.readouterr().out
    assert next(iter(open_stream(f"cache:{out}", 10))).extras["target"].shape == (10, 32)
    code = main(
        ["cache", *common, "--hookpoint", "model.layers.1.mlpp:in->out", "--tokens", "9"]
        + ["--out", str(tmp_path / "c2")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "unknown hookpoint 'model.layers.1.mlpp'" in err
    code = main(
        ["cache", *common, "--hookpoint", f"{MLP}:in=>out", "--tokens", "9"]
        + ["--out", str(tmp_path / "c3")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the only suffixes are :in and :out" in err


# ---- spliced evaluation replaces the MLP -----------------------------------------------------


@pytest.fixture(scope="module")
def linear_mlp_model():
    """The tiny model with layer 1's MLP replaced by a linear map (so a transcoder can copy
    it exactly)."""
    m = copy.deepcopy(tiny_model())
    m.model.layers[1].mlp = seeded_linear(32, 32, seed=1)
    return m


def test_a_copy_of_the_mlp_spliced_in_gives_the_clean_loss(linear_mlp_model):
    m = linear_mlp_model
    ids, am = random_batch(4, 14, seed=5)
    am[1, 10:] = 0
    mean = estimate_mean_activation(m, *random_batch(3, 14, seed=9), PAIR)
    # the mean used for mean ablation is the target's (the MLP output), not the input's
    assert torch.equal(mean, estimate_mean_activation(m, *random_batch(3, 14, seed=9), MLP))
    copy_ = copy_transcoder(m.model.layers[1].mlp)
    out = spliced_metrics(m, ids, am, PAIR, copy_, mean, batch_size=2)
    assert out["ce_spliced"] == pytest.approx(out["ce_clean"], rel=1e-6)
    assert abs(out["kl_spliced"]) < 1e-7 and out["ce_loss_score"] == pytest.approx(1, abs=1e-4)
    # the ablations act on the MLP output: the same numbers as an SAE's at that module
    plain = spliced_metrics(m, ids, am, MLP, lambda x: x, mean, batch_size=2)
    assert out["ce_zero_ablation"] == plain["ce_zero_ablation"] != out["ce_clean"]
    assert out["ce_mean_ablation"] == plain["ce_mean_ablation"]


def test_the_splice_replaces_the_mlp_output_by_the_prediction(linear_mlp_model):
    """A transcoder that copies ANOTHER linear map W2 gives exactly the loss of the model whose
    MLP is W2 (every token replaced: no first-position exclusion, no padding)."""
    m = linear_mlp_model
    ids, am = random_batch(3, 12, seed=6)
    other = seeded_linear(32, 32, seed=2, scale=0.5)
    out = spliced_metrics(m, ids, am, PAIR, copy_transcoder(other), exclude_first=False)
    swapped = copy.deepcopy(m)
    swapped.model.layers[1].mlp = other
    clean_swapped = spliced_metrics(swapped, ids, am, MLP, lambda x: x, exclude_first=False)
    assert out["ce_spliced"] == pytest.approx(clean_swapped["ce_clean"], rel=1e-6)
    assert abs(out["ce_spliced"] - out["ce_clean"]) > 1e-3  # it did change the model


def test_transcoder_splice_on_the_real_mlp_with_a_wider_target(model):
    # up_proj: 32 -> 64, inside the real LlamaMLP; a copy of it keeps the clean loss
    ids, am = random_batch(3, 12, seed=8)
    up = model.model.layers[1].mlp.up_proj
    out = spliced_metrics(model, ids, am, f"{MLP}.up_proj:in->out", copy_transcoder(up))
    assert out["ce_spliced"] == pytest.approx(out["ce_clean"], rel=1e-6)
    # a source that runs after the target cannot feed it
    with pytest.raises(RuntimeError, match="must come before the target"):
        spliced_metrics(model, ids, am, "model.layers.2:in->model.layers.1", lambda s: s)


# ---- the evaluation suite on a transcoder -------------------------------------------------


def test_model_source_reads_the_pair():
    class Meta:
        metadata = {
            "data": {"source": "cache", "model": {"name": "m"}, "hookpoint": PAIR, "which": "x"}
        }

    src = model_source(Meta())
    assert src == ModelSource("m", MLP, "input", f"{MLP}:out") and src.pair == PAIR
    Meta.metadata = {"data": {}, "training": {"data_spec": "model:x@model.layers.0->mlp:in"}}
    assert model_source(Meta()) == ModelSource("x", "model.layers.0", "output", "mlp:in")


def test_evaluate_scores_a_transcoder_on_its_target_and_by_replacing_the_mlp():
    from eval_helpers import corpus, model_dir

    source = ModelSource(str(model_dir()), MLP, "input", f"{MLP}.up_proj:out")
    model, tok = source.load()
    spec = f"{MLP}.up_proj:in->out"
    stream = ModelStream(model, tokenize_corpus(tok, corpus(), 12, 32, "heldout"), spec, 128)
    tc = copy_transcoder(copy.deepcopy(get_module(model, f"{MLP}.up_proj")))
    tc.metadata = {"data": stream.describe() | {"model": {"name": str(model_dir())}}}
    settings = EvalSettings(
        groups=("core", "spliced", "adaptive"),
        n_tokens=256,
        corpus=corpus(),
        spliced_contexts=4,
        ctx_len=32,
    )
    doc = evaluate_sae(tc, stream, settings)
    core, sp = doc["core"], doc["spliced"]
    # FVU of the prediction against the target (the up_proj output): an exact copy -> ~0
    assert core["fvu"] < 1e-10 and core["cosine"] == pytest.approx(1, abs=1e-6)
    assert core["l2_norm_out"] == pytest.approx(core["l2_norm_in"], rel=1e-6)
    assert "enc_dec_cos" not in core  # encoder and decoder live in different spaces
    assert sp["ce_spliced"] == pytest.approx(sp["ce_clean"], rel=1e-6)
    assert sp["ce_zero_ablation"] > sp["ce_clean"]
    assert "a transcoder predicts a target" in doc["skipped"]["adaptive"]
    # a damaged copy: FVU against the target, computed by hand
    with torch.no_grad():
        tc.b_dec.add_(0.5)
    fresh = ModelStream(model, stream.contexts, spec, 128)
    doc = evaluate_sae(tc, fresh, EvalSettings(groups=("core",), n_tokens=256))
    batch = next(iter(ModelStream(model, stream.contexts, spec, 256)))  # the same 256 tokens
    y = batch.extras["target"].double()
    want = 0.25 * 64 * len(y) / (y - y.mean(0)).pow(2).sum().item()
    assert doc["core"]["fvu"] == pytest.approx(want, rel=1e-4)
    # a transcoder on a stream without a target cannot be scored
    plain = ModelStream(model, stream.contexts, f"{MLP}", 64)
    doc = evaluate_sae(tc, plain, EvalSettings(groups=("core",), n_tokens=64))
    assert "needs a stream with its target" in doc["skipped"]["core"]


# ---- saekit train on paired data -----------------------------------------------------------


def _train(argv, capsys):
    from saekit.cli.main import main

    rc = main(["train", "--no-progress", "--threads", "1", *argv])
    return rc, capsys.readouterr()


def test_train_spec_errors_are_one_line(tmp_path, capsys):
    from eval_helpers import model_dir

    model_dir()  # written (with its progress bar) before stderr is read
    capsys.readouterr()
    out = ["--out", str(tmp_path / "run")]
    rc, io = _train(["--data", f"model:default@{MLP}:in->out->x", *out], capsys)
    assert rc == 2 and io.err.count("\n") == 1 and "bad hookpoint pair" in io.err
    data = f"model:{model_dir()}@model.layers.1.mlq:in->out"
    rc, io = _train(["--data", data, "--cache-tokens", "100", *out], capsys)
    # (the model load may draw a progress bar on stderr first)
    last = io.err.rstrip("\n").split("\n")[-1]
    assert rc == 2 and "Traceback" not in io.err
    assert last.startswith("saekit train: error: unknown hookpoint 'model.layers.1.mlq'; close")


def test_sweep_builds_transcoders_only_from_paired_data():
    from saekit.training.sweep import expand

    runs = expand(["transcoder", "topk"], {}, 32, d_out=64)
    for arch in ("transcoder", "topk"):  # any encoder architecture becomes a transcoder
        assert runs[arch][1] == {
            "d_in": 32,
            "n_latents": 256,
            "seed": 0,
            "transcode": True,
            "d_out": 64,
        }
    # a JumpReLU transcoder
    cfg = expand(["jumprelu"], {"transcode": [True]}, 32, d_out=64)["jumprelu"][1]
    assert cfg["transcode"] is True and cfg["d_out"] == 64 and "k" not in cfg
    with pytest.raises(ValueError, match="mpsae cannot predict a target"):
        expand(["mpsae"], {}, 32, d_out=64)
    with pytest.raises(ValueError, match="drop transcode=false"):
        expand(["topk"], {"transcode": [False]}, 32, d_out=64)
    for arch, options in (("transcoder", {}), ("topk", {"transcode": [True]})):
        with pytest.raises(ValueError, match="a transcoder needs paired data"):
            expand([arch], options, 32)
    assert "transcode" not in expand(["topk"], {}, 32)["topk"][1]


def test_trainer_logs_a_transcoders_error_against_its_wider_target(model, contexts):
    """d_out != d_in (up_proj: 32 -> 64): training runs, and the logged FVU is the
    prediction's against the target, computed here by hand for the same step."""
    from saekit.sae.base import TrainContext
    from saekit.training.trainer import TrainConfig, Trainer

    stream = ModelStream(model, contexts, f"{MLP}.up_proj:in->out", batch_size=64)
    tc = create("transcoder", d_in=32, n_latents=64, d_out=64, k=4, transcode=True)
    trainer = Trainer({"tc": tc}, stream, TrainConfig(steps=5, log_every=1, progress_bar=False))
    trainer._initialise()
    batch = trainer._next_batch()
    before = copy.deepcopy(tc)
    trainer.train_step(batch)
    with torch.no_grad():
        y_hat = before.training_forward(batch.x, TrainContext(extras=batch.extras)).x_hat
    y = batch.extras["target"]
    want = (y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert y_hat.shape == (64, 64)
    assert trainer.members[0].last["fvu"] == pytest.approx(float(want), rel=1e-5)


def test_train_a_transcoder_end_to_end(tmp_path, capsys):
    from eval_helpers import model_dir

    from saekit.formats.native import load

    out = tmp_path / "run"
    argv = ["--data", f"model:{model_dir()}@{PAIR}", "-a", "transcoder", "--k", "8"]
    argv += ["--steps", "40", "--batch-size", "128", "--cache-tokens", "3000"]
    argv += ["--eval-tokens", "512", "--eval-fraction", "0.5", "--out", str(out)]
    rc, io = _train(argv, capsys)
    assert rc == 0, io.err
    run = json.loads((out / "run.json").read_text())
    assert run["pair"]["source"] == f"{MLP}:in" and run["pair"]["d_out"] == 32
    assert run["train_data"] == f"cache:{out / 'activations'}@{PAIR}"
    _, cfg = run["saes"]["transcoder"]
    assert cfg["transcode"] is True and cfg["d_out"] == 32
    sae = load(out / "saes" / "transcoder")
    assert sae.is_transcoder and sae.W_dec.shape == (256, 32)
    assert sae.metadata["data"]["hookpoint"] == PAIR
    assert sae.metadata["data"]["pair"]["target"] == f"{MLP}:out"
    assert model_source(sae).target == f"{MLP}:out"
    ev = json.loads((out / "saes" / "transcoder" / "eval.json").read_text())
    # core FVU is the saved transcoder's error on the MLP OUTPUT of the first 512 held-out
    # tokens, as computed here by hand from the paired cache
    stream = open_stream(run["train_data"], 128, seed=0, split="heldout")
    batches = [b for _, b in zip(range(4), stream)]
    x = torch.cat([b.x for b in batches])
    y = torch.cat([b.extras["target"] for b in batches]).double()
    with torch.no_grad():
        err = (sae(x).double() - y).pow(2).sum()
    assert ev["core"]["fvu"] == pytest.approx(float(err / (y - y.mean(0)).pow(2).sum()), rel=1e-6)
    # spliced: the MLP replaced by the transcoder, against the MLP zero-ablated
    sp = ev["spliced"]
    assert sp["ce_zero_ablation"] != sp["ce_clean"] and sp["ce_spliced"] != sp["ce_clean"]
    assert ev["data"]["model_source"]["target"] == f"{MLP}:out"
