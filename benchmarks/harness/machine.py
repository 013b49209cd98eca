"""The machine a benchmark runs on: what it is (for the JSON), how busy other processes
keep it (a shared machine inflates step times), and waiting for its accelerator."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from typing import Any, Optional

__all__ = ["OtherLoad", "loadavg_1min", "machine_info", "synchronize", "wait_for_idle"]


def machine_info(device: Optional[str] = None) -> dict[str, Any]:
    """Platform, CPU count, RAM, torch threads and library versions; the GPU's name and
    CUDA version when ``device`` is a CUDA device."""
    import psutil
    import torch

    def version(dist: str) -> Optional[str]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "sam3": version("sam3"),
        "sam3_lora_plugin": version("sam3-lora-plugin"), "cuda_available": torch.cuda.is_available(),
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def synchronize(device: Any) -> None:
    """Wait for the kernels queued on a CUDA ``device``; nothing on CPU."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _cpu_seconds() -> Optional[tuple[float, float]]:
    """Machine-wide (busy, total) CPU seconds from ``/proc/stat`` (None without procfs)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


class OtherLoad:
    """CPU cores used by other processes since construction: the machine's busy CPU
    seconds (``/proc/stat``) less this process's CPU seconds, over the wall-clock seconds.
    """
    def __init__(self) -> None:
        self.start = _cpu_seconds()
        self.own = time.process_time()
        self.wall = time.perf_counter()

    def stop(self) -> Optional[float]:
        """The cores other processes used since construction (None without procfs)."""
        end = _cpu_seconds()
        if self.start is None or end is None:
            return None
        wall = max(time.perf_counter() - self.wall, 1e-6)
        others = (end[0] - self.start[0]) - (time.process_time() - self.own)
        return max(others, 0.0) / wall


def wait_for_idle(max_wait_s: float, max_cores: float = 0.2, window_s: float = 2.0) -> float:
    """Wait until other processes use < ``max_cores`` cores over ``window_s``, at most
    ``max_wait_s``; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        meter = OtherLoad()
        time.sleep(window_s)
        used = meter.stop()
        if used is None or used < max_cores:
            break
    return time.perf_counter() - start


def loadavg_1min() -> Optional[float]:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
