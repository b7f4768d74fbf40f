"""How tests/data/legacy/cache was written: by saekit's activation-cache format version 1
(commit 6aed9a6), whose held-out split was named "eval". Kept for the record; run from the
repo root with that commit checked out and tests/ on PYTHONPATH."""

from tiny_model import TEXTS, tiny_model, tiny_tokenizer

from saekit.data.cache import write_cache
from saekit.data.corpora import TextListCorpus

HOOKPOINTS = ["model.layers.1", "model.layers.2.mlp:in->out"]
DOCS = [f"doc {i}: {TEXTS[i % 8]} {TEXTS[(i * 3) % 8]}" for i in range(60)]

if __name__ == "__main__":
    write_cache(
        "tests/data/legacy/cache",
        tiny_model(),
        tiny_tokenizer(),
        TextListCorpus(DOCS, heldout_fraction=0.2),
        HOOKPOINTS,
        n_tokens=40,
        dtype="fp16",
        shard_tokens=16,
        eval_tokens=12,
        ctx_len=16,
        batch_size=4,
    )
