"""A generated corpus of hostile files, each handed to the real CLI in a child process with a
bounded address space (run by test_rel_hostile_files.py; prints one JSON line).

  python hostile_files.py WORKDIR

Families: SAE directories (cfg.json + weights.safetensors), training checkpoints (resumed
with `saekit train --resume`), run.json, activation-cache manifests and shards, eval.json.
Damage: truncation, wrong types, missing keys, huge sizes, deep nesting, symlink loops,
pickles (which would create a marker file if anything unpickled them), NaN.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import sys
from pathlib import Path

import forkrun

DATA = "synthetic:superposition:n_features=64,d_in=16,k_avg=3"
MEMORY = 1 << 30  # each child may grow its address space by at most 1 GiB


class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def st_parse(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def st_build(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def deep(n: int = 100_000) -> str:
    return "[" * n + "]" * n


def sign(state_json: Path, mutate) -> None:
    """Edit a checkpoint's skeleton and re-sign it, so only field validation can catch it."""
    doc = json.loads(state_json.read_text())
    mutate(doc["skeleton"])
    doc["step"] = dict(doc["skeleton"]["__dict__"])["step"]  # keep the copies in agreement
    body = json.dumps(doc["skeleton"], separators=(",", ":")).encode()
    doc["skeleton_sha256"] = hashlib.sha256(body).hexdigest()
    state_json.write_text(json.dumps(doc, separators=(",", ":")))


def top(skeleton: dict, key: str, value) -> None:
    for pair in skeleton["__dict__"]:
        if pair[0] == key:
            pair[1] = value
            return
    raise KeyError(key)


def make_base(work: Path) -> tuple[Path, Path]:
    run = work / "base-run"
    argv = ["train", "--data", DATA, "--n-latents", "64", "--k", "4", "--steps", "20",
            "--batch-size", "64", "--eval-tokens", "256", "--checkpoint-every", "10",
            "--no-progress", "--threads", "1", "--out", str(run)]  # fmt: skip
    how, code, _ = forkrun.run(argv, work / "setup.log")
    assert (how, code) == ("exit", 0), (work / "setup.log").read_text()
    # One checkpoint only, so a damaged one cannot be skipped in favour of an older one.
    for p in sorted((run / "checkpoints").glob("step-*"))[:-1]:
        shutil.rmtree(p)
    cache = work / "base-cache"

    def build_cache():
        from tiny_model import tiny_model, tiny_tokenizer

        from saekit.data.cache import write_cache

        texts = [f"Sentence number {i} talks about the weather and the sea." for i in range(60)]
        write_cache(cache, tiny_model(), tiny_tokenizer(), texts, ["model.layers.1"], 400,
                    shard_tokens=128, heldout_tokens=64, ctx_len=16)  # fmt: skip

    assert forkrun.call(build_cache, work / "setup.log") == 0, (work / "setup.log").read_text()
    return run, cache


def cases(work: Path, run: Path, cache: Path, marker: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv, expected substring of the error line) for every hostile file."""
    out: list[tuple[str, list[str], str]] = []
    sae = run / "saes" / "topk"
    pickled = pickle.dumps(Payload(marker))

    def sae_case(name: str, expect: str, edit) -> None:
        d = work / "sae" / name
        shutil.copytree(sae, d, symlinks=True)
        edit(d)
        out.append((f"sae/{name}", ["info", str(d)], expect))

    def cfg_edit(**changes):
        def edit(d: Path) -> None:
            cfg = json.loads((d / "cfg.json").read_text())
            for k, v in changes.items():
                if v is KeyError:
                    cfg.pop(k)
                else:
                    cfg[k] = v
            (d / "cfg.json").write_text(json.dumps(cfg))

        return edit

    def write(rel: str, data: bytes | str):
        def edit(d: Path) -> None:
            p = d / rel
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            p.write_bytes(data if isinstance(data, bytes) else data.encode())

        return edit

    def weights(change):
        def edit(d: Path) -> None:
            header, body = st_parse((d / "weights.safetensors").read_bytes())
            header, body = change(header, body)
            (d / "weights.safetensors").write_bytes(st_build(header, body))

        return edit

    def nan_w_dec(h, b):
        s, e = h["W_dec"]["data_offsets"]
        return h, b[:s] + struct.pack("<f", float("nan")) * ((e - s) // 4) + b[e:]

    def symlink_loop(rel: str):
        def edit(d: Path) -> None:
            (d / rel).unlink()
            os.symlink(rel, d / rel)

        return edit

    def as_dir(rel: str):
        def edit(d: Path) -> None:
            (d / rel).unlink()
            (d / rel).mkdir()

        return edit

    weights_bytes = (sae / "weights.safetensors").read_bytes()
    sae_case("no-cfg", "missing cfg.json", lambda d: (d / "cfg.json").unlink())
    sae_case(
        "cfg-truncated",
        "not valid JSON",
        lambda d: write("cfg.json", (sae / "cfg.json").read_text()[:50])(d),
    )  # noqa: E501
    sae_case("cfg-deep", "nested too deeply", write("cfg.json", deep()))
    sae_case("cfg-list", "no 'architecture'", write("cfg.json", "[1, 2]"))
    sae_case("cfg-not-utf8", "not valid JSON", write("cfg.json", b"\xff\xfe{"))
    sae_case("cfg-huge", "larger than", write("cfg.json", b" " * (17 * 2**20)))
    sae_case("cfg-symlink-loop", "cfg.json", symlink_loop("cfg.json"))
    sae_case("cfg-is-dir", "missing cfg.json", as_dir("cfg.json"))
    sae_case("arch-int", "'architecture' must be a string", cfg_edit(architecture=5))
    sae_case("arch-unknown", "unknown architecture", cfg_edit(architecture="evil"))
    sae_case("arch-missing", "no 'architecture'", cfg_edit(architecture=KeyError))
    sae_case("n-latents-1e7", "W_dec has shape", cfg_edit(n_latents=10**7))
    sae_case("n-latents-1e12", "W_dec has shape", cfg_edit(n_latents=10**12))
    sae_case("n-latents-zero", "n_latents must be >= 1", cfg_edit(n_latents=0))
    sae_case("n-latents-negative", "n_latents must be >= 1", cfg_edit(n_latents=-5))
    sae_case("n-latents-float", "'n_latents' must be an integer", cfg_edit(n_latents=64.0))
    sae_case("d-in-string", "'d_in' must be an integer", cfg_edit(d_in="16"))
    sae_case("d-in-missing", "d_in", cfg_edit(d_in=KeyError))
    sae_case("k-float", "'k' must be an integer", cfg_edit(k=4.5))
    sae_case("k-huge", "k must be in", cfg_edit(k=10**6))
    sae_case("aux-coeff-string", "'aux_coeff' must be a finite number", cfg_edit(aux_coeff="abc"))
    sae_case(
        "aux-coeff-nan", "'aux_coeff' must be a finite number", cfg_edit(aux_coeff=float("nan"))
    )  # noqa: E501
    sae_case("aux-coeff-list", "'aux_coeff' must be a finite number", cfg_edit(aux_coeff=[1]))
    sae_case("unknown-option", "has no option", cfg_edit(bogus=1))
    sae_case("metadata-int", "'metadata' must be an object", cfg_edit(metadata=5))
    sae_case("version-string", "'format_version' must be", cfg_edit(format_version="x"))
    sae_case("version-future", "newer than", cfg_edit(format_version=99))
    sae_case("weights-missing", "missing weights", lambda d: (d / "weights.safetensors").unlink())
    sae_case("weights-empty", "corrupt or truncated", write("weights.safetensors", b""))
    sae_case(
        "weights-half",
        "corrupt or truncated",
        write("weights.safetensors", weights_bytes[: len(weights_bytes) // 2]),
    )  # noqa: E501
    sae_case(
        "weights-header-2^63",
        "corrupt or truncated",
        write("weights.safetensors", struct.pack("<Q", 2**63) + b"{}"),
    )  # noqa: E501
    sae_case(
        "weights-header-deep",
        "corrupt or truncated",
        write(
            "weights.safetensors",
            st_build({}, b"")[:0] + struct.pack("<Q", 200_000) + deep().encode(),
        ),
    )  # noqa: E501
    sae_case(
        "weights-claims-1e7-rows",
        "corrupt or truncated",
        weights(lambda h, b: ({**h, "W_dec": {**h["W_dec"], "shape": [10**7, 16]}}, b)),
    )  # noqa: E501
    sae_case(
        "weights-int-dtype",
        "expected floating point",
        weights(lambda h, b: ({**h, "W_dec": {**h["W_dec"], "dtype": "I32"}}, b)),
    )  # noqa: E501
    sae_case("weights-nan", "NaN", weights(nan_w_dec))
    sae_case(
        "weights-extra-tensor",
        "unexpected",
        weights(
            lambda h, b: (
                {**h, "evil": {"dtype": "F32", "shape": [0], "data_offsets": [len(b), len(b)]}},
                b,
            )
        ),
    )  # noqa: E501
    sae_case(
        "weights-missing-tensor",
        "missing",
        weights(lambda h, b: ({k: v for k, v in h.items() if k != "b_enc"}, b)),
    )  # noqa: E501
    sae_case("weights-pickle", "corrupt or truncated", write("weights.safetensors", pickled))
    sae_case("weights-symlink-loop", "weights.safetensors", symlink_loop("weights.safetensors"))
    sae_case("weights-is-dir", "missing weights", as_dir("weights.safetensors"))
    loop = work / "sae" / "dir-symlink-loop"
    os.symlink(loop, loop)
    out.append(("sae/dir-symlink-loop", ["info", str(loop)], "not a directory"))

    # ---- checkpoints (resumed) and run.json ----------------------------------------------
    def ckpt_case(name: str, expect: str, edit) -> None:
        d = work / "ckpt" / name
        shutil.copytree(run, d, symlinks=True)
        step = sorted((d / "checkpoints").glob("step-*"))[-1]
        edit(step, d)
        out.append((f"checkpoint/{name}", ["train", "--resume", str(d), "--no-progress"], expect))

    def flip(rel: str, where: float, digit: bool = False):
        """Flip the low bit of the byte at `where` (of the file's length); digit=True moves on
        to the next digit first, so JSON stays valid and only the checksum can tell."""

        def edit(step: Path, d: Path) -> None:
            data = bytearray((step / rel).read_bytes())
            i = int(len(data) * where)
            while digit and not chr(data[i]).isdigit():
                i += 1
            data[i] ^= 0x01
            (step / rel).write_bytes(bytes(data))

        return edit

    def resign(mutate):
        return lambda step, d: sign(step / "state.json", mutate)

    def step_file(rel: str, data: bytes | str):
        return lambda step, d: (step / rel).write_bytes(
            data if isinstance(data, bytes) else data.encode()
        )

    def members(value):
        return resign(lambda s: top(s, "members", value))

    ckpt_case("tensors-flipped-byte", "does not match its checksum", flip("state.safetensors", 0.9))
    ckpt_case("json-flipped-byte", "checksum", flip("state.json", 0.6, digit=True))
    ckpt_case("step-negative", "step must be an integer in", resign(lambda s: top(s, "step", -100)))
    ckpt_case("step-huge", "step must be an integer in", resign(lambda s: top(s, "step", 10**12)))
    ckpt_case("step-string", "step must be an integer in", resign(lambda s: top(s, "step", "9")))
    ckpt_case("scale-string", "scale must be", resign(lambda s: top(s, "scale", "abc")))
    ckpt_case("scale-zero", "scale must be", resign(lambda s: top(s, "scale", 0.0)))
    ckpt_case("members-empty", "members must be a non-empty list", members([]))
    ckpt_case("members-int", "members must be a non-empty list", members(7))
    ckpt_case(
        "train-config-list",
        "train_config must be an object",
        resign(lambda s: top(s, "train_config", [1])),
    )  # noqa: E501
    ckpt_case(
        "missing-tensor-ref",
        "missing tensor",
        resign(lambda s: top(s, "torch_rng", {"__tensor__": "nope"})),
    )  # noqa: E501
    ckpt_case(
        "json-truncated", "unreadable checkpoint", step_file("state.json", '{"format": "saekit-che')
    )  # noqa: E501
    ckpt_case("json-deep", "nested too deeply", step_file("state.json", deep()))
    ckpt_case("json-list", "not a saekit checkpoint", step_file("state.json", "[]"))
    ckpt_case(
        "tensors-pickle", "does not match its checksum", step_file("state.safetensors", pickled)
    )  # noqa: E501
    ckpt_case("tensors-empty", "does not match its checksum", step_file("state.safetensors", b""))
    ckpt_case(
        "dir-symlink-loop",
        "no usable checkpoint",
        lambda step, d: (shutil.rmtree(step), os.symlink(step, step)),
    )  # noqa: E501
    ckpt_case(
        "run-json-deep", "not valid JSON", lambda step, d: (d / "run.json").write_text(deep())
    )  # noqa: E501
    ckpt_case(
        "run-json-steps-string",
        "--steps must be",
        lambda step, d: (d / "run.json").write_text(
            json.dumps(
                {
                    "settings": {
                        **json.loads((d / "run.json").read_text())["settings"],
                        "steps": "abc",
                    }
                }
            )
        ),
    )  # noqa: E501
    ckpt_case(
        "run-json-no-settings",
        "no 'settings' object",
        lambda step, d: (d / "run.json").write_text("{}"),
    )  # noqa: E501
    ckpt_case("run-json-missing", "no run.json", lambda step, d: (d / "run.json").unlink())

    # ---- activation cache manifests and shards -------------------------------------------
    def cache_case(name: str, edit) -> None:
        d = work / "cache" / name
        shutil.copytree(cache, d, symlinks=True)
        edit(d)
        argv = ["train", "--data", f"cache:{d}", "--steps", "2", "--batch-size", "16",
                "--n-latents", "32", "--k", "2", "--eval-tokens", "16", "--no-progress",
                "--threads", "1", "--out", str(work / "cache-runs" / name)]  # fmt: skip
        out.append((f"manifest/{name}", argv, ""))

    def manifest(mutate):
        def edit(d: Path) -> None:
            m = json.loads((d / "manifest.json").read_text())
            mutate(m)
            (d / "manifest.json").write_text(json.dumps(m))

        return edit

    def shard0(m):
        return m["hookpoints"]["model.layers.1"]["splits"]["train"]["shards"][0]

    cache_case("not-json", lambda d: (d / "manifest.json").write_text("{"))
    cache_case("deep", lambda d: (d / "manifest.json").write_text(deep()))
    cache_case("list", lambda d: (d / "manifest.json").write_text("[]"))
    cache_case("hookpoints-list", manifest(lambda m: m.update(hookpoints=[])))
    cache_case("hookpoints-int", manifest(lambda m: m.update(hookpoints=5)))
    cache_case(
        "splits-missing", manifest(lambda m: m["hookpoints"]["model.layers.1"].pop("splits"))
    )  # noqa: E501
    cache_case("shard-bytes-string", manifest(lambda m: shard0(m).update(bytes="x")))
    cache_case("shard-outside", manifest(lambda m: shard0(m).update(file="../../../etc/passwd")))
    cache_case("n-tokens-negative", manifest(lambda m: shard0(m).update(n_tokens=-1)))
    cache_case(
        "dtype-evil",
        manifest(
            lambda m: m["hookpoints"]["model.layers.1"]["arrays"]["x"].update(dtype="__import__")
        ),
    )  # noqa: E501
    cache_case(
        "d-in-huge",
        manifest(lambda m: m["hookpoints"]["model.layers.1"]["arrays"]["x"].update(shape=[10**12])),
    )  # noqa: E501
    cache_case("version-string", manifest(lambda m: m.update(format_version="x")))

    def shard_pickle(d: Path) -> None:
        m = json.loads((d / "manifest.json").read_text())
        (d / shard0(m)["file"]).write_bytes(pickled)

    cache_case("shard-pickle", shard_pickle)

    # ---- eval.json (read by info and report) ---------------------------------------------
    def eval_case(name: str, text: str) -> None:
        d = work / "eval" / name
        shutil.copytree(sae, d, symlinks=True)
        (d / "eval.json").write_text(text)
        out.append((f"eval/{name}/info", ["info", str(d)], "eval.json"))
        html = str(work / "eval-reports" / f"{name}.html")
        out.append((f"eval/{name}/report", ["report", str(d), "-o", html], ""))

    good = json.loads((sae / "eval.json").read_text())
    eval_case("not-json", "{")
    eval_case("deep", deep())
    eval_case("list", "[1]")
    eval_case("core-string", json.dumps({**good, "core": "x"}))
    eval_case("fvu-string", json.dumps({**good, "core": {**good["core"], "fvu": "abc"}}))
    eval_case("sae-int", json.dumps({**good, "sae": 5}))
    return out


def main() -> None:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    marker = work / "PWNED"
    run, cache = make_base(work)
    results = []
    for name, argv, expect in cases(work, run, cache, marker):
        log = work / "logs" / name.replace("/", "__")
        log.parent.mkdir(parents=True, exist_ok=True)
        r = forkrun.run_bounded(argv, log, MEMORY)
        lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
        results.append({
            "name": name, "code": r["code"], "lines": lines, "expect": expect,
            "rss_growth_mb": round(r["rss_growth"] / 2**20, 1), "seconds": round(r["seconds"], 2),
        })  # fmt: skip
    print(json.dumps({"cases": results, "marker": marker.exists()}))


if __name__ == "__main__":
    main()
