"""What every benchmark shares: the machine record of its JSON and timing summaries."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

__all__ = ["machine_info", "mean_std", "read_tensorboard_scalars", "summarize_seconds",
           "write_json_atomic"]


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


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), n, and the values themselves;
    NaNs and Nones are dropped and counted in ``missing``."""
    import math
    import statistics

    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"mean": statistics.fmean(kept) if kept else None,
            "std": statistics.stdev(kept) if len(kept) >= 2 else (0.0 if kept else None),
            "n": len(kept), "missing": len(values) - len(kept), "values": kept}


def read_tensorboard_scalars(log_dir: str, tags: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` from the tensorboard event files under ``log_dir``
    (SAM3's Trainer writes new-style scalars, stored as tensor summaries)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    if not os.path.isdir(log_dir):
        return {}
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in (t for t in acc.Tags().get("tensors", []) if t in tags):
        out[tag] = sorted((int(e.step), float(tensor_util.make_ndarray(e.tensor_proto)))
                          for e in acc.Tensors(tag))
    for tag in (t for t in acc.Tags().get("scalars", []) if t in tags and t not in out):
        out[tag] = sorted((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return out


def write_json_atomic(path: str, report: Any) -> None:
    """Write ``report`` as indented JSON through a temporary file renamed into place (a
    partial result read while a long benchmark runs is always complete JSON)."""
    import json

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)
