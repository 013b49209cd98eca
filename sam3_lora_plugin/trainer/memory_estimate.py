"""Expected tensor-memory peak of a LoRA training step, from measured per-part figures.

The figures in :data:`MEASURED` come from ``benchmarks/train_step.py`` (one tracked step
of full-size SAM3: 1008 px, batch 1, bf16 autocast, masks on, rank 8, frozen base in
bf16; the tensor-memory tracker's breakdown at the peak). For a config they combine as

.. math::

    M \\approx W_{base} + 4\\,P_{train} + \\Big(\\frac{r}{1008}\\Big)^2 b\\,
    \\big(A - [\\text{masks off}]\\,S\\big),

with :math:`W_{base}` the frozen weights as measured (projections in bf16, or NF4 with
``frozen_base_dtype: nf4``), :math:`4\\,P_{train}` the trainable fp32 weights, their gradients and
AdamW's two moments, :math:`A` the rest of the measured peak (activations saved for
backward, backward's working set, the batch), :math:`S` the part of it that belongs to
the segmentation head and its loss, :math:`r` the resolution and :math:`b` the batch.
Activations are scaled by pixel count and batch size, which is exact for the
windowed/linear parts and an under-estimate for global attention at larger sizes; the
estimate is only given for a measured preset with bf16 autocast. With an NF4 base only
the weights change: the activations are the bf16 run's (QLoRA's frozen Linears save no
weight copy for backward either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["MEASURED", "MEASURED_RESOLUTION", "MemoryEstimate", "estimate_peak_bytes",
           "measured_figures", "measured_presets"]

#: Resolution the figures were measured at.
MEASURED_RESOLUTION = 1008
#: The figure holding the frozen weights' bytes, per ``frozen_base_dtype``.
WEIGHTS_KEYS = {"bfloat16": "frozen_bf16_bytes", "nf4": "frozen_nf4_bytes"}

#: Per preset: total and trainable parameters, frozen-weight bytes in bf16 (and NF4), and
#: the activation bytes ``A`` and segmentation share ``S`` at the peak (see the module
#: docstring). Filled from ``benchmarks/results/train_step_1008_{bf16,nf4}base_<tag>.json``
#: by ``benchmarks/memory_figures.py``; ``tests/trainer/test_memory_estimate.py`` checks
#: they match those files.
#: Measured on CPU with ``--dropout 0``: with attention dropout, CPU attention takes the
#: math kernel and keeps every attention matrix for backward (12.0 GiB instead of 3.65 for
#: low_memory, both before the decoder's RPB biases were recomputed); CUDA's fused kernels
#: apply dropout without them, as the CPU's flash kernel does at dropout 0, so the
#: dropout-0 figures are the ones a GPU run should see.
MEASURED: dict[str, dict[str, int]] = {
    "image_mlp": {
        "total_params": 846489910,
        "trainable_params": 5980160,
        "frozen_bf16_bytes": 1812042414,
        "measured_peak_bytes": 4277633875,
        "activation_bytes": 2441670821,
        "segmentation_bytes": 404662832,
        "frozen_nf4_bytes": 561595442,
        "measured_nf4_peak_bytes": 3026990295
    },
    "low_memory": {
        "total_params": 841443638,
        "trainable_params": 933888,
        "frozen_bf16_bytes": 1812042414,
        "measured_peak_bytes": 3327721048,
        "activation_bytes": 1511943082,
        "segmentation_bytes": 404662832,
        "frozen_nf4_bytes": 561595442,
        "measured_nf4_peak_bytes": 2077077468
    },
    "attention_mlp_heads_rebalanced": {
        "total_params": 849643830,
        "trainable_params": 11894277,
        "frozen_bf16_bytes": 1804289700,
        "measured_peak_bytes": 4358972189,
        "activation_bytes": 2507105381,
        "segmentation_bytes": 413794032,
        "frozen_nf4_bytes": 556275332,
        "measured_nf4_peak_bytes": 3110761213
    },
    "attention_mlp_heads": {
        "total_params": 850254134,
        "trainable_params": 12505605,
        "frozen_bf16_bytes": 1804285604,
        "measured_peak_bytes": 4360879805,
        "activation_bytes": 2506571781,
        "segmentation_bytes": 413260432,
        "frozen_nf4_bytes": 556271236,
        "measured_nf4_peak_bytes": 3112668829
    },
    "attention_mlp": {
        "total_params": 850254134,
        "trainable_params": 9744384,
        "frozen_bf16_bytes": 1812042414,
        "measured_peak_bytes": 4311119539,
        "activation_bytes": 2460099589,
        "segmentation_bytes": 413260432,
        "frozen_nf4_bytes": 561595442,
        "measured_nf4_peak_bytes": 3060475959
    },
    "trunk_last8": {
        "total_params": 842705206,
        "trainable_params": 2195456,
        "frozen_bf16_bytes": 1812042414,
        "measured_peak_bytes": 3752887123,
        "activation_bytes": 1932062885,
        "segmentation_bytes": 404662832
    },
    "all_linear": {
        "total_params": 850381374,
        "trainable_params": 9871624,
        "frozen_bf16_bytes": 1812042414,
        "measured_peak_bytes": 4941008915,
        "activation_bytes": 3089430853,
        "segmentation_bytes": 413260432
    },
    "attention_image": {
        "total_params": 843098422,
        "trainable_params": 2588672,
        "frozen_bf16_bytes": 1812042414,
        "measured_peak_bytes": 4264067923,
        "activation_bytes": 2441670821,
        "segmentation_bytes": 404662832
    },
    "qv": {
        "total_params": 841804086,
        "trainable_params": 1294336,
        "frozen_bf16_bytes": 1812042414,
        "measured_peak_bytes": 4258890579,
        "activation_bytes": 2441670821,
        "segmentation_bytes": 404662832
    },
    "attention": {
        "total_params": 844785974,
        "trainable_params": 4276224,
        "frozen_bf16_bytes": 1812042414,
        "measured_peak_bytes": 4289246899,
        "activation_bytes": 2460099589,
        "segmentation_bytes": 413260432
    }
}


@dataclass
class MemoryEstimate:
    """An expected peak and what it is made of (bytes)."""

    peak_bytes: int
    weights_bytes: int
    trainable_state_bytes: int
    activation_bytes: int

    def format(self) -> str:
        gib = 2**30
        return (f"~{self.peak_bytes / gib:.1f} GiB tensor memory (weights {self.weights_bytes / gib:.1f}, "
                f"trainable weights + grads + AdamW {self.trainable_state_bytes / gib:.2f}, "
                f"activations {self.activation_bytes / gib:.1f}; figures measured on CPU at 1008 px with dropout 0, as a GPU's fused attention)")


def measured_figures(preset: str) -> Optional[dict[str, int]]:
    """The figures measured for ``preset``, or for a preset with exactly its layers
    (``default`` is measured as the preset it equals); None if neither was measured."""
    from sam3_lora_plugin.lora.config import PRESETS, same_layers_presets

    names = same_layers_presets(preset) if preset in PRESETS else [preset]
    return next((MEASURED[n] for n in names if n in MEASURED), None)


def measured_presets(frozen_base_dtype: str = "bfloat16") -> list[str]:
    """The presets with figures for ``frozen_base_dtype`` (``bfloat16`` or ``nf4``),
    ``default`` included when the preset it equals is measured."""
    from sam3_lora_plugin.lora.config import PRESETS

    key = WEIGHTS_KEYS[frozen_base_dtype]
    return [p for p in PRESETS if key in (measured_figures(p) or {})]


def estimate_peak_bytes(preset: str, resolution: int, batch: int, *, amp_bf16: bool,
                        segmentation: bool, frozen_base_dtype: Optional[str]) -> Optional[MemoryEstimate]:
    """The expected tensor-memory peak, or None where no measured figure applies (another
    preset, no bf16 autocast, or an fp32 frozen base: its autocast weight copies were not
    measured)."""
    fig = measured_figures(preset)
    weights_key = WEIGHTS_KEYS.get(frozen_base_dtype or "")
    if fig is None or not amp_bf16 or weights_key not in fig:
        return None
    weights = fig[weights_key]
    trainable = 4 * 4 * fig["trainable_params"]
    act = fig["activation_bytes"] - (0 if segmentation else fig["segmentation_bytes"])
    act = int(act * batch * (resolution / MEASURED_RESOLUTION) ** 2)
    return MemoryEstimate(weights + trainable + act, weights, trainable, act)
