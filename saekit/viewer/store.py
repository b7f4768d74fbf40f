"""Read side of the browser data directory: the latent list (search, sort, pagination), one
latent's page, and live activations of typed text. Every input is validated here, so the
HTTP layer only maps `BadRequest` / `NotFound` to 400 / 404."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from saekit.viewer.build import DATA_FORMAT, DATA_VERSION
from saekit.viewer.text import text_pieces

SORT_KEYS = ("id", "density", "max_act", "mean_act", "simulator_r")
MAX_PER_PAGE = 200
MAX_QUERY = 200
MAX_TEXT_CHARS = 2000
MAX_TEXT_TOKENS = 256


class BadRequest(ValueError):
    """Malformed input: 400."""


class NotFound(LookupError):
    """No such resource: 404."""


def parse_int(text: str | None, name: str, lo: int, hi: int, default: int | None = None) -> int:
    """A decimal integer in [lo, hi]; anything else (signs, huge numbers, junk) is a 400."""
    if text is None or text == "":
        if default is None:
            raise BadRequest(f"missing {name}")
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise BadRequest(f"{name} must be a non-negative integer")
    value = int(text)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


class BrowserData:
    """The files written by `saekit.viewer.build.build`, loaded once (shards on demand)."""

    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).resolve()
        meta_file = self.root / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{self.root} has no browser data; build it with: saekit browse <sae_dir> --build"
            )
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != DATA_FORMAT:
            raise ValueError(f"{self.root}: not a saekit browser data directory")
        version = self.meta.get("format_version", 1)
        if not isinstance(version, int) or version > DATA_VERSION:
            raise ValueError(
                f"{meta_file}: format_version {version!r}; this saekit reads 1 to {DATA_VERSION}"
                " (rebuild with: saekit browse <sae_dir> --build)"
            )
        self.index = json.loads((self.root / "index.json").read_text())
        self.tokens: dict[str, str] = json.loads((self.root / "tokens.json").read_text())
        self.contexts: list[list[int]] = json.loads((self.root / "contexts.json").read_text())
        # Version 1 stores have no pieces: their contexts show each token decoded alone.
        pieces_file = self.root / "pieces.json"
        self.pieces: list[list[str]] | None = (
            json.loads(pieces_file.read_text()) if pieces_file.is_file() else None
        )
        self.n_latents = int(self.meta["sae"]["n_latents"])
        self.shard_size = int(self.meta["settings"]["shard_size"])
        # One string per latent; \x00 keeps a query from matching across two tokens.
        self._search_text = [
            "\x00".join(top + logit).lower()
            for top, logit in zip(self.index["top_tokens"], self.index["logit_top"])
        ]
        self._orders: dict[str, np.ndarray] = {}

    # ---- list ---------------------------------------------------------------------------
    def _order(self, key: str) -> np.ndarray:
        """Latent ids sorted ascending by `key` (missing values first), cached."""
        if key not in self._orders:
            if key == "id":
                order = np.arange(self.n_latents)
            else:
                col = np.array(
                    [np.nan if v is None else v for v in self.index[key]], dtype=np.float64
                )
                order = np.lexsort((np.arange(self.n_latents), np.nan_to_num(col, nan=-np.inf)))
            self._orders[key] = order
        return self._orders[key]

    def list_latents(self, params: dict[str, str]) -> dict[str, Any]:
        """params: q (id or token text), sort (SORT_KEYS), order (asc|desc), page, per_page."""
        sort = params.get("sort") or "density"
        if sort not in SORT_KEYS:
            raise BadRequest(f"sort must be one of {', '.join(SORT_KEYS)}")
        order = params.get("order") or ("asc" if sort == "id" else "desc")
        if order not in ("asc", "desc"):
            raise BadRequest("order must be asc or desc")
        per_page = parse_int(params.get("per_page"), "per_page", 1, MAX_PER_PAGE, 50)
        page = parse_int(params.get("page"), "page", 0, 10**9, 0)
        q = (params.get("q") or "").strip()
        if len(q) > MAX_QUERY:
            raise BadRequest(f"query longer than {MAX_QUERY} characters")
        ids = self._order(sort)
        if order == "desc":
            ids = ids[::-1]
        if q:
            ids = ids[self._matches(q)[ids]]
        total = int(len(ids))
        rows = [self.row(int(i)) for i in ids[page * per_page : (page + 1) * per_page]]
        return {
            "total": total,
            "page": page,
            "per_page": per_page,
            "sort": sort,
            "order": order,
            "q": q,
            "rows": rows,
        }

    def _matches(self, q: str) -> np.ndarray:
        """[n_latents] bool: the id equals q, or q occurs in the latent's token strings."""
        hit = np.array([q.lower() in s for s in self._search_text], dtype=bool)
        if q.isdigit() and len(q) < 12 and int(q) < self.n_latents:
            hit[int(q)] = True
        return hit

    def row(self, i: int) -> dict[str, Any]:
        ix = self.index
        return {
            "id": i,
            "density": ix["density"][i],
            "max_act": ix["max_act"][i],
            "mean_act": ix["mean_act"][i],
            "top_tokens": ix["top_tokens"][i],
            "logit_top": ix["logit_top"][i],
            "simulator_r": ix["simulator_r"][i],
        }

    # ---- one latent -----------------------------------------------------------------------
    @functools.lru_cache(maxsize=64)  # noqa: B019 (one BrowserData per server; bounded)
    def _shard(self, number: int) -> list[dict[str, Any]]:
        path = self.root / "latents" / f"{number:05d}.json"
        return json.loads(path.read_text())

    def latent(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n_latents:
            raise NotFound(f"latent {i} does not exist (this SAE has {self.n_latents})")
        d = dict(self._shard(i // self.shard_size)[i % self.shard_size])
        tok = self.tokens
        d["top"] = [self.example(e) for e in d.get("top", [])]
        d["quantiles"] = [
            {**q, "examples": [self.example(e) for e in q["examples"]]}
            for q in d.get("quantiles", [])
        ]
        for key in ("logit_top", "logit_bottom", "top_tokens"):
            if key in d:
                d[key] = [[tok.get(str(t[0]), "?"), *t[1:]] for t in d[key]]
        d["neighbours"] = [
            {"id": j, "cos": c, "top_tokens": self.index["top_tokens"][j]}
            for j, c in d.get("neighbours", [])
        ]
        return d

    def example(self, e: list[Any]) -> dict[str, Any]:
        """[ctx, pos, window] -> {"tokens": [...], "acts": [...], "center": k}."""
        ctx, pos, window = e
        s = self.meta["settings"]
        lo = max(0, pos - s["before"])
        hi = min(len(self.contexts[ctx]) - 1, pos + s["after"])
        acts = dict((p, v) for p, v in window)
        if self.pieces is not None:
            text = self.pieces[ctx][lo : hi + 1]
        else:
            text = [self.tokens.get(str(t), "?") for t in self.contexts[ctx][lo : hi + 1]]
        return {
            "tokens": text,
            "acts": [acts.get(p, 0.0) for p in range(lo, hi + 1)],
            "center": pos - lo,
        }


class LiveEncoder:
    """Runs typed text through the model and the SAE (loaded on first use, one at a time)."""

    def __init__(self, meta: dict[str, Any], sae_dir: str | Path | None):
        self.meta = meta
        self.sae_dir = sae_dir or meta["sae"].get("path")
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any] | None = None

    def _load(self) -> tuple[Any, Any, Any]:
        if self._loaded is None:
            from saekit.evaluation.evaluate import ModelSource
            from saekit.formats.native import load

            if not self.sae_dir:
                raise NotFound("live activations need the SAE directory")
            model, tok = ModelSource(
                self.meta["model"], self.meta["hookpoint"], self.meta["which"]
            ).load()
            self._loaded = (model, tok, load(self.sae_dir))
        return self._loaded

    def activate(self, text: str, top: int = 5, focus: int | None = None) -> dict[str, Any]:
        """Per token: the text it adds (text_pieces), whether the SAE sees it, and its `top`
        latents by value; with `focus`, that latent's value at every token too."""
        import torch

        from saekit.data.hooks import capture
        from saekit.data.masking import token_mask

        if not isinstance(text, str) or not text.strip():
            raise BadRequest("text must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise BadRequest(f"text longer than {MAX_TEXT_CHARS} characters")
        with self._lock:
            model, tok, sae = self._load()
            ids = tok(text, add_special_tokens=True)["input_ids"][:MAX_TEXT_TOKENS]
            input_ids = torch.tensor([ids])
            am = torch.ones_like(input_ids)
            hp, which = self.meta["hookpoint"], self.meta["which"]
            with torch.no_grad():
                act = capture(model, input_ids, am, [hp], which)[hp][0].float()
                codes = sae.encode(act)
            specials = set(getattr(tok, "all_special_ids", []))
            keep = token_mask(input_ids, am, sorted(specials))[0]
        values, latents = codes.topk(min(top, codes.shape[1]), dim=-1)
        out = []
        for p, piece in enumerate(text_pieces(tok, ids)):
            row = [[int(j), round(float(v), 4)] for j, v in zip(latents[p], values[p]) if v != 0]
            out.append({"token": piece, "kept": bool(keep[p]), "latents": row if keep[p] else []})
        totals: dict[int, float] = {}
        for r in out:
            for j, v in r["latents"]:
                totals[j] = totals.get(j, 0.0) + abs(v)
        summary = sorted(totals.items(), key=lambda kv: -kv[1])[:20]
        result: dict[str, Any] = {"tokens": out, "summary": [[j, round(v, 4)] for j, v in summary]}
        if focus is not None:
            result["focus"] = {
                "latent": focus,
                "acts": [
                    round(float(codes[p, focus]), 4) if keep[p] else 0.0 for p in range(len(ids))
                ],
            }
        return result
