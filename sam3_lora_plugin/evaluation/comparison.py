"""The base-vs-adapter comparison table: a JSON-able dict and its Markdown rendering.

Rows: ``all`` (the overall numbers SAM3's COCO evaluator logged for each run) and one row
per ground-truth category (recomputed from each run's prediction dump with SAM3's
COCOeval, see ``coco_metrics``). Columns: AP, AP50, AP75 for the base, the adapter and
their difference. JSON holds fractions in [0, 1]; Markdown shows percentages; a metric
that does not exist (a category without ground truth) is ``null`` / ``n/a``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .coco_metrics import METRICS
from .runs import MeterRun

__all__ = ["ComparisonError", "build_comparison", "format_markdown"]

_TOL = 1e-6


class ComparisonError(ValueError):
    """The two runs cannot be compared (different splits or meters)."""


def _delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else b - a


def _row(base: dict[str, Optional[float]], adapted: dict[str, Optional[float]]) -> dict[str, Any]:
    return {"base": dict(base), "adapter": dict(adapted),
            "delta": {m: _delta(base[m], adapted[m]) for m in METRICS}}


def _same(x: Optional[float], y: Optional[float]) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return abs(x - y) <= _TOL


def _consistent(run: MeterRun) -> bool:
    return all(_same(run.logged[m], run.scores.overall[m]) for m in METRICS)


def build_comparison(base: Sequence[MeterRun], adapted: Sequence[MeterRun], *,
                     info: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Pair the meters of the two runs and build the comparison.

    Args:
        base: ``read_val_run`` of the base run.
        adapted: ``read_val_run`` of the adapter run (same config, so same meters).
        info: Extra header fields (config, adapter, commands, ...), copied as is.

    Returns:
        ``{"info": ..., "results": [{"iou_type", "meter", "gt_path", "num_images",
        "overall": row, "per_category": [{"id", "name", **row}], "checks": ...}]}`` where a
        row is ``{"base": {AP, AP50, AP75}, "adapter": {...}, "delta": {...}}``.

    Raises:
        ComparisonError: the runs evaluated different meters or ground-truth files.
    """
    if [(r.meter, r.iou_type) for r in base] != [(r.meter, r.iou_type) for r in adapted]:
        raise ComparisonError(
            f"The runs evaluated different meters ({[r.meter for r in base]} vs "
            f"{[r.meter for r in adapted]}); evaluate both with the same config.")
    results = []
    for b, a in zip(base, adapted):
        if b.scores.category_names != a.scores.category_names or b.scores.num_images != a.scores.num_images:
            raise ComparisonError(f"{b.meter}: the runs used different ground truth ({b.gt_path} vs "
                                  f"{a.gt_path}); evaluate both on the same split.")
        per_cat = [{"id": cid, "name": name,
                    **_row(b.scores.per_category.get(cid, dict.fromkeys(METRICS)),
                           a.scores.per_category.get(cid, dict.fromkeys(METRICS)))}
                   for cid, name in sorted(b.scores.category_names.items())]
        results.append({
            "iou_type": b.iou_type, "meter": b.meter, "gt_path": b.gt_path,
            "num_images": b.scores.num_images, "num_categories": len(per_cat),
            "num_detections": {"base": b.scores.num_detections, "adapter": a.scores.num_detections},
            "dumps": {"base": b.dump_path, "adapter": a.dump_path},
            "overall": _row(b.logged, a.logged),
            "per_category": per_cat,
            # The per-category rows come from our rerun of SAM3's COCOeval; it must
            # reproduce the evaluator's logged overall numbers exactly.
            "recomputed_overall_matches_sam3": {"base": _consistent(b), "adapter": _consistent(a)},
        })
    return {"info": dict(info or {}), "results": results}


def _pct(v: Optional[float], signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def format_markdown(comparison: dict[str, Any]) -> str:
    """Render ``build_comparison``'s result as Markdown (one table per IoU type)."""
    info = comparison["info"]
    lines = ["# SAM3 base vs LoRA adapter", ""]
    for key in ("config", "adapter", "overrides", "resolution", "base_run", "adapter_run"):
        if info.get(key) not in (None, "", []):
            value = " ".join(info[key]) if isinstance(info[key], list) else info[key]
            lines.append(f"- {key.replace('_', ' ')}: `{value}`")
    lines += ["- overall row: SAM3's `CocoEvaluatorOfflineWithPredFileEvaluators` (as logged by each run); "
              "category rows: SAM3's `COCOevalCustom` on the same prediction dumps",
              "- numbers are COCO AP in percent (IoU 0.50:0.95, 0.50, 0.75; maxDets 100); "
              "delta = adapter - base", ""]
    head = ["category"] + [f"{m} {w}" for m in METRICS for w in ("base", "adapter", "delta")]
    for res in comparison["results"]:
        lines += [f"## {res['iou_type']} ({res['meter']})", "",
                  f"Split: `{res['gt_path']}`: {res['num_images']} images, {res['num_categories']} categories; "
                  f"detections: base {res['num_detections']['base']}, adapter {res['num_detections']['adapter']}.",
                  "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        rows = [("**all**", res["overall"])] + [(f"{c['name']} ({c['id']})", c) for c in res["per_category"]]
        for label, row in rows:
            cells = [label.replace("|", "\\|")]
            for m in METRICS:
                cells += [_pct(row["base"][m]), _pct(row["adapter"][m]), _pct(row["delta"][m], True)]
            lines.append("| " + " | ".join(cells) + " |")
        if not all(res["recomputed_overall_matches_sam3"].values()):
            lines += ["", "Warning: recomputing the overall AP from the dumps did not reproduce SAM3's "
                          "logged numbers; the category rows may not be comparable."]
        lines.append("")
    return "\n".join(lines)
