"""Text sources, a document-level held-out split, and tokenisation into fixed-length contexts.

A corpus yields `Document`s lazily in a seeded order: nothing reads or tokenises more text
than the caller consumes. Sources:

- `TextListCorpus`: strings in memory;
- `FileCorpus`: local ``.txt`` (blank-line separated paragraphs), ``.jsonl`` (a text field)
  and ``.parquet`` (a text column; needs pyarrow) files, or directories of them;
- `HFCorpus`: a Hugging Face dataset by name, streamed (needs ``datasets`` and the hub);
- `SaeProbesCorpus`: the offline default, real text shipped in the ``sae-probes`` wheel
  (news, reviews, web text, abstracts, Q&A, code), read from its ``.csv.zst`` files without
  importing the package.

Held-out split: a document is held out iff a hash of its *text* falls below
``heldout_fraction``. The split is therefore the same whatever the seed, the order or the
subset read, and duplicated texts (the sae-probes files share some rows) can never sit on
both sides. Exact duplicates are also skipped within one pass.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import random
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from saekit.data.models import package_dir
from saekit.data.splits import HELDOUT, check_split

Split = Literal["train", "heldout", "all"]  # `saekit.data.splits`, or every document
HELDOUT_FRACTION = 0.02

# Natural-text datasets of sae-probes (one per family of near-duplicate files), mixed in
# equal shares of characters: news, reviews, web and Wikidata text, forum answers, medical
# abstracts, short scenarios, QA pairs and code. Left out: label-only files (place names,
# numbers), lower-cased/space-damaged text (98_cancer_cat, 113_movie_sent, 94_ai_gen) and
# 112_amzn_rev (a copy of 111_yelp_data with escaped newlines).
DEFAULT_SAE_PROBES_DATASETS = (
    "100_news_fake",
    "161_agnews_0",
    "157_amazon_5star",
    "57_wikidatais_alive",
    "45_context_ans",
    "101_disease_class",
    "48_cm_correct",
    "90_glue_qnli",
    "86_social_iqa",
    "159_code_Python",
)


@dataclass(frozen=True)
class Document:
    """One document. doc_id is stable for a given corpus definition (not a row in a shuffle)."""

    doc_id: int
    text: str


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def is_heldout(text: str, fraction: float) -> bool:
    """Deterministic, order-free held-out membership from the text's hash."""
    return _held_out_hash(text_hash(text), fraction)


def _held_out_hash(h: bytes, fraction: float) -> bool:
    return int.from_bytes(h, "big") / 2**64 < fraction


class TextCorpus:
    """Base class: subclasses yield (doc_id, text) in a seeded order from `_documents`."""

    heldout_fraction: float = HELDOUT_FRACTION

    def _documents(self, seed: int) -> Iterator[Document]:
        raise NotImplementedError

    def documents(self, split: Split = "train", seed: int = 0) -> Iterator[Document]:
        """Documents of ``split`` ("train", "heldout" or "all") in the order set by ``seed``."""
        if split != "all":
            check_split(split)
        seen: set[bytes] = set()
        for doc in self._documents(seed):
            if not doc.text or not doc.text.strip():
                continue
            h = text_hash(doc.text)
            if h in seen:
                continue
            seen.add(h)
            held = _held_out_hash(h, self.heldout_fraction)
            if split == "all" or held == (split == HELDOUT):
                yield doc

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


def _shuffled(items: Iterable[Document], buffer: int, rng: random.Random) -> Iterator[Document]:
    """Seeded shuffle with a bounded buffer: memory stays O(buffer) on huge sources."""
    pool: list[Document] = []
    for item in items:
        pool.append(item)
        if len(pool) >= buffer:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


class TextListCorpus(TextCorpus):
    """In-memory strings; doc_id = list index."""

    def __init__(self, texts: Sequence[str], heldout_fraction: float = HELDOUT_FRACTION):
        self.texts = list(texts)
        self.heldout_fraction = heldout_fraction

    def _documents(self, seed: int) -> Iterator[Document]:
        order = list(range(len(self.texts)))
        random.Random(seed).shuffle(order)
        return (Document(i, self.texts[i]) for i in order)

    def describe(self) -> dict[str, Any]:
        return {
            "source": "texts",
            "n_documents": len(self.texts),
            "heldout_fraction": self.heldout_fraction,
        }


class FileCorpus(TextCorpus):
    """Local .txt / .jsonl / .parquet files (or directories of them), read lazily.

    doc_id = (file index << 32) | document index within the file. Order: files shuffled by
    the seed, documents through a seeded shuffle buffer of ``shuffle_buffer`` documents.
    """

    SUFFIXES = (".txt", ".jsonl", ".parquet")

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        text_field: str = "text",
        heldout_fraction: float = HELDOUT_FRACTION,
        shuffle_buffer: int = 1024,
    ):
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.files = sorted({f for p in paths for f in _expand(Path(p), self.SUFFIXES)})
        if not self.files:
            raise FileNotFoundError(f"no {'/'.join(self.SUFFIXES)} files in {paths}")
        self.text_field = text_field
        self.heldout_fraction = heldout_fraction
        self.shuffle_buffer = shuffle_buffer

    def _documents(self, seed: int) -> Iterator[Document]:
        rng = random.Random(seed)
        order = list(range(len(self.files)))
        rng.shuffle(order)

        def stream() -> Iterator[Document]:
            for i in order:
                for j, text in enumerate(_read_texts(self.files[i], self.text_field)):
                    yield Document((i << 32) | j, text)

        return _shuffled(stream(), self.shuffle_buffer, rng)

    def describe(self) -> dict[str, Any]:
        return {
            "source": "files",
            "files": [str(f) for f in self.files],
            "text_field": self.text_field,
            "heldout_fraction": self.heldout_fraction,
        }


def _expand(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_dir():
        return [f for f in path.rglob("*") if f.suffix in suffixes and f.is_file()]
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.suffix not in suffixes:
        raise ValueError(f"unsupported text file {path} (use {', '.join(suffixes)})")
    return [path]


def _read_texts(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        yield from _txt_paragraphs(path)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if text_field not in row:
                    raise KeyError(f"{path}:{n} has no {text_field!r} field (keys: {list(row)})")
                yield str(row[text_field])
    else:
        yield from _parquet_texts(path, text_field)


def _txt_paragraphs(path: Path) -> Iterator[str]:
    """Blank-line separated paragraphs, streamed line by line."""
    lines: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).strip()
                lines = []
    if lines:
        yield "".join(lines).strip()


def _parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise KeyError(f"{path} has no column {text_field!r} (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        yield from (str(t) for t in batch.column(0).to_pylist() if t is not None)


class HFCorpus(TextCorpus):
    """A Hugging Face dataset, streamed (online). doc_id = row index in the dataset split."""

    def __init__(
        self,
        name: str,
        config: str | None = None,
        hf_split: str = "train",
        text_field: str = "text",
        heldout_fraction: float = HELDOUT_FRACTION,
        shuffle_buffer: int = 1024,
    ):
        if importlib.util.find_spec("datasets") is None:
            raise ImportError(
                f"corpus 'hf:{name}' needs the datasets package: pip install datasets"
            )
        self.name, self.config, self.hf_split = name, config, hf_split
        self.text_field = text_field
        self.heldout_fraction = heldout_fraction
        self.shuffle_buffer = shuffle_buffer

    def _documents(self, seed: int) -> Iterator[Document]:
        import datasets

        ds = datasets.load_dataset(self.name, self.config, split=self.hf_split, streaming=True)
        rows = (Document(i, str(r[self.text_field])) for i, r in enumerate(ds))
        return _shuffled(rows, self.shuffle_buffer, random.Random(seed))

    def describe(self) -> dict[str, Any]:
        return {
            "source": "huggingface",
            "name": self.name,
            "config": self.config,
            "split": self.hf_split,
            "text_field": self.text_field,
            "heldout_fraction": self.heldout_fraction,
        }


class SaeProbesCorpus(TextCorpus):
    """Offline default text: datasets from the ``sae-probes`` wheel (``.csv.zst``, column
    ``prompt``). Sources are interleaved so each has emitted about the same number of
    characters; each source's rows are permuted by the seed. A file is read only when its
    first document is needed. doc_id = (dataset number << 32) | row.
    """

    def __init__(
        self,
        datasets: Sequence[str] = DEFAULT_SAE_PROBES_DATASETS,
        heldout_fraction: float = HELDOUT_FRACTION,
    ):
        root = package_dir("sae_probes")
        if root is None:
            raise ModuleNotFoundError(
                "the default corpus needs the sae-probes data: pip install --no-deps sae-probes"
            )
        self.data_dir = root / "data" / "cleaned_data"
        self.datasets = list(datasets)
        missing = [d for d in self.datasets if not (self.data_dir / f"{d}.csv.zst").is_file()]
        if missing:
            raise FileNotFoundError(f"sae-probes datasets not found: {missing}")
        self.heldout_fraction = heldout_fraction

    def _rows(self, i: int, seed: int) -> Iterator[Document]:
        import pandas as pd

        name = self.datasets[i]
        df = pd.read_csv(self.data_dir / f"{name}.csv.zst", compression="zstd", usecols=["prompt"])
        texts = df["prompt"].astype("string").fillna("").tolist()
        order = list(range(len(texts)))
        random.Random(f"{seed}/{name}").shuffle(order)  # str seeds are stable across runs
        number = int(name.split("_", 1)[0])
        return (Document((number << 32) | j, texts[j]) for j in order)

    def _documents(self, seed: int) -> Iterator[Document]:
        streams: list[Iterator[Document] | None] = [None] * len(self.datasets)
        chars = [0] * len(self.datasets)
        live = set(range(len(self.datasets)))
        while live:
            i = min(live, key=lambda k: (chars[k], k))  # the source furthest behind
            if streams[i] is None:
                streams[i] = self._rows(i, seed)
            doc = next(streams[i], None)
            if doc is None:
                live.discard(i)
                continue
            chars[i] += len(doc.text)
            yield doc

    def describe(self) -> dict[str, Any]:
        return {
            "source": "sae-probes",
            "version": importlib.metadata.version("sae-probes"),
            "datasets": self.datasets,
            "heldout_fraction": self.heldout_fraction,
        }


def open_corpus(spec: str | TextCorpus | Sequence[str], text_field: str = "text") -> TextCorpus:
    """A corpus from a short description: "default" / "sae-probes", a local file or
    directory, "hf:NAME[:CONFIG]", an existing TextCorpus, or a list of strings."""
    if isinstance(spec, TextCorpus):
        return spec
    if not isinstance(spec, str):
        return TextListCorpus(spec)
    if spec in ("default", "sae-probes"):
        return SaeProbesCorpus()
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        return HFCorpus(name, config or None, text_field=text_field)
    if Path(spec).exists():
        return FileCorpus(spec, text_field=text_field)
    raise ValueError(
        f"unknown corpus {spec!r}: use 'default', a .txt/.jsonl/.parquet path or directory, "
        "or 'hf:NAME[:CONFIG]'"
    )


# ---- tokenisation -------------------------------------------------------------------------


@dataclass
class TokenizedCorpus:
    """Fixed-length contexts.

    input_ids, attention_mask: [n_contexts, ctx_len] int64 (mask 0 = padding).
    doc_ids: [n_contexts, ctx_len] int64, the Document.doc_id of each token; -1 for tokens
      added by saekit (BOS, document separators, padding).
    special_ids: token ids never used as activations (BOS, EOS, PAD, ...).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    doc_ids: torch.Tensor
    special_ids: tuple[int, ...]
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def ctx_len(self) -> int:
        return self.input_ids.shape[1]

    def subset(self, index: torch.Tensor | slice) -> TokenizedCorpus:
        return TokenizedCorpus(
            self.input_ids[index],
            self.attention_mask[index],
            self.doc_ids[index],
            self.special_ids,
            dict(self.description),
        )


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer itself puts BOS first (Gemma does, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def tokenize_corpus(
    tokenizer: Any,
    corpus: str | TextCorpus | Sequence[str],
    n_contexts: int,
    ctx_len: int = 128,
    split: Split = "train",
    seed: int = 0,
    prepend_bos: bool | None = None,
    packing: bool = True,
    max_doc_tokens: int | None = None,
) -> TokenizedCorpus:
    """The first ``n_contexts`` contexts of ``corpus`` in seeded document order (see
    `iter_context_batches` for the options). Returns fewer contexts, with a warning, when the
    split runs out."""
    if n_contexts <= 0:
        raise ValueError(f"n_contexts must be positive, got {n_contexts}")
    batches = iter_context_batches(
        tokenizer, corpus, n_contexts, ctx_len, split, seed, prepend_bos, packing, max_doc_tokens
    )
    out = next(batches, None)
    if out is None:
        raise ValueError(f"corpus split {split!r} produced no context of {ctx_len} tokens")
    if len(out) < n_contexts:
        warnings.warn(
            f"corpus split {split!r} ran out: {len(out)} of {n_contexts} contexts", stacklevel=2
        )
    return out


def iter_context_batches(
    tokenizer: Any,
    corpus: str | TextCorpus | Sequence[str],
    batch_size: int,
    ctx_len: int = 128,
    split: Split = "train",
    seed: int = 0,
    prepend_bos: bool | None = None,
    packing: bool = True,
    max_doc_tokens: int | None = None,
) -> Iterator[TokenizedCorpus]:
    """Contexts of ``corpus`` as TokenizedCorpus batches of ``batch_size``, read lazily.

    packing=True: documents are concatenated, each followed by EOS, and cut into contexts of
      ``ctx_len`` tokens (no padding). packing=False: one document per context, truncated,
      right-padded with the pad token.
    prepend_bos: start every context with BOS; None follows the tokenizer's own habit.
    max_doc_tokens: keep at most this many tokens of each document, so that a few contexts
      (an evaluation set) are not filled by one long document.
    The k-th context is the same whatever the batch size, so a run asking for more contexts
    extends a shorter one. The last batch may be smaller.
    """
    if batch_size <= 0 or ctx_len < 2:
        raise ValueError(f"need batch_size > 0 and ctx_len >= 2, got {batch_size}, {ctx_len}")
    corpus = open_corpus(corpus)
    use_bos = adds_bos(tokenizer) if prepend_bos is None else prepend_bos
    if use_bos and tokenizer.bos_token_id is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
    bos = tokenizer.bos_token_id if use_bos else None
    description = {
        "corpus": corpus.describe(),
        "split": split,
        "seed": seed,
        "ctx_len": ctx_len,
        "packing": packing,
        "prepend_bos": use_bos,
        "max_doc_tokens": max_doc_tokens,
    }
    docs = corpus.documents(split, seed)
    rows = _context_rows(tokenizer, docs, ctx_len - use_bos, packing, max_doc_tokens)
    while batch := [r for _, r in zip(range(batch_size), rows)]:
        yield _to_tensors(batch, ctx_len, bos, tokenizer, dict(description))


def _context_rows(
    tokenizer: Any,
    docs: Iterator[Document],
    body: int,
    packing: bool,
    max_doc_tokens: int | None = None,
    docs_per_call: int = 32,
) -> Iterator[tuple[list[int], list[int]]]:
    """(token ids, doc ids) of each context body, tokenising documents a few at a time."""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    buf_ids: list[int] = []
    buf_docs: list[int] = []
    for chunk in _chunks(docs, docs_per_call):
        encoded = tokenizer([d.text for d in chunk], add_special_tokens=False)["input_ids"]
        for doc, ids in zip(chunk, encoded):
            ids = ids[:max_doc_tokens]  # [:None] keeps everything
            if not packing:
                if ids:
                    yield ids[:body], [doc.doc_id] * min(len(ids), body)
                continue
            buf_ids += ids + sep
            buf_docs += [doc.doc_id] * len(ids) + [-1] * len(sep)
            while len(buf_ids) >= body:
                yield buf_ids[:body], buf_docs[:body]
                del buf_ids[:body], buf_docs[:body]


def _chunks(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for d in docs:
        chunk.append(d)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _to_tensors(
    rows: list[tuple[list[int], list[int]]],
    ctx_len: int,
    bos: int | None,
    tokenizer: Any,
    description: dict[str, Any],
) -> TokenizedCorpus:
    n = len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    description["n_contexts"] = n
    input_ids = torch.full((n, ctx_len), pad, dtype=torch.long)
    attention = torch.zeros((n, ctx_len), dtype=torch.long)
    doc_ids = torch.full((n, ctx_len), -1, dtype=torch.long)
    start = int(bos is not None)
    for r, (ids, docs) in enumerate(rows):
        end = start + len(ids)
        input_ids[r, start:end] = torch.tensor(ids)
        doc_ids[r, start:end] = torch.tensor(docs)
        attention[r, :end] = 1
    if bos is not None:
        input_ids[:, 0] = bos
    specials = {
        i
        for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        if i is not None
    }
    specials |= set(getattr(tokenizer, "all_special_ids", []))
    return TokenizedCorpus(input_ids, attention, doc_ids, tuple(sorted(specials)), description)
