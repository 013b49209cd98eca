"""``build_lora_sam3``: the Hydra-instantiable model wrapper used as ``trainer.model``."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Union

import torch.nn as nn

from sam3_lora_plugin.adapters.load import load_adapter
from sam3_lora_plugin.adapters.metadata import get_base_fingerprint
from sam3_lora_plugin.lora.config import LoraConfig
from sam3_lora_plugin.lora.inject import inject_lora
from sam3_lora_plugin.lora.nf4 import TORCHAO_MISSING
from sam3_lora_plugin.trainer.checkpoint_hooks import check_resume_checkpoint, enable_adapter_only_checkpoints
from sam3_lora_plugin.trainer.cpu_fallbacks import enable_cpu_fallbacks
from sam3_lora_plugin.trainer.errors import install_excepthook, mark_plugin_error
from sam3_lora_plugin.trainer.frozen_base import cast_frozen_base
from sam3_lora_plugin.trainer.jit_executor import keep_torchscript_unoptimized

__all__ = ["build_lora_sam3"]

log = logging.getLogger(__name__)


def build_lora_sam3(
    model: nn.Module,
    lora: Union[LoraConfig, Mapping[str, Any], None] = None,
    *,
    adapter_only_checkpoints: bool = True,
    adapter_path: Optional[str] = None,
    check_base: bool = True,
    checkpoint_dir: Optional[str] = None,
    resume_from: Optional[str] = None,
    allow_fresh_start: bool = False,
    cpu_fallbacks: bool = False,
    frozen_base_dtype: Optional[str] = None,
) -> nn.Module:
    """Inject LoRA into a SAM3 model, freeze the rest, and return the same model.

    In a SAM3 training config::

        trainer:
          model:
            _target_: sam3_lora_plugin.build_lora_sam3
            model:            # any SAM3 image model builder
              _target_: sam3.model_builder.build_sam3_image_model
              checkpoint_path: /path/to/sam3.pt
              ...
            lora: {rank: 8, alpha: 16, components: [vision_trunk, decoder]}

    The decoder's box-RPB biases are recomputed in backward rather than kept when they
    need no gradient (``sam3_lora_plugin.trainer.rpb_recompute``: same values, less
    memory). sam3's TorchScript loss helpers run unoptimized in the thread that builds
    the model, which is the thread SAM3's Trainer trains in, so a resumed run's gradients
    equal an uninterrupted run's bit for bit (``sam3_lora_plugin.trainer.jit_executor``).
    Parameter names stay those of stock SAM3, so SAM3's optimizer options
    (``backbone.vision_backbone.*`` patterns) and checkpoints keep working.

    Args:
        model: the built SAM3 model (Hydra instantiates the nested ``_target_`` first).
        lora: a ``LoraConfig`` or a mapping of its fields.
        adapter_only_checkpoints: make ``state_dict()`` hold only trainable weights, so
            the Trainer's ``checkpoint.pt`` is adapter-sized and resumes (see
            ``sam3_lora_plugin.trainer.checkpoint_hooks``).
        adapter_path: an adapter directory to load after injection (e.g. with
            ``trainer.mode=val`` to evaluate it, or to continue from it). Its targets,
            ranks and base fingerprint must match this model.
        check_base: refuse an adapter trained on other base weights (fingerprint).
        checkpoint_dir: the Trainer's ``checkpoint.save_dir``; before the Trainer
            resumes, check that its ``checkpoint.pt`` is readable (clear error instead
            of a crash inside ``torch.load``) and recover one a kill left as
            ``checkpoint.pt.tmp`` (``sam3_lora_plugin.trainer.checkpoint_hooks.check_resume_checkpoint``).
            With ``checkpoint.pt`` missing or unreadable, the newest intact
            ``checkpoint_N.pt`` is resumed from; a directory of unreadable checkpoints
            is an error, never a silent fresh start.
        resume_from: the Trainer's ``checkpoint.resume_from`` (the configs pass it), so
            the check knows the user asked for another starting point.
        allow_fresh_start: start from scratch when ``checkpoint_dir`` holds checkpoints
            but none can be read (they are kept under ``unreadable-<time>/``).
        cpu_fallbacks: the run is on the CPU (``trainer.accelerator: cpu``): enable the
            fallbacks of ``sam3_lora_plugin.trainer.cpu_fallbacks``, also on a machine
            that has a GPU. The ``runtime=cpu`` block sets it; ``python -m
            sam3_lora_plugin.train`` refuses a config where it disagrees with
            ``trainer.accelerator``.
        frozen_base_dtype: ``"bfloat16"`` stores the frozen Linear and attention
            projection weights in bf16 (half their memory, outputs bit-identical under
            bf16 autocast; ``sam3_lora_plugin.trainer.frozen_base``). Only for runs with
            ``optim.amp.enabled: true`` and ``amp_dtype: bfloat16``. ``"nf4"`` (QLoRA, needs
            torchao: ``pip install 'sam3-lora-plugin[qlora]'``) stores the frozen Linear
            weights and every frozen attention layer's projections as 4-bit NF4 and the
            rest as bf16: the model then computes with the dequantized weights, exactly, and
            ``adapters merge`` still merges into the fp32 file. None keeps them as built.

    Returns:
        ``model`` itself, with adapters.

    Raises:
        LoraSelectionError: the selection matches no module.
        TypeError / ValueError: bad LoRA settings, named in the message.
    """
    try:
        if cpu_fallbacks:
            enable_cpu_fallbacks("cpu")
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"build_lora_sam3 expects a built SAM3 model (an nn.Module), got "
                f"{type(model).__name__}. In YAML, give `model:` a nested _target_."
            )
        cfg = LoraConfig.from_any(lora)
        inject_lora(model, cfg)
        if adapter_only_checkpoints:
            enable_adapter_only_checkpoints(model)
        if adapter_path is not None:
            load_adapter(model, adapter_path, check_base=check_base)
            log.info("Loaded adapter %s", adapter_path)
        cast_frozen_base(model, frozen_base_dtype)
        from sam3_lora_plugin.trainer.rpb_recompute import recompute_box_rpb  # imports sam3's decoder

        recompute_box_rpb(model)
        keep_torchscript_unoptimized()
        get_base_fingerprint(model)  # hashed once here; each checkpoint then only checks versions
        if checkpoint_dir is not None:
            check_resume_checkpoint(checkpoint_dir, resume_from=resume_from,
                                    allow_fresh_start=allow_fresh_start)
        return model
    except Exception as e:
        # Raised inside the Trainer, this reaches the user under nested Hydra tracebacks:
        # make our message the last line printed (see sam3_lora_plugin.trainer.errors).
        install_excepthook()
        if isinstance(e, (TypeError, ValueError)) or str(e) == TORCHAO_MISSING:  # ours too
            mark_plugin_error(e)
        raise
