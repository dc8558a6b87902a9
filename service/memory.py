"""Process memory: how much a call makes the peak grow, and giving freed image buffers back to the OS."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
GLIBC_M_MMAP_THRESHOLD = -3  # mallopt parameter number from <malloc.h>


def _status_bytes(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory (VmHWM), or None where /proc does not say."""
    return _status_bytes("VmHWM")


def measure_peak_growth(call: Callable[[], object]) -> int | None:
    """Bytes by which ``call`` raises the process's peak resident memory above where it started.

    Resets the kernel's peak counter first, so earlier peaks (model loading) do not hide it.
    None where that is not possible (not Linux, or /proc not writable); ``call`` runs either way.
    """
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
        before = _status_bytes("VmRSS")
    except OSError:
        before = None
    call()
    after = peak_rss_bytes()
    if before is None or after is None:
        return None
    return max(0, after - before)


def return_freed_buffers_to_the_os() -> None:
    """Make glibc serve allocations >= 1 MiB with mmap, so image buffers go back to the OS when freed.

    Otherwise its adaptive threshold soon keeps such buffers in per-thread heaps, and a process
    that handled one 24 MP upload holds on to a few hundred MB it no longer uses.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(GLIBC_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
