"""PNG overlays of detections: translucent masks, box outlines, ``name score`` labels."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .predictor import Detection

__all__ = ["PALETTE", "draw_overlay", "get_color", "get_overlay_scale"]

#: Distinct, saturated colours (one per prompt, cycling).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56), (56, 136, 255), (0, 200, 83), (255, 178, 29), (200, 50, 255),
    (0, 210, 210), (255, 112, 31), (160, 255, 56), (255, 55, 199), (130, 90, 40),
)
_MASK_ALPHA = 0.45


def get_color(prompt_index: int) -> tuple[int, int, int]:
    """The colour of a prompt in overlays."""
    return PALETTE[prompt_index % len(PALETTE)]


def get_overlay_scale(size: tuple[int, int], min_side: int) -> int:
    """The integer factor that brings the shorter side of ``size`` to at least ``min_side``
    (1 when it already is, or when ``min_side`` is 0)."""
    short = min(size)
    return max(1, math.ceil(min_side / short)) if min_side > 0 and short > 0 else 1


def draw_overlay(image: Image.Image, detections: Sequence[Detection], min_side: int = 0) -> Image.Image:
    """A copy of ``image`` with each detection drawn, lowest score first (best on top).

    Masks are blended at 45% opacity in the prompt's colour; boxes are outlined in it
    (2 px, more on large images); the label ``<prompt> <score>`` sits on a filled tag
    above the box, or inside it at the top edge of the image.

    Args:
        min_side: Upscale small images first (nearest neighbour, by the integer factor
            ``get_overlay_scale`` gives) so that the shorter side is at least this many
            pixels and labels stay legible; 0 keeps the image's size.
    """
    scale = get_overlay_scale(image.size, min_side)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    ordered = sorted(detections, key=lambda d: d.score)
    for d in ordered:
        m = d.mask.astype(bool)
        if scale > 1:
            m = m.repeat(scale, axis=0).repeat(scale, axis=1)
        if m.shape == canvas.shape[:2] and m.any():
            canvas[m] = (1 - _MASK_ALPHA) * canvas[m] + _MASK_ALPHA * np.asarray(get_color(d.prompt_index))
    out = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = max(2, round(min(out.size) / 300))
    for d in ordered:
        color = get_color(d.prompt_index)
        x0, y0, x1, y1 = (v * scale for v in d.box_xyxy)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        label = f"{d.prompt} {d.score:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), label, font=font)
        tw, th = tx1 - tx0 + 4, ty1 - ty0 + 4
        top = y0 - th if y0 - th >= 0 else y0
        draw.rectangle([x0, top, x0 + tw, top + th], fill=color)
        draw.text((x0 + 2 - tx0, top + 2 - ty0), label, fill=(255, 255, 255), font=font)
    return out
