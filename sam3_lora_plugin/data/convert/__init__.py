"""Convert LabelMe, Pascal VOC, YOLO and instance-mask datasets to SAM3's COCO layout.

Every converter writes ``<out>/<split>/_annotations.coco.json`` with the images beside
it (Roboflow's COCO layout, which the project's configs and SAM3's
``Sam3ImageDataset`` read) and returns a ``ConversionSummary``. The shared rules
(clipping, dropping degenerate shapes, category ids, image sizes from the files) are in
``coco_writer``. CLI: ``python -m sam3_lora_plugin.data.convert --help``.
"""

from __future__ import annotations

from .coco_writer import ConversionSummary, write_coco_dataset
from .labelme import convert_labelme
from .masks import convert_masks
from .voc import convert_voc
from .yolo import convert_yolo

__all__ = ["ConversionSummary", "convert_labelme", "convert_voc", "convert_yolo", "convert_masks",
           "write_coco_dataset"]
