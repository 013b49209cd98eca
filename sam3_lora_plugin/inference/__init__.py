"""Inference with SAM3's own ``Sam3Processor``, with a LoRA adapter or a merged checkpoint.

``python -m sam3_lora_plugin.predict`` is the command line; this package holds the model
loading (``model``), the prompting (``predictor``), the COCO results (``coco_results``)
and the overlays (``overlay``).
"""

from .coco_results import get_image_index, to_coco_results
from .model import InferenceModel, get_default_device, load_inference_model
from .overlay import PALETTE, draw_overlay, get_color, get_overlay_scale
from .predictor import Detection, Sam3TextPredictor

__all__ = ["PALETTE", "Detection", "InferenceModel", "Sam3TextPredictor", "draw_overlay",
           "get_color", "get_default_device", "get_image_index", "get_overlay_scale", "load_inference_model",
           "to_coco_results"]
