"""Base-vs-adapter evaluation with SAM3's own COCO evaluators.

``python -m sam3_lora_plugin.evaluate`` runs SAM3's Trainer in ``trainer.mode=val``
twice and uses this package to read the runs (``runs``), score each category from the
prediction dumps (``coco_metrics``) and write the comparison (``comparison``).
"""

from .comparison import ComparisonError, build_comparison, format_markdown
from .coco_metrics import CocoScores, evaluate_dump
from .runs import MeterRun, RunReadError, read_val_run

__all__ = ["CocoScores", "ComparisonError", "MeterRun", "RunReadError", "build_comparison",
           "evaluate_dump", "format_markdown", "read_val_run"]
