"""Adapter-only checkpoints inside SAM3's own Trainer.

SAM3's Trainer saves ``unwrap_ddp(model).state_dict()`` plus the optimizer state, and on
resume loads ``checkpoint["model"]`` with ``model.load_state_dict(strict=False)`` and
fails on any missing key (``load_state_dict_into_model``). Its own exclusion mechanism,
``checkpoint.skip_saving_parameters``, takes fnmatch patterns that can only exclude,
which cannot express "everything except the adapters".

So the hook lives on the model, via two PyTorch state-dict hooks:

* a ``state_dict`` post-hook drops every frozen parameter and every buffer outside
  ``modules_to_save``: ``checkpoint.pt`` holds the adapters and fully-trained modules;
* a ``load_state_dict`` pre/post-hook pair: when the incoming dict holds no frozen
  key (an adapter-only checkpoint), the frozen keys are removed from ``missing_keys``,
  so the Trainer's resume path loads it without a missing-key error, while a missing
  adapter key still fails. A full state dict loads exactly as without the hook.

Both hooks also carry the adapter's metadata (``sam3_lora_plugin.adapters.metadata``):
the post-hook stores it as one uint8 tensor under ``METADATA_KEY``; the pre-hook takes
it out again and refuses, with one clear error, a checkpoint whose targets, ranks,
architecture or base-weight fingerprint differ from the model being resumed.

They also make resume after preemption exact in a single-process run on the CPU:
SAM3's Trainer reseeds from ``seed_value`` on start and saves no RNG state, so a resumed
run would draw other dropout masks and data-loader worker seeds than an uninterrupted
one. The post-hook stores the torch (CPU and CUDA), numpy and Python RNG states under
``RNG_STATE_KEY``; the pre-hook restores them only when the load is the Trainer's own
resume (``Trainer._load_resuming_checkpoint`` is on the call stack), never for any other
``load_state_dict`` of such a checkpoint (evaluation, inspection, user code), which
must not reset the process's RNGs. In a multi-process run only rank 0 writes the
checkpoint, so its states are neither saved nor restored there (the run resumes
correctly but not bit-identically); on CUDA the same RNG states still give other
results, because CUDA kernels are not deterministic. Exported adapters never carry them.

The optimizer side needs nothing: frozen parameters never get a gradient, so AdamW
keeps no state for them (see ``sam3_lora_plugin.trainer.param_groups``).
"""

from __future__ import annotations

import base64
import logging
import random
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from sam3_lora_plugin.adapters.metadata import (
    METADATA_KEY,
    RNG_STATE_KEY,
    AdapterMismatchError,
    check_compatible,
    decode_metadata,
    encode_metadata,
    get_adapter_metadata,
)
from sam3_lora_plugin.adapters.state import get_adapter_state_keys, get_state_keys
from sam3_lora_plugin.lora.saved_modules import check_saved_modules_enabled
from sam3_lora_plugin.trainer.errors import install_excepthook
from sam3_lora_plugin.trainer.resume import check_resume_checkpoint

__all__ = ["check_resume_checkpoint", "enable_adapter_only_checkpoints", "get_rng_states",
           "set_rng_states"]

log = logging.getLogger(__name__)

_FLAG = "_sam3_lora_adapter_only_checkpoints"
_LOADING_ADAPTER_ONLY = "_sam3_lora_loading_adapter_only"


def _drop_frozen(module: nn.Module, state_dict, prefix: str, local_metadata) -> None:
    check_saved_modules_enabled(module, "save a checkpoint")
    keep = {prefix + k for k in get_adapter_state_keys(module)}
    for key in [k for k in state_dict if k.startswith(prefix) and k not in keep]:
        del state_dict[key]
    state_dict[prefix + METADATA_KEY] = encode_metadata(get_adapter_metadata(module))
    if not _multi_process():
        state_dict[prefix + RNG_STATE_KEY] = encode_metadata(get_rng_states())


def _pre_load(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    check_saved_modules_enabled(module, "load a checkpoint")
    meta = state_dict.pop(prefix + METADATA_KEY, None)
    if meta is not None:
        try:
            check_compatible(decode_metadata(meta), get_adapter_metadata(module),
                             "The checkpoint being loaded (adapter-only Trainer checkpoint)")
        except AdapterMismatchError:
            # Raised inside SAM3's Trainer (its resume): under the stock launcher, make
            # our message the last line after Hydra's traceback (trainer.errors).
            install_excepthook()
            raise
    rng = state_dict.pop(prefix + RNG_STATE_KEY, None)
    if rng is not None and not _multi_process() and _in_trainer_resume():
        set_rng_states(decode_metadata(rng))
        log.info("Restored the RNG states saved with the checkpoint (exact resume).")
    frozen = {prefix + k for k in get_state_keys(module)} - {
        prefix + k for k in get_adapter_state_keys(module)}
    setattr(module, _LOADING_ADAPTER_ONLY, not any(k in frozen for k in state_dict))


def _post_load(module: nn.Module, incompatible_keys) -> None:
    if getattr(module, _LOADING_ADAPTER_ONLY, False):
        keep = get_adapter_state_keys(module)
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if k in keep]
    setattr(module, _LOADING_ADAPTER_ONLY, False)


def _in_trainer_resume() -> bool:
    """True when called from sam3's ``Trainer._load_resuming_checkpoint`` (or a subclass's)."""
    trainer = sys.modules.get("sam3.train.trainer")
    if trainer is None:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if (frame.f_code.co_name == "_load_resuming_checkpoint"
                and isinstance(frame.f_locals.get("self"), trainer.Trainer)):
            return True
        frame = frame.f_back
    return False


def _multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def get_rng_states() -> dict[str, Any]:
    """The process's torch (CPU, every CUDA device), numpy and Python RNG states, as JSON."""
    np_state = np.random.get_state()
    return {
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(t) for t in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of ``get_rng_states`` (CUDA states only where the devices exist)."""
    torch.set_rng_state(_unb64(states["torch"]))
    if states["cuda"] and torch.cuda.is_available():
        cuda = [_unb64(s) for s in states["cuda"]][: torch.cuda.device_count()]
        for i, t in enumerate(cuda):
            torch.cuda.set_rng_state(t, i)
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def enable_adapter_only_checkpoints(model: nn.Module) -> nn.Module:
    """Make ``model.state_dict()`` adapter-only and let adapter-only dicts load back.

    Call after ``inject_lora`` (it reads ``requires_grad`` at save/load time, so
    later changes to what is trainable are honoured). Idempotent.
    """
    if getattr(model, _FLAG, False):
        return model
    model.register_state_dict_post_hook(_drop_frozen)
    model.register_load_state_dict_pre_hook(_pre_load)
    model.register_load_state_dict_post_hook(_post_load)
    setattr(model, _FLAG, True)
    return model
