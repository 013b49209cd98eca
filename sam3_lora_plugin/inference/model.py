"""Build the SAM3 image model for inference: base weights, then an adapter or a merged file.

* On a CUDA machine, ``size="full"`` uses stock ``sam3.model_builder.build_sam3_image_model``
  and loads ``checkpoint`` (or the HF hub's ``facebook/sam3`` when it is None) strictly with
  ``load_base_checkpoint`` (stock's own loader prints missing keys and carries on).
* Without CUDA, stock cannot even be constructed (it allocates on "cuda" while building),
  so the same module tree comes from ``sam3_lora_plugin.build_sam3_arch`` and the stock
  checkpoint is loaded strictly into it. On ``device="cpu"`` (also on a GPU machine),
  ``enable_cpu_fallbacks`` makes the geometry encoder's ``pin_memory`` a no-op (see
  ``sam3_lora_plugin.trainer.cpu_fallbacks``); nothing else in
  SAM3's inference path needs CUDA.
* ``size="tiny"`` is the randomly initialised test model (``seed``), for CPU smoke runs.

An adapter directory is loaded with ``sam3_lora_plugin.adapters.load.load_adapter`` (it
injects the adapter's LoRA layers into the plain model and checks the base fingerprint);
a merged checkpoint (``python -m sam3_lora_plugin.adapters merge``) is a stock-layout
file and loads like the base one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from sam3_lora_plugin.adapters.load import load_adapter
from sam3_lora_plugin.models.arch import SIZES, build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import load_base_checkpoint, read_checkpoint
from sam3_lora_plugin.models.bpe import get_bpe_path
from sam3_lora_plugin.trainer.cpu_fallbacks import enable_cpu_fallbacks

__all__ = ["InferenceModel", "check_inference_files", "get_default_device", "load_inference_model"]

log = logging.getLogger(__name__)

_STOCK_RESOLUTION = 1008


@dataclass
class InferenceModel:
    """A SAM3 image model ready for ``Sam3Processor``, with what was loaded into it."""

    model: nn.Module
    resolution: int
    device: str
    description: str


def get_default_device() -> str:
    """``"cuda"`` when a GPU is usable, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _download_base() -> str:
    from sam3.model_builder import download_ckpt_from_hf

    return download_ckpt_from_hf()


def check_inference_files(*, size: str = "full", checkpoint: Optional[str] = None,
                          adapter: Optional[str] = None, resolution: Optional[int] = None) -> None:
    """Check the files ``load_inference_model`` would read, before any model is built.

    The checkpoint must be a readable torch file; the adapter must be readable and fit a
    weightless (``meta``) build of the ``size`` architecture (targets, ranks, shapes; the
    base fingerprint needs the real weights and is checked when they are loaded).

    Raises:
        ValueError: unknown size.
        CheckpointError / AdapterFileError / AdapterMismatchError: unusable files.
    """
    from sam3_lora_plugin.adapters.io import read_adapter
    from sam3_lora_plugin.adapters.metadata import check_compatible, describe_targets
    from sam3_lora_plugin.lora.config import LoraConfig
    from sam3_lora_plugin.lora.inject import get_lora_report, inject_lora
    from sam3_lora_plugin.models.meta import large_tensors_on_meta

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if checkpoint is not None:
        read_checkpoint(checkpoint)
    if adapter is None:
        return
    meta = read_adapter(adapter).metadata
    if not meta.get("lora_config"):
        return  # load_adapter says why it cannot be injected
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # not the model that runs: no build/LoRA log lines
    try:
        with large_tensors_on_meta():
            model = build_sam3_arch(size, resolution or SIZES[size].default_resolution)
        inject_lora(model, LoraConfig.from_any(dict(meta["lora_config"], init="kaiming")))
    finally:
        logging.disable(previous)
    targets = describe_targets(model)
    for t in targets.values():
        t["init"] = meta["lora_config"].get("init", "kaiming")
    report = get_lora_report(model)
    check_compatible(meta, {"targets": targets, "modules_to_save": list(report.modules_to_save)},
                     f"Adapter {adapter!r}", check_base=False)


def load_inference_model(*, size: str = "full", checkpoint: Optional[str] = None,
                         adapter: Optional[str] = None, seed: int = 0,
                         resolution: Optional[int] = None, device: Optional[str] = None,
                         bpe_path: Optional[str] = None, check_base: bool = True) -> InferenceModel:
    """Build the model, load the base (or merged) weights and the adapter, set eval mode.

    Args:
        size: ``"full"`` (SAM3) or ``"tiny"`` (random test model).
        checkpoint: A stock-layout checkpoint: ``sam3.pt`` or a merged export. For
            ``full``, None downloads ``facebook/sam3`` (gated: request access, log in).
        adapter: An adapter directory to apply on top (not with a merged checkpoint).
        seed: Initialisation seed of a ``tiny`` model without checkpoint.
        resolution: Input side in pixels; default 1008 for ``full``, 112 for ``tiny``.
        device: ``"cuda"`` or ``"cpu"``; default: cuda if available.
        bpe_path: BPE vocabulary; None finds one (``sam3_lora_plugin.get_bpe_path``).
        check_base: Refuse an adapter trained on other base weights.

    Returns:
        The ``InferenceModel``.

    Raises:
        ValueError: bad combination of arguments.
        CheckpointError / AdapterFileError / AdapterMismatchError: unusable files.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    device = device or get_default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu.")
    resolution = resolution or SIZES[size].default_resolution
    enable_cpu_fallbacks(device)  # keyed to this run's device (a no-op for cuda), not the machine
    if size == "full" and checkpoint is None:
        checkpoint = _download_base()
    stock = size == "full" and device.startswith("cuda")
    log.info("Building the SAM3 %s model at %d px on %s", size, resolution, device)
    if stock:
        if resolution != _STOCK_RESOLUTION:
            raise ValueError(f"stock SAM3 is built for {_STOCK_RESOLUTION} px; got resolution={resolution}.")
        from sam3.model_builder import build_sam3_image_model

        model = build_sam3_image_model(bpe_path=get_bpe_path(bpe_path), device="cpu", eval_mode=True,
                                       checkpoint_path=None, load_from_HF=False,
                                       enable_segmentation=True)
        # Not stock's checkpoint_path=: its _load_checkpoint only prints missing keys.
        load_base_checkpoint(model, checkpoint)
    else:
        model = build_sam3_arch(size, resolution, bpe_path=bpe_path, seed=seed, eval_mode=True,
                                checkpoint_path=checkpoint)
    what = f"SAM3 {size} ({'stock builder' if stock else 'build_sam3_arch'}), " + (
        f"weights {checkpoint}" if checkpoint else f"random init seed {seed}")
    if adapter is not None:
        load_adapter(model, adapter, check_base=check_base)
        what += f", adapter {adapter}"
    model = model.to(device).eval()  # eval(): the injected LoRA layers were created in train mode
    log.info("Loaded %s at %d px on %s", what, resolution, device)
    return InferenceModel(model=model, resolution=resolution, device=device, description=what)
