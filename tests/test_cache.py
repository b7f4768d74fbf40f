"""Activation cache: bit-exact round trip, shuffling, exact resume, integrity errors, CLI."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_model import TEXTS, tiny_model, tiny_tokenizer

from saekit.data import open_stream
from saekit.data.cache import (
    CacheError,
    CacheStream,
    load_manifest,
    read_cache,
    verify_cache,
    write_cache,
)
from saekit.data.corpora import TextListCorpus, tokenize_corpus
from saekit.data.gradients import capture_gradients
from saekit.data.hooks import capture
from saekit.data.masking import Masking, token_mask
from saekit.data.stream import ActivationStream

HOOKS = ["model.layers.1", "model.layers.3"]
DOCS = [f"doc {i}: {TEXTS[i % 8]} {TEXTS[(i * 3) % 8]}" for i in range(300)]
CORPUS = TextListCorpus(DOCS, heldout_fraction=0.2)
CTX, BATCH = 16, 8


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def cache_dir(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    write_cache(
        out,
        model,
        tiny_tokenizer(),
        CORPUS,
        HOOKS,
        n_tokens=1000,
        shard_tokens=96,
        heldout_tokens=150,
        ctx_len=CTX,
        batch_size=BATCH,
        with_grad=True,
    )
    return out


def expected(model, split, n_tokens):
    """Masked activations (and gradients) of the first contexts, computed directly."""
    contexts = tokenize_corpus(tiny_tokenizer(), CORPUS, 200, CTX, split)
    xs = {h: [] for h in HOOKS}
    for start in range(0, len(contexts), BATCH):
        sub = contexts.subset(slice(start, start + BATCH))
        acts = capture(model, sub.input_ids, sub.attention_mask, HOOKS)
        _, grads = capture_gradients(
            model, sub.input_ids, sub.attention_mask, HOOKS, "output", sub.special_ids
        )
        mask = token_mask(sub.input_ids, sub.attention_mask, sub.special_ids)
        for h in HOOKS:
            xs[h].append((acts[h][mask], grads[h][mask], sub.input_ids[mask]))
    return {h: [torch.cat(p)[:n_tokens] for p in zip(*xs[h])] for h in HOOKS}


def test_round_trip_is_bit_exact(model, cache_dir):
    want = expected(model, "train", 1000)
    for h in HOOKS:
        got = read_cache(cache_dir, h)
        x, grad, token_ids = want[h]
        assert got["x"].dtype == torch.float32 and torch.equal(got["x"], x)
        assert torch.equal(got["grad"], grad)
        assert torch.equal(got["token_ids"].long(), token_ids)
        assert (got["positions"] > 0).all()  # the first position is never stored
    manifest = load_manifest(cache_dir)
    entry = manifest["hookpoints"]["model.layers.1"]
    assert manifest["n_tokens"] == {"train": 1000, "heldout": 150}
    assert [s["n_tokens"] for s in entry["splits"]["train"]["shards"]] == [96] * 10 + [40]
    assert set(entry["arrays"]) == {"x", "grad", "token_ids", "doc_ids", "context_ids", "positions"}
    assert manifest["saekit_version"] and manifest["dtype"] == "float32"


def test_cache_holds_the_plain_forward_activations(model, tmp_path):
    """The capture path (hooks, early stop, masking, shards written on a thread) stores a
    plain full forward's output of the layer, bit for bit, at exactly the tokens that the
    masking rule keeps, worked out here from scratch."""
    layer, factor, n = 1, 1.2, 300  # a low factor: a few tokens are norm outliers
    hookpoint = f"model.layers.{layer}"
    write_cache(
        tmp_path,
        model,
        tiny_tokenizer(),
        CORPUS,
        [hookpoint],
        n,
        shard_tokens=64,
        heldout_tokens=0,
        ctx_len=CTX,
        batch_size=BATCH,
        masking=Masking(max_norm_factor=factor),
    )
    contexts = tokenize_corpus(tiny_tokenizer(), CORPUS, 200, CTX)
    xs, ids, outliers = [], [], 0
    for start in range(0, len(contexts), BATCH):
        sub = contexts.subset(slice(start, start + BATCH))
        assert sub.attention_mask.all()  # packed: no padding, position 0 is the first token
        with torch.no_grad():
            out = model(input_ids=sub.input_ids, output_hidden_states=True)
        h = out.hidden_states[layer + 1]  # [0] is the embedding output
        keep = ~torch.isin(sub.input_ids, torch.tensor(sub.special_ids))
        keep[:, 0] = False
        norms = h.norm(dim=-1)
        within = norms <= factor * norms[keep].median()
        outliers += int((keep & ~within).sum())
        xs.append(h[keep & within])
        ids.append(sub.input_ids[keep & within])
        if sum(map(len, xs)) >= n:
            break
    assert outliers > 0
    got = read_cache(tmp_path)
    assert torch.equal(got["x"], torch.cat(xs)[:n])
    assert torch.equal(got["token_ids"].long(), torch.cat(ids)[:n])
    shards = load_manifest(tmp_path)["hookpoints"][hookpoint]["splits"]["train"]["shards"]
    assert [s["n_tokens"] for s in shards] == [64] * 4 + [44]


def test_heldout_split_comes_from_heldout_documents(cache_dir):
    train = set(read_cache(cache_dir, HOOKS[0], "train")["doc_ids"].tolist()) - {-1}
    held = set(read_cache(cache_dir, HOOKS[0], "heldout")["doc_ids"].tolist()) - {-1}
    assert held and train.isdisjoint(held)


def test_gradients_of_an_input_site(model, cache_dir, tmp_path):
    """Layer 2's input is layer 1's output: the same tokens, values and gradients."""
    write_cache(tmp_path, model, tiny_tokenizer(), CORPUS, ["model.layers.2"], 200,
                heldout_tokens=0, ctx_len=CTX, batch_size=BATCH, which="input", with_grad=True)  # fmt: skip
    got, want = read_cache(tmp_path), read_cache(cache_dir, HOOKS[0])
    assert all(torch.equal(got[k], want[k][:200]) for k in ("x", "grad", "token_ids"))


def test_reduced_precision_storage(model, tmp_path):
    write_cache(
        tmp_path / "fp32",
        model,
        tiny_tokenizer(),
        CORPUS,
        HOOKS[:1],
        200,
        heldout_tokens=0,
        ctx_len=CTX,
    )
    ref = read_cache(tmp_path / "fp32")["x"]
    for dtype, tol in (("fp16", 1e-3), ("bf16", 8e-3)):
        write_cache(
            tmp_path / dtype,
            model,
            tiny_tokenizer(),
            CORPUS,
            HOOKS[:1],
            200,
            dtype=dtype,
            heldout_tokens=0,
            ctx_len=CTX,
        )
        x = read_cache(tmp_path / dtype)["x"]
        assert x.dtype == getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[dtype])
        torch.testing.assert_close(x.float(), ref, rtol=tol, atol=tol)
        batch = next(iter(CacheStream(tmp_path / dtype, batch_size=10)))
        assert batch.x.dtype == torch.float32


def test_fp16_overflow_is_an_error(tmp_path):
    big = tiny_model()
    big.model.embed_tokens.weight.mul_(1e6)
    with pytest.raises(FloatingPointError, match="overflow float16"):
        write_cache(
            tmp_path,
            big,
            tiny_tokenizer(),
            CORPUS,
            ["model.layers.0"],
            50,
            dtype="fp16",
            ctx_len=CTX,
        )


def test_every_token_exactly_once_per_epoch(cache_dir):
    stream = CacheStream(
        cache_dir, HOOKS[1], batch_size=64, seed=3, pool_shards=3, include_metadata=True
    )
    assert isinstance(stream, ActivationStream) and stream.d_in == 32
    key = lambda b: (b.extras["context_ids"] * CTX + b.extras["positions"]).tolist()  # noqa: E731
    it = iter(stream)
    epochs = []
    for _ in range(2):
        sizes, seen = [], []
        while not sizes or sum(sizes) < 1000:
            batch = next(it)
            sizes.append(len(batch))
            seen += key(batch)
        assert sizes == [64] * 15 + [40]  # the epoch's last batch is the remainder
        assert sorted(seen) == sorted(set(seen)) and len(seen) == 1000
        epochs.append(seen)
    assert set(epochs[0]) == set(epochs[1]) and epochs[0] != epochs[1]  # reshuffled
    on_disk = read_cache(cache_dir, HOOKS[1])
    written = (on_disk["context_ids"] * CTX + on_disk["positions"]).tolist()
    assert set(epochs[0]) == set(written)
    # Shuffled at the token level across the pool: the first batch mixes all 3 pool shards.
    shard_of = {k: i // 96 for i, k in enumerate(written)}
    assert len({shard_of[k] for k in epochs[0][:64]}) == 3


def test_drop_last_and_single_pass(cache_dir):
    stream = CacheStream(cache_dir, HOOKS[0], batch_size=64, drop_last=True, loop=False)
    assert [len(b) for b in stream] == [64] * 15
    assert list(stream) == []


def test_resume_continues_exactly(cache_dir):
    def run(stream, n):
        it = iter(stream)
        return [next(it) for _ in range(n)]

    full = run(CacheStream(cache_dir, HOOKS[0], batch_size=70, seed=1, pool_shards=2), 25)
    first = CacheStream(cache_dir, HOOKS[0], batch_size=70, seed=1, pool_shards=2)
    run(first, 9)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = CacheStream(cache_dir, HOOKS[0], batch_size=70, seed=99)  # state's seed wins
    resumed.load_state_dict(state)
    for a, b in zip(full[9:], run(resumed, 16)):
        assert torch.equal(a.x, b.x) and torch.equal(a.extras["grad"], b.extras["grad"])
    # Offsets are in tokens: a different batch size resumes on the same next token.
    other = CacheStream(cache_dir, HOOKS[0], batch_size=35)
    other.load_state_dict(state)
    assert torch.equal(next(iter(other)).x, full[9].x[:35])
    with pytest.raises(CacheError, match="hookpoint"):
        CacheStream(cache_dir, HOOKS[1]).load_state_dict(state)


def copy_cache(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_shard_is_detected_on_open(cache_dir, tmp_path):
    bad = copy_cache(cache_dir, tmp_path / "c")
    shard = bad / "model.layers.1" / "train-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CacheError, match="train-00003.*truncated"):
        CacheStream(bad, HOOKS[0])
    with pytest.raises(CacheError, match="truncated"):
        verify_cache(bad)
    CacheStream(bad, HOOKS[1])  # the other hookpoint is intact


def test_checksum_mismatch_is_detected_on_first_read(cache_dir, tmp_path):
    bad = copy_cache(cache_dir, tmp_path / "c")
    shard = bad / "model.layers.3" / "train-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data: same size, same header
    shard.write_bytes(bytes(data))
    stream = CacheStream(bad, HOOKS[1], batch_size=2000, pool_shards=20)  # opens fine
    with pytest.raises(CacheError, match="train-00000.*sha256"):
        next(iter(stream))
    with pytest.raises(CacheError, match="sha256"):
        CacheStream(bad, HOOKS[1], verify="open")
    next(iter(CacheStream(bad, HOOKS[1], batch_size=2000, pool_shards=20, verify="none")))


def test_mismatched_and_missing_files(model, cache_dir, tmp_path):
    other = tmp_path / "other"
    write_cache(
        other,
        model,
        tiny_tokenizer(),
        CORPUS,
        ["model.layers.1.mlp.up_proj"],
        96,
        shard_tokens=96,
        heldout_tokens=0,
        ctx_len=CTX,
    )
    bad = copy_cache(cache_dir, tmp_path / "c")
    manifest = load_manifest(bad)
    shard_info = manifest["hookpoints"]["model.layers.1"]["splits"]["train"]["shards"][0]
    foreign = other / "model.layers.1.mlp.up_proj" / "train-00000.safetensors"
    shutil.copy(foreign, bad / shard_info["file"])
    shard_info["bytes"] = foreign.stat().st_size  # even with a matching size...
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="another cache"):  # ...the header gives it away
        CacheStream(bad, HOOKS[0])
    (bad / shard_info["file"]).unlink()
    with pytest.raises(CacheError, match="missing shard"):
        CacheStream(bad, HOOKS[0])
    (bad / "manifest.json").unlink()
    with pytest.raises(CacheError, match="no manifest.json"):
        CacheStream(bad)
    with pytest.raises(CacheError, match="several hookpoints"):
        CacheStream(cache_dir)
    with pytest.raises(CacheError, match="no hookpoint 'model.layers.2'"):
        CacheStream(cache_dir, "model.layers.2")


def test_open_a_cache_by_spec(cache_dir, tmp_path):
    spec = f"cache:{cache_dir}@model.layers.3"
    stream = open_stream(spec, batch_size=50, split="heldout")
    assert stream.hookpoint == "model.layers.3" and stream.n_tokens == 150
    assert stream.describe()["corpus"]["split"] == "heldout"
    assert open_stream(f"{spec}#train", batch_size=50, split="heldout").n_tokens == 1000
    # A cache without a held-out split: evaluation reads the train split, and says so.
    (tmp_path / "@#odd").mkdir()
    write_cache(tmp_path / "@#odd", tiny_model(), tiny_tokenizer(), CORPUS, HOOKS[:1], 100,
                heldout_tokens=0, ctx_len=CTX)  # fmt: skip
    with pytest.warns(UserWarning, match="no held-out split; reading its train split"):
        stream = open_stream(f"cache:{tmp_path}/@#odd", batch_size=50, split="heldout")
    assert stream.split == "train" and stream.n_tokens == 100
    with pytest.raises(CacheError, match="no 'heldout' split"):
        open_stream(f"cache:{tmp_path}/@#odd@{HOOKS[0]}#heldout", batch_size=50)


LEGACY = Path(__file__).parent / "data" / "legacy" / "cache"  # see make_cache.py there


def test_a_version_1_cache_reads_its_eval_split_as_heldout(tmp_path):
    manifest = verify_cache(LEGACY)
    assert manifest["format_version"] == 1 and manifest["n_tokens"] == {"train": 40, "heldout": 12}
    stream = CacheStream(LEGACY, "model.layers.1", batch_size=5, split="heldout", loop=False)
    assert [len(b) for b in stream] == [5, 5, 2]
    with pytest.raises(ValueError, match="no longer 'eval'"):
        CacheStream(LEGACY, "model.layers.1", split="eval")
    # Today's writer, with the settings of make_cache.py, stores the same tokens and values.
    docs = [f"doc {i}: {TEXTS[i % 8]} {TEXTS[(i * 3) % 8]}" for i in range(60)]
    hookpoints = ["model.layers.1", "model.layers.2.mlp:in->out"]
    write_cache(
        tmp_path, tiny_model(), tiny_tokenizer(), TextListCorpus(docs, heldout_fraction=0.2),
        hookpoints, n_tokens=40, dtype="fp16", shard_tokens=16, heldout_tokens=12, ctx_len=16,
        batch_size=4,
    )  # fmt: skip
    for h in hookpoints:
        for split in ("train", "heldout"):
            old, new = read_cache(LEGACY, h, split), read_cache(tmp_path, h, split)
            assert set(old) == set(new) and all(torch.equal(old[k], new[k]) for k in old)


def test_write_errors(model, cache_dir, tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(FileExistsError, match="not empty"):
        write_cache(cache_dir, model, tok, CORPUS, HOOKS, 10)
    with pytest.raises(KeyError, match="close matches"):
        write_cache(tmp_path / "x", model, tok, CORPUS, ["model.layers.9"], 10)
    with pytest.raises(ValueError, match="dtype"):
        write_cache(tmp_path / "x", model, tok, CORPUS, HOOKS, 10, dtype="int8")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saekit cache"):
        write_cache(tmp_path / "y", model, tok, CORPUS, HOOKS, 10, overwrite=True)


# ---- CLI -------------------------------------------------------------------------------------


def cli(argv):
    from saekit.cli.main import main

    return main(argv)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_cli_cache_and_hookpoints(model_dir, tmp_path, capsys):
    (tmp_path / "docs.txt").write_text("\n\n".join(DOCS))
    out = tmp_path / "cache"
    argv = [
        "cache",
        "--model",
        str(model_dir),
        "--hookpoint",
        "model.layers.2",
        "--tokens",
        "300",
        "--out",
        str(out),
        "--corpus",
        str(tmp_path / "docs.txt"),
        "--ctx-len",
        "16",
        "--dtype",
        "bf16",
        "--shard-tokens",
        "128",
        "--quiet",
        "--threads",
        "1",
    ]
    assert cli(argv) == 0
    assert "model.layers.2 (d=32): train 300 tokens in 3 shards, heldout 30 tokens" in (
        capsys.readouterr().out
    )
    manifest = verify_cache(out)
    assert manifest["dtype"] == "bfloat16" and manifest["model"]["name"] == str(model_dir)
    assert cli(["hookpoints", str(model_dir), "--filter", r"layers\.2$"]) == 0
    assert capsys.readouterr().out.split() == ["model.layers.2", "32"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hookpoint", "model.layer.2"], "unknown hookpoint 'model.layer.2'; close matches"),
        (["--tokens", "0"], "argument --tokens: must be >= 1, got 0"),
        (["--corpus", "/no/such/file.txt"], "--corpus"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(model_dir, tmp_path, capsys, extra, message):
    argv = [
        "cache",
        "--model",
        str(model_dir),
        "--tokens",
        "10",
        "--out",
        str(tmp_path / "c"),
        "--quiet",
        "--threads",
        "1",
        *extra,
    ]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_data_parallel_shards_are_disjoint_and_cover_the_split(cache_dir):
    """Rank r of W reads shards r, r + W, ...: together one epoch of every rank is the split."""
    key = lambda b: (b.extras["context_ids"] * CTX + b.extras["positions"]).tolist()  # noqa: E731
    seen = []
    for rank in range(3):
        stream = CacheStream(cache_dir, HOOKS[1], batch_size=64, loop=False, include_metadata=True)
        stream.shard(rank, 3)
        seen.append([k for b in stream for k in key(b)])
    assert all(seen) and not set(seen[0]) & set(seen[1]) and not set(seen[1]) & set(seen[2])
    assert sum(len(s) for s in seen) == 1000
    with pytest.raises(CacheError, match="shard.*for 99 ranks"):
        CacheStream(cache_dir, HOOKS[1]).shard(0, 99)
