"""
Keep freed memory in the process for the next pass, instead of giving it back.

A training step and an evaluator pass allocate the same tens of megabytes of
tensors, free them, and allocate them again. glibc's ``malloc`` gives freed
memory back to the operating system once more than ``M_TRIM_THRESHOLD`` of it is
free at the top of the heap (at most 64 MiB with glibc's adaptive defaults), and
serves large blocks with fresh ``mmap`` calls, so every pass faults its memory
back in, a page at a time. On the project's 2-core machine that was a third of
the evaluator's time (0.65 s of system time per 100,000 particles, 326,000 page
faults) and made training steps jitter by 10 % (``benchmarks/README.md``).

:func:`keep_freed_memory` raises both thresholds, as the ``GLIBC_TUNABLES``
settings ``glibc.malloc.trim_threshold`` and ``glibc.malloc.mmap_threshold`` would.
The process then holds on to its peak memory, which it would reach again on the
next pass anyway. Blocks above 32 MiB (glibc's largest ``mmap`` threshold) are
still mapped afresh, which is why the evaluator's default passes keep every
tensor below that.
"""

from __future__ import annotations

import ctypes
import sys

#: ``mallopt`` parameters, from glibc's ``malloc.h``
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the largest ``mmap`` threshold glibc accepts on 64-bit machines
MAX_MMAP_THRESHOLD = 32 * 2**20


def keep_freed_memory(trim_threshold: int = 2**30) -> bool:
    """
    Let glibc keep up to ``trim_threshold`` bytes of freed memory, and serve blocks
    up to 32 MiB from it, for the rest of the process. Call it once, before the
    work; it changes no result, only how memory is recycled.

    :returns: whether it took effect: ``False`` where the C library is not glibc
        (macOS, Windows, musl), where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
