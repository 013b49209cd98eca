"""``scratch.enable_segmentation``: one switch for box-only training in every config.

SAM3's configs turn masks on or off in four places: the model's segmentation head, the
train loader (``load_segmentation``, ``with_seg_masks``), the ``Masks`` loss and the segm
evaluator. The first two follow ``${scratch.enable_segmentation}`` already; the last two
are entries of lists and dicts that an override cannot remove. With masks off, SAM3's
``Masks.get_loss`` asserts ``pred_masks`` and the segm ``PredictionDumper`` finds no masks
to dump. These two builders take the switch and leave those entries out:

* ``build_sam3_loss(enable_segmentation, **kwargs)``: ``Sam3LossWrapper(**kwargs)`` without
  ``Masks`` entries in ``loss_fns_find`` when the switch is off;
* ``select_meters(enable_segmentation, **phases)``: the ``trainer.meters`` dict without
  meters whose ``iou_type`` is ``segm`` when the switch is off (``_recursive_: false``, so
  a dropped meter is never built: its dump directory and ground-truth copy are not made).

So ``python -m sam3_lora_plugin.train -c configs/lora/smoke_cpu.yaml
scratch.enable_segmentation=false`` trains and evaluates boxes only. (Objects without a mask
in a dataset with masks need no switch: SAM3's ``Masks`` loss skips them, and the segm
evaluator's ground truth makes them ignore regions, see ``data/segm_gt.py``.)
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

__all__ = ["build_sam3_loss", "select_meters"]


def build_sam3_loss(enable_segmentation: bool, **kwargs: Any):
    """SAM3's ``Sam3LossWrapper(**kwargs)``; with ``enable_segmentation`` False, its
    ``loss_fns_find`` loses every ``sam3.train.loss.loss_fns.Masks`` entry.

    Args:
        enable_segmentation: ``${scratch.enable_segmentation}``.
        **kwargs: ``Sam3LossWrapper``'s arguments, as in SAM3's configs.
    """
    from sam3.train.loss.loss_fns import Masks
    from sam3.train.loss.sam3_loss import Sam3LossWrapper

    if not enable_segmentation:
        kwargs["loss_fns_find"] = [f for f in kwargs.get("loss_fns_find") or []
                                   if not isinstance(f, Masks)]
    return Sam3LossWrapper(**kwargs)


def select_meters(enable_segmentation: bool, **phases: Any) -> dict[str, Any]:
    """Build ``trainer.meters`` (``{phase: {key: {name: meter}}}``); with
    ``enable_segmentation`` False, meters with ``iou_type: segm`` are left out unbuilt.

    Used with ``_recursive_: false``: the meters arrive as configs and are built here.

    Args:
        enable_segmentation: ``${scratch.enable_segmentation}``.
        **phases: the meters per phase, as in SAM3's configs (``val: {<key>: {<name>: ...}}``).
    """
    built: dict[str, Any] = {}
    for phase, keys in phases.items():
        keys = _plain(keys)
        built[phase] = None if keys is None else {
            key: None if meters is None else {
                name: instantiate(meter) for name, meter in meters.items()
                if enable_segmentation or meter.get("iou_type") != "segm"}
            for key, meters in keys.items()}
    return built


def _plain(node: Any) -> Any:
    """Resolved plain containers (the Trainer passes ``_convert_="all"``; a direct
    ``instantiate`` without it passes config nodes)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

