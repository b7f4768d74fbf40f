"""On-disk activation cache: sharded safetensors per hookpoint and a JSON manifest.

format  the layout, the manifest, and the shard checks (`load_manifest`, `verify_cache`,
        `read_cache`);
writer  `write_cache`: a model's activations over a corpus, captured into a new cache;
stream  `CacheStream`: a cache read back as a shuffled, exactly resumable ActivationStream.
"""

from saekit.data.cache.format import (
    CacheError,
    load_manifest,
    read_cache,
    split_names,
    verify_cache,
)
from saekit.data.cache.stream import CacheStream
from saekit.data.cache.writer import write_cache

__all__ = [
    "CacheError",
    "CacheStream",
    "load_manifest",
    "read_cache",
    "split_names",
    "verify_cache",
    "write_cache",
]
