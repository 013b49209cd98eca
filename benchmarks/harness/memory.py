"""Memory a benchmark reads: the process's resident set (now, peak, peak reset), the peak
of a ``torch.profiler`` memory profile, and the bytes ``torch.save`` writes."""

from __future__ import annotations

import resource
import sys
from typing import Any, Optional

__all__ = ["ByteCounter", "current_rss_bytes", "peak_rss_bytes", "profiler_peak_bytes",
           "reset_peak_rss", "saved_bytes"]


def profiler_peak_bytes(prof: Any) -> int:
    """Peak of the allocator's live bytes in a ``torch.profiler.profile(profile_memory=True)``:
    its ``[memory]`` alloc/free events :math:`n_e` (negative for a free) replayed in time
    order, :math:`\\max_t \\sum_{e \\le t} n_e` (bytes live before the profile are not counted)."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _status_bytes(field: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` in bytes (None without procfs)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident set size now."""
    rss = _status_bytes("VmRSS")
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss
    return rss


def peak_rss_bytes() -> int:
    """Peak RSS of this process (since the last :func:`reset_peak_rss`)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ByteCounter:
    """Write-only file object that counts bytes (``torch.save`` target)."""
    def __init__(self) -> None:
        self.nbytes = 0

    def write(self, data: bytes) -> int:
        self.nbytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def saved_bytes(obj: Any) -> int:
    """Bytes ``torch.save(obj, f)`` writes."""
    import torch

    counter = ByteCounter()
    torch.save(obj, counter)
    return counter.nbytes
