"""Check a config's LoRA files against its model before anything is built.

The Trainer finds a mismatched ``checkpoint.pt``, ``resume_from`` or ``adapter_path``
only after it has built the model (17 s and 4 GB for full-size SAM3 on a CPU, a queue
slot on a cluster), and reports it through nested Hydra tracebacks. Everything needed
to know is in the config and the files' metadata:

* ``get_config_lora_layout`` builds ``trainer.model.model`` with its large tensors on the
  ``meta`` device (``sam3_lora_plugin.models.meta``) and without loading weights,
  injects the config's LoRA settings into it, and returns the adapter layout the run
  would have (targets, ranks, slices, base shapes, ``modules_to_save``). Selection
  errors (an ``include`` or ``modules_to_save`` pattern matching nothing) surface here.
* ``check_lora_files`` reads ``checkpoint.pt`` in the save directory,
  ``trainer.checkpoint.resume_from``, ``trainer.model.adapter_path`` and the base
  ``checkpoint_path``, and compares the adapters' metadata with that layout through
  ``adapters.metadata.check_compatible``. The base fingerprint is not compared here: it
  needs the real weights (the wrapper compares it once they are loaded).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from sam3_lora_plugin.trainer.config_check import ARCH_BUILDER, STOCK_BUILDER

__all__ = ["ARCH_BUILDER", "STOCK_BUILDER", "check_adapter_fits_config", "check_lora_files",
           "get_config_lora_layout", "get_save_dir"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log lines from the layout build (it is not the run's model)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _layout_node(node: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The model node to build for its layout (no weights loaded), or None if unknown."""
    target = node.get("_target_")
    if target in ARCH_BUILDER:
        return dict(node, checkpoint_path=None)
    if target == STOCK_BUILDER:
        return dict(node, checkpoint_path=None, load_from_HF=False, device="cpu")
    return None


def get_config_lora_layout(cfg: DictConfig) -> Optional[dict[str, Any]]:
    """The adapter layout (``{"targets", "modules_to_save"}``) of ``cfg``'s LoRA model.

    Returns None when ``trainer.model.model`` is not a builder this can build cheaply
    (then only the files themselves are checked).

    Raises:
        LoraSelectionError: the LoRA settings select nothing, or an ``include`` /
            ``modules_to_save`` pattern matches no module.
    """
    from hydra.utils import instantiate

    from sam3_lora_plugin.adapters.metadata import describe_targets
    from sam3_lora_plugin.lora.config import LoraConfig
    from sam3_lora_plugin.lora.inject import inject_lora
    from sam3_lora_plugin.lora.selection import LoraSelectionError
    from sam3_lora_plugin.models.meta import large_tensors_on_meta
    from sam3_lora_plugin.trainer.config_check import ConfigError

    model_cfg = OmegaConf.select(cfg, "trainer.model")
    node = _layout_node(OmegaConf.to_container(model_cfg.model, resolve=True))
    if node is None:
        return None
    lora = OmegaConf.to_container(model_cfg.get("lora"), resolve=True) or {}
    settings = LoraConfig.from_any(lora)
    try:
        with _quiet(), large_tensors_on_meta():
            model = instantiate(node, _convert_="all")
    except ValueError as e:
        if node.get("_target_") in ARCH_BUILDER:  # its messages name the bad value
            raise ConfigError(f"trainer.model.model: {e}") from e
        log.debug("No layout build for %s: %s", node.get("_target_"), e)
        return None
    except Exception as e:  # a builder that cannot run this way: check the files only
        log.debug("No layout build for %s: %s", node.get("_target_"), e)
        return None
    # The init only sets values (a PiSSA SVD of a meta weight means nothing); the
    # layout is compared with the config's init name below.
    try:
        with _quiet():
            report = inject_lora(model, LoraConfig.from_any(dict(settings.to_dict(), init="kaiming")))
    except LoraSelectionError:
        raise
    except Exception as e:
        log.debug("No layout: LoRA injection failed on the layout model: %s", e)
        return None
    targets = describe_targets(model)
    for t in targets.values():
        t["init"] = settings.init
    return {"targets": targets, "modules_to_save": list(report.modules_to_save)}


def get_save_dir(cfg: DictConfig, config_name: str) -> Optional[str]:
    """``trainer.checkpoint.save_dir`` as the run will resolve it (SAM3's launcher sets a
    null ``launcher.experiment_log_dir`` to ``./sam3_logs/<config>``)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    if OmegaConf.select(cfg, "launcher.experiment_log_dir") is None:
        cfg.launcher.experiment_log_dir = os.path.join(os.getcwd(), "sam3_logs", config_name)
    return OmegaConf.select(cfg, "trainer.checkpoint.save_dir", default=None)


def _metadata_of(path: str) -> Optional[dict[str, Any]]:
    from sam3_lora_plugin.adapters.metadata import METADATA_KEY, decode_metadata
    from sam3_lora_plugin.models.base_checkpoint import CheckpointError, read_checkpoint

    ckpt = read_checkpoint(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or METADATA_KEY not in state:
        return None
    try:
        return decode_metadata(state[METADATA_KEY])
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"Checkpoint file {path!r}: its LoRA metadata entry is "
                              "corrupt. Use an earlier checkpoint_N.pt.") from e


def check_lora_files(cfg: DictConfig, config_name: str) -> None:
    """Check every file the LoRA run will read, against ``cfg``'s model.

    Args:
        cfg: The composed config (``trainer.model`` is ``build_lora_sam3``).
        config_name: The ``-c`` name (for the default experiment directory).

    Raises:
        CheckpointError / AdapterFileError: a file is missing, unreadable or not what it
            should be (the message names it).
        AdapterMismatchError: an adapter or checkpoint does not fit the config's LoRA
            settings or architecture (the message names the differences).
        LoraSelectionError: the config's LoRA selection is wrong.
    """
    from sam3_lora_plugin.adapters.io import read_adapter
    from sam3_lora_plugin.adapters.metadata import check_compatible
    from sam3_lora_plugin.models.base_checkpoint import CheckpointError, read_checkpoint
    from sam3_lora_plugin.trainer.checkpoint_hooks import check_resume_checkpoint

    base = OmegaConf.select(cfg, "trainer.model.model.checkpoint_path", default=None)
    if isinstance(base, str):
        try:
            ckpt = read_checkpoint(base)
        except CheckpointError as e:
            raise CheckpointError(f"trainer.model.model.checkpoint_path: {e}") from e
        state = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else {}
        if not any("detector" in str(k) for k in (state if isinstance(state, Mapping) else {})):
            raise CheckpointError(
                f"trainer.model.model.checkpoint_path={base!r} holds no 'detector.*' keys, so "
                "it is not a stock SAM3 checkpoint (sam3.pt). A Trainer checkpoint.pt goes to "
                "trainer.checkpoint.resume_from, an adapter directory to "
                "trainer.model.adapter_path.")
    save_dir = get_save_dir(cfg, config_name)
    resume = OmegaConf.select(cfg, "trainer.checkpoint.resume_from", default=None)
    adapter_path = OmegaConf.select(cfg, "trainer.model.adapter_path", default=None)
    adapter = read_adapter(adapter_path) if adapter_path is not None else None
    checks: list[tuple[str, Optional[dict[str, Any]]]] = []
    current = os.path.join(save_dir, "checkpoint.pt") if save_dir else None
    if current and os.path.exists(current):
        # Readable, else the guard's own rules (fallback to an intact checkpoint_N.pt, or
        # allow_fresh_start) with the config's settings, as the wrapper applies them later.
        check_resume_checkpoint(save_dir, resume_from=resume, allow_fresh_start=bool(
            OmegaConf.select(cfg, "trainer.model.allow_fresh_start", default=False)))
    if current and os.path.exists(current):
        checks.append((f"The checkpoint to resume, {current!r},", _metadata_of(current)))
    if resume is not None:
        meta = _metadata_of(resume)
        if not (current and os.path.exists(current)):  # SAM3 copies it only then
            checks.append((f"trainer.checkpoint.resume_from={resume!r}", meta))
    if adapter is not None:
        checks.append((f"Adapter {adapter_path!r} (trainer.model.adapter_path)", adapter.metadata))
    layout = get_config_lora_layout(cfg)
    if layout is None:
        return
    for source, meta in checks:
        if meta is not None:
            check_compatible(meta, layout, source, check_base=False)


def check_adapter_fits_config(cfg: DictConfig, adapter_path: str) -> None:
    """Read the adapter directory and compare it with ``cfg``'s LoRA layout (targets,
    ranks, settings, base shapes; not the base fingerprint).

    Raises:
        AdapterFileError: the adapter is missing, incomplete or corrupt.
        AdapterMismatchError: it does not fit the config's model and LoRA settings.
    """
    from sam3_lora_plugin.adapters.io import read_adapter
    from sam3_lora_plugin.adapters.metadata import check_compatible

    adapter = read_adapter(adapter_path)
    layout = get_config_lora_layout(cfg)
    if layout is not None:
        check_compatible(adapter.metadata, layout, f"Adapter {adapter_path!r}", check_base=False)
