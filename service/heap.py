"""Keep the worker's resident memory flat: large temporary buffers go back to the OS.

glibc serves big allocations with mmap and returns them on free, but only above a
threshold that it raises each time such a block is freed (up to 32 MB). After the
first JSON batch (a 2 MB body, its parse buffers, the answer) every later buffer of
that size comes from the heap instead, and the heap keeps what it once held: +56 MB
of RSS that never came back in the benchmark's mix. Fixing the threshold at 128 KiB
(what `MALLOC_MMAP_THRESHOLD_=131072` does, and it also stops the dynamic raise)
keeps those buffers in mmap: 308 -> 247 MB after the same requests
(`python -m benchmarks --smoke`, then again with `--env MALLOC_MMAP_THRESHOLD_=131072`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024


def mallopt(param: int, value: int) -> bool:
    """glibc's `mallopt`; False (and nothing changed) where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        ok = bool(ctypes.CDLL(name).mallopt(param, value))
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False
    if not ok:
        log.info("mallopt(%d, %d) was refused", param, value)
    return ok


def return_large_buffers_to_os(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` (see the module docstring)."""
    return mallopt(M_MMAP_THRESHOLD, threshold)
