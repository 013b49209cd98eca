"""Read what a SAM3 ``trainer.mode=val`` run left in its experiment directory.

A run of a config whose val meters are ``sam3.eval.coco_writer.PredictionDumper`` with
``CocoEvaluatorOfflineWithPredFileEvaluators`` leaves:

* ``<experiment_log_dir>/config_resolved.yaml``: the config as it ran (SAM3's launcher);
* ``<dump_dir>/coco_predictions_<iou_type>.json``: the merged predictions of each meter;
* ``<trainer.logging.log_dir>/val_stats.json``: one JSON line per validation, with the
  evaluator's numbers under ``Meters_train/val_<key>/<meter>/coco_eval_<iou>_<metric>``.

``read_val_run`` collects, per IoU type, the evaluator's overall AP/AP50/AP75 and the
per-category scores recomputed from the same dump (``coco_metrics.evaluate_dump``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from .coco_metrics import CocoScores, evaluate_dump

__all__ = ["DUMPER_TARGET", "EVALUATOR_TARGET", "MeterRun", "RunReadError", "read_val_run"]

DUMPER_TARGET = "sam3.eval.coco_writer.PredictionDumper"
EVALUATOR_TARGET = "sam3.eval.coco_eval_offline.CocoEvaluatorOfflineWithPredFileEvaluators"
_SAM3_METRIC = {"AP": "AP", "AP50": "AP_50", "AP75": "AP_75"}


class RunReadError(RuntimeError):
    """A val run's directory lacks what the comparison needs."""


@dataclass
class MeterRun:
    """One PredictionDumper evaluator of one run."""

    iou_type: str
    meter: str                          # "val_<dict_key>/<meter name>"
    gt_path: str
    dump_path: str
    logged: dict[str, Optional[float]]  # the evaluator's own numbers (val_stats.json)
    scores: CocoScores                  # recomputed from the dump, per category


def _resolve_path(node: Any) -> str:
    """A path value of a resolved config: a string, or a nested ``_target_`` call."""
    if isinstance(node, str):
        return node
    from hydra.utils import instantiate

    return str(instantiate(node))


def _last_json_line(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            lines = [line for line in f if line.strip()]
    except FileNotFoundError:
        raise RunReadError(f"{path} does not exist: the val run wrote no results (see its log).") from None
    if not lines:
        raise RunReadError(f"{path} is empty: the val run wrote no results (see its log).")
    return json.loads(lines[-1])


def read_val_run(experiment_log_dir: str) -> list[MeterRun]:
    """Collect every COCO evaluator result of a finished ``trainer.mode=val`` run.

    Args:
        experiment_log_dir: The run's ``launcher.experiment_log_dir``.

    Returns:
        One ``MeterRun`` per (meter, evaluator), in config order.

    Raises:
        RunReadError: No resolved config, no val_stats.json, no dump, or no COCO
            evaluator meters in the config.
    """
    from omegaconf import OmegaConf

    cfg_path = os.path.join(experiment_log_dir, "config_resolved.yaml")
    if not os.path.isfile(cfg_path):
        raise RunReadError(f"{cfg_path} does not exist: {experiment_log_dir} is not a SAM3 run directory.")
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    stats = _last_json_line(os.path.join(cfg["trainer"]["logging"]["log_dir"], "val_stats.json"))
    out: list[MeterRun] = []
    for key, meters in ((cfg["trainer"].get("meters") or {}).get("val") or {}).items():
        for name, meter in (meters or {}).items():
            if not isinstance(meter, dict) or meter.get("_target_") != DUMPER_TARGET:
                continue
            iou = meter["iou_type"]
            dump = os.path.join(meter["dump_dir"], f"coco_predictions_{iou}.json")
            if not os.path.isfile(dump):
                raise RunReadError(f"{dump} does not exist: the {key}/{name} meter dumped nothing "
                                   "(merge_predictions must be true).")
            for ev in meter.get("pred_file_evaluators") or []:
                if ev.get("_target_") != EVALUATOR_TARGET:
                    continue
                prefix = f"Meters_train/val_{key}/{name}/coco_eval_{ev.get('iou_type', 'bbox')}_"
                logged = {m: stats.get(prefix + s) for m, s in _SAM3_METRIC.items()}
                logged = {m: (None if v is None or v < 0 else float(v)) for m, v in logged.items()}
                gt_path = _resolve_path(ev["gt_path"])
                scores = evaluate_dump(gt_path, dump, ev.get("iou_type", "bbox"),
                                       positive_split=bool(ev.get("positive_split", False)))
                out.append(MeterRun(iou, f"val_{key}/{name}", gt_path, dump, logged, scores))
    if not out:
        raise RunReadError(
            f"{cfg_path} has no val meter {DUMPER_TARGET} with {EVALUATOR_TARGET}: the config "
            "must evaluate with SAM3's prediction dumper and COCO evaluator (see configs/lora/*.yaml).")
    return out
