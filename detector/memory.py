"""How the process keeps memory: glibc is asked to reuse freed memory instead of unmapping it."""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt parameters


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of unmapping it.

    The kernels allocate arrays of a few MB per tile batch; by default glibc
    maps each one afresh and every page then faults on first touch, which on
    these virtual machines costs more than the arithmetic (see
    ``../shared/PERFORMANCE.md``).  A no-op where the C library is not glibc.
    Called by the CLI and in each batch worker process.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, 512 * 2**20)
    libc.mallopt(M_TOP_PAD, 256 * 2**20)


def give_back_freed_memory() -> None:
    """Return the memory freed so far to the system (``malloc_trim``): between two phases of a scan, whose
    threads would otherwise each keep what the other freed.  A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)
