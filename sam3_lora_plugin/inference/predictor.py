"""Text-prompted detection and segmentation with SAM3's own ``Sam3Processor``.

For each image, ``Sam3Processor.set_image`` runs the vision backbone once; each prompt
then runs ``set_text_prompt`` (text encoder, fusion encoder, decoder, heads) and keeps
the queries whose score (``sigmoid(logit) * presence``) exceeds the threshold, with
boxes scaled to the original image size and masks resized to it. ``Sam3Processor``
takes the device as an argument and allocates nothing on CUDA by itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .model import InferenceModel

__all__ = ["Detection", "Sam3TextPredictor"]


@dataclass
class Detection:
    """One detected object: box in pixels (``[x0, y0, x1, y1]``, clipped to the image),
    score in [0, 1], the prompt's index and text, and a boolean mask (H, W)."""

    prompt_index: int
    prompt: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    mask: np.ndarray


class Sam3TextPredictor:
    """Run a set of text prompts on images with ``sam3.model.sam3_image_processor.Sam3Processor``.

    Args:
        loaded: The model from ``load_inference_model``.
        threshold: Keep detections with score above this.
        amp: Run under bf16 autocast on CUDA (as SAM3's examples do); ignored on CPU.
    """

    def __init__(self, loaded: InferenceModel, threshold: float = 0.5, amp: bool = True) -> None:
        from sam3.model.sam3_image_processor import Sam3Processor

        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.loaded = loaded
        self.processor = Sam3Processor(loaded.model, resolution=loaded.resolution, device=loaded.device,
                                       confidence_threshold=threshold)
        cuda = loaded.device.startswith("cuda")
        self.amp = amp and cuda and torch.cuda.is_bf16_supported()

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def predict(self, image: Image.Image, prompts: Sequence[str]) -> list[Detection]:
        """Detections of every prompt in one RGB image, highest score first."""
        width, height = image.size
        out: list[Detection] = []
        with self._autocast():
            state = self.processor.set_image(image)
            for i, prompt in enumerate(prompts):
                state = self.processor.set_text_prompt(prompt, state)
                boxes = state["boxes"].float().cpu().clone()
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
                scores = state["scores"].float().cpu().tolist()
                masks = state["masks"].squeeze(1).cpu().numpy()
                for box, score, mask in zip(boxes.tolist(), scores, masks):
                    out.append(Detection(i, prompt, float(score), tuple(box), mask))
                self.processor.reset_all_prompts(state)
        return sorted(out, key=lambda d: -d.score)
