"""Other libraries' SAE files, both directions: SAELens, sparsify, dictionary_learning, and
an SAEBench view. Imported SAEs are ordinary saekit SAEs (see base.py)."""

from saekit.interop.base import InteropError
from saekit.interop.hookpoints import HookpointError, module_to_tl, tl_to_module
from saekit.interop.io import FORMATS, WRITABLE, convert, detect_format, load, read, write
from saekit.interop.saebench import SAEBenchAdapter

__all__ = [
    "FORMATS",
    "WRITABLE",
    "HookpointError",
    "InteropError",
    "SAEBenchAdapter",
    "convert",
    "detect_format",
    "load",
    "module_to_tl",
    "read",
    "tl_to_module",
    "write",
]
