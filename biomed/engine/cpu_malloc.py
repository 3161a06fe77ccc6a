"""glibc malloc settings that keep a CPU training step's large buffers in the heap.

glibc serves an allocation above ``M_MMAP_THRESHOLD`` with fresh pages from ``mmap`` and gives
them back with ``munmap`` when it is freed; it also returns free memory at the top of the heap
to the kernel once it exceeds ``M_TRIM_THRESHOLD``. A training step allocates and frees the same
large tensors every step (the fused loss's 512 x 8192 fp32 logits chunk is 16 MiB), so by
default every step pays again for page faults and for the kernel zero-filling those pages.
PyTorch's CPU performance guide recommends preloading jemalloc or tcmalloc for this; a running
Python process cannot preload a library, but glibc's own ``mallopt`` raises both thresholds at
run time, which is what :func:`keep_heap` does. Measured on the 2-core AMD EPYC this was written
on (`lm=tiny`, batch 8, five pairs of processes run alternately): step time 0.90x-0.98x of
glibc's defaults; the tiny diffusion model's steps did not change (b1a69bb;
docs/history/2026-11-27-lm-throughput.md).

The cost is memory: the process keeps its peak heap instead of returning it between steps.
Allocations above 32 MiB (the largest mmap threshold every 64-bit glibc accepts) still use mmap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit (older versions reject more)
TRIM_THRESHOLD = 1 << 30


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the only one with these mallopt parameters), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    return _glibc() is not None


@functools.cache
def keep_heap(mmap_threshold: int = MMAP_THRESHOLD,
              trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds for the rest of the process (once: later calls
    return the first result). True when glibc accepted both; False elsewhere (musl, macOS,
    Windows), where nothing changes."""
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
