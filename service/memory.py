"""Process memory: resident and peak memory from /proc, how much a call makes the peak grow, and
giving freed image buffers back to the OS."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
GLIBC_M_MMAP_THRESHOLD = -3  # mallopt parameter number from <malloc.h>


def status_bytes(field: str, pid: int | str = "self") -> int | None:
    """One memory field of /proc/PID/status (VmRSS, VmHWM...) in bytes; None where /proc does not
    say (not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def current_rss_bytes() -> int | None:
    """This process's resident memory now."""
    return status_bytes("VmRSS")


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory (VmHWM), or None where /proc does not say.

    Not getrusage's ru_maxrss: on Linux that survives exec, so it starts at the parent's peak.
    """
    return status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Start the peak afresh from the current RSS, so earlier work does not hide the next peak.
    False where the kernel does not allow it."""
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
    except OSError:
        return False
    return True


def measure_peak_growth(call: Callable[[], object]) -> int | None:
    """Bytes by which ``call`` raises the process's peak resident memory above where it started.

    Resets the kernel's peak counter first, so earlier peaks (model loading) do not hide it.
    None where that is not possible (not Linux, or /proc not writable); ``call`` runs either way.
    """
    before = current_rss_bytes() if reset_peak_rss() else None
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
