"""What every benchmark shares: the machine record of its JSON and timing summaries."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

__all__ = ["machine_info", "summarize_seconds"]


def machine_info(device: Optional[str] = None) -> dict[str, Any]:
    """Platform, CPU count, RAM, torch threads and library versions; the GPU's name and
    CUDA version when ``device`` is a CUDA device."""
    import importlib.metadata
    import platform

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


def summarize_seconds(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method), IQR and min of repeated timings in seconds."""
    import statistics

    samples = list(samples)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return {"median_s": statistics.median(samples), "q1_s": q1, "q3_s": q3,
            "iqr_s": q3 - q1, "min_s": min(samples)}
