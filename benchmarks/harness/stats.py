"""Summaries of repeated measurements: timings (median and quartiles), values over seeds
(mean and standard deviation), and the scalars SAM3's Trainer logged to tensorboard."""

from __future__ import annotations

import math
import os
import statistics
from typing import Any, Sequence

__all__ = ["mean_std", "read_tensorboard_scalars", "summarize_seconds"]


def summarize_seconds(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles :math:`q_1, q_3` (inclusive method), IQR :math:`q_3 - q_1` and min
    of repeated timings in seconds (one sample: every quantile is that sample)."""
    samples = list(samples)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return {"median_s": statistics.median(samples), "q1_s": q1, "q3_s": q3,
            "iqr_s": q3 - q1, "min_s": min(samples)}


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation
    :math:`\\sqrt{\\sum (x_i - \\bar x)^2 / (n - 1)}` (0 for one value), n, and the values
    themselves; NaNs and Nones are dropped and counted in ``missing``."""
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
