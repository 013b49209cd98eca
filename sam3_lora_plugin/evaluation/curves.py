"""Training curves of a SAM3 run: loss per step and held-out AP per validation.

Reads what SAM3's Trainer leaves in a run directory: the per-step training loss in
``tensorboard/`` (tag ``Step_Stats/train/Losses/train_all_loss``, logged every
``trainer.logging.log_scalar_frequency`` steps) and one line per validation in
``logs/val_stats.json`` (the COCO evaluator's ``.../coco_eval_{bbox,segm}_AP`` whatever the
meter's name).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

__all__ = ["LOSS_TAG", "plot_training_curves", "read_train_loss", "read_val_ap"]

LOSS_TAG = "Step_Stats/train/Losses/train_all_loss"


def read_val_ap(run_dir: str) -> list[dict[str, float]]:
    """``[{"epoch", "bbox_AP", "segm_AP", ...}]``, one per validation of the run."""
    path = os.path.join(run_dir, "logs", "val_stats.json")
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            stats = json.loads(line)
            row = {"epoch": int(stats.get("Trainer/epoch", len(rows)))}
            for iou in ("bbox", "segm"):
                for suffix, name in (("AP", "AP"), ("AP_50", "AP50")):
                    vals = [v for k, v in stats.items() if k.endswith(f"coco_eval_{iou}_{suffix}")]
                    if vals:
                        row[f"{iou}_{name}"] = float(vals[0])
            rows.append(row)
    return rows


def read_train_loss(run_dir: str) -> list[tuple[int, float]]:
    """``[(step, loss)]`` from the run's tensorboard events (empty if none)."""
    tb = os.path.join(run_dir, "tensorboard")
    if not os.path.isdir(tb):
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(tb, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    if LOSS_TAG in tags.get("tensors", []):
        return sorted((int(e.step), float(tensor_util.make_ndarray(e.tensor_proto)))
                      for e in acc.Tensors(LOSS_TAG))
    if LOSS_TAG in tags.get("scalars", []):
        return sorted((int(e.step), float(e.value)) for e in acc.Scalars(LOSS_TAG))
    return []


def _smooth(values: list[float], window: int = 9) -> list[float]:
    half = window // 2
    return [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
            for i in range(len(values))]


def plot_training_curves(run_dir: str, out_path: str,
                         base: Optional[dict[str, Any]] = None) -> Optional[str]:
    """Write the loss (left) and held-out AP (right) curves of ``run_dir`` to ``out_path``.

    Args:
        base: the base model's AP on the same split (``{"bbox_AP": .., "segm_AP": ..}``),
            drawn as dashed lines and as the epoch-0 point.

    Returns:
        ``out_path``, or None when the run has neither losses nor validations.
    """
    loss, aps = read_train_loss(run_dir), read_val_ap(run_dir)
    if not loss and not aps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if loss:
        steps, values = zip(*loss)
        left.plot(steps, values, color="#c7c7c7", linewidth=0.8, label="per step")
        left.plot(steps, _smooth(list(values)), color="#d62728", label="smoothed")
        left.set(yscale="log", xlabel="optimizer step", ylabel="SAM3 loss (all terms)",
                 title="training loss")
        left.legend(fontsize=8)
    for metric, color in (("bbox_AP", "#1f77b4"), ("segm_AP", "#2ca02c")):
        pts = [(r["epoch"] + 1, r[metric]) for r in aps if metric in r]
        if base and metric in base and base[metric] is not None:
            pts = [(0, float(base[metric]))] + pts
            right.axhline(float(base[metric]), color=color, linestyle="--", linewidth=0.8,
                          label=f"base {metric}")
        if pts:
            right.plot(*zip(*pts), marker="o", color=color, label=f"adapter {metric}")
    right.set(ylim=(0, 1), xlabel="epoch (0: base, before training)", ylabel="AP",
              title="held-out AP (SAM3's COCO evaluator)")
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
