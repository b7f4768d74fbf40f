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
    verify_cache,
)
from saekit.data.cache.stream import CacheStream, open_cache_stream
from saekit.data.cache.writer import write_cache

__all__ = [
    "CacheError",
    "CacheStream",
    "load_manifest",
    "open_cache_stream",
    "read_cache",
    "verify_cache",
    "write_cache",
]
