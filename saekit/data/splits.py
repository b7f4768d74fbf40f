"""The two splits of every data source: "train", and "heldout" for evaluation.

Text is split by document (`saekit.data.corpora`: a hash of the text decides), so model
data and caches never share a document between the splits; synthetic recipes draw held-out
samples from another seed. Caches written before format version 2 call their held-out split
"eval"; they load with it renamed (`saekit.data.cache.format`).
"""

from __future__ import annotations

TRAIN = "train"
HELDOUT = "heldout"
SPLITS = (TRAIN, HELDOUT)


def check_split(split: str) -> str:
    """``split`` itself when it is a split name; otherwise a one-line ValueError."""
    if split in SPLITS:
        return split
    if split == "eval":
        raise ValueError("the held-out split is called 'heldout' (no longer 'eval')")
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
