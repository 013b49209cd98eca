"""Type-check a composed training config before anything runs or is submitted.

SAM3's configs are untyped YAML, so Hydra accepts ``trainer.max_epochs=abc`` and the
mistake only surfaces inside the Trainer, on the cluster, minutes later. This checks,
against SAM3's own declarations rather than a copy of them:

* the scalar keyword arguments of ``sam3.train.trainer.Trainer`` (``max_epochs: int``,
  ``mode: str``, ...), by their annotations;
* ``trainer.distributed``, ``trainer.cuda``, ``trainer.checkpoint`` and
  ``trainer.logging`` against the Trainer's dataclasses (``DistributedConf`` ...):
  unknown keys, and scalar fields of the wrong type;
* the LoRA block, when ``trainer.model`` is ``build_lora_sam3``, through ``LoraConfig``.

``check_required_values`` names every ``???`` value still unset, all at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

__all__ = ["LORA_WRAPPER_TARGETS", "ConfigError", "check_required_values", "validate_training_config"]

_SCALARS = (int, float, str, bool)
_BLOCKS = {"distributed": "DistributedConf", "cuda": "CudaConf",
           "checkpoint": "CheckpointConf", "logging": "LoggingConf"}
#: The ``_target_`` names of the LoRA model wrapper (``trainer.model``).
LORA_WRAPPER_TARGETS = ("sam3_lora_plugin.build_lora_sam3",
                        "sam3_lora_plugin.trainer.wrapper.build_lora_sam3")


class ConfigError(ValueError):
    """A composed config has a value of the wrong type, an unknown key, or an unset one."""


def _missing_keys(node: Any, prefix: str = ""):
    """Dotted keys whose value is ``???`` in a plain container (``to_container(resolve=False)``
    keeps them as that string, where OmegaConf's own walk would resolve interpolations)."""
    if isinstance(node, dict):
        items = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(node))
    else:
        return
    for where, value in items:
        if value == "???":
            yield where
        yield from _missing_keys(value, where)


def check_required_values(cfg: DictConfig, config: str) -> None:
    """Raise ``ConfigError`` naming every ``???`` value the composed config still has.

    OmegaConf would name the first key that *reads* a missing value (e.g.
    ``trainer.data.train.dataset.img_folder.path``), not the one to set
    (``paths.dataset_root``, from ``dataset=roboflow``).

    Args:
        cfg: The composed config.
        config: Its name (``-c``), for the message.
    """
    missing = sorted(_missing_keys(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        many = len(missing) > 1
        raise ConfigError(
            f"required value{'s' if many else ''} not set: {', '.join(missing)}. Give "
            f"{'them' if many else 'it'} on the command line, e.g. {missing[0]}=<value>. The "
            f"header comments of {config} and of the blocks it selects (configs/lora/dataset/, "
            "runtime/) say what each is.")


def _check_scalar(key: str, value: Any, expected: type, owner: str = "Trainer") -> None:
    if value is None:
        return
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{key}={value!r} must be {expected.__name__} "
                          f"(sam3.train.trainer.{owner}); fix the override or the YAML.")


def _scalar_type(annotation: Any) -> Optional[type]:
    """``int`` for ``int`` or ``Optional[int]`` (same for float/str/bool), else None."""
    if annotation in _SCALARS:
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1 and args[0] in _SCALARS:
        return args[0]
    return None


def _check_dataclass_block(key: str, node: DictConfig, cls: type) -> None:
    # sam3's dataclasses are not valid OmegaConf structured configs (e.g. a List[str]
    # field defaulting to None), so their annotations are checked here directly.
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(node) - names)
    if unknown:
        raise ConfigError(f"{key} has unknown key(s) {unknown}; sam3's {cls.__name__} "
                          f"accepts {sorted(names)}.")
    for name in names & set(node):
        expected = _scalar_type(hints.get(name))
        if expected is not None:
            _check_scalar(f"{key}.{name}", OmegaConf.select(node, name), expected,
                          cls.__name__)


def validate_training_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the first ill-typed value of ``cfg.trainer``.

    Only checks what can be checked without building anything.
    """
    from sam3.train import trainer as sam3_trainer

    trainer = cfg.get("trainer")
    if trainer is None:
        raise ConfigError("The config has no 'trainer' block.")
    params = inspect.signature(sam3_trainer.Trainer.__init__).parameters
    for name, p in params.items():
        if p.annotation in _SCALARS and name in trainer:
            _check_scalar(f"trainer.{name}", OmegaConf.select(trainer, name), p.annotation)
    for block, cls_name in _BLOCKS.items():
        node = trainer.get(block)
        if node is not None:
            _check_dataclass_block(f"trainer.{block}", node, getattr(sam3_trainer, cls_name))
    model = trainer.get("model")
    if model is not None and model.get("_target_") in LORA_WRAPPER_TARGETS:
        # Imported here: lora.config pulls in torch, and the tools import this module
        # for --help.
        from sam3_lora_plugin.lora.config import LoraConfig

        lora = model.get("lora")
        try:
            LoraConfig.from_any(OmegaConf.to_container(lora, resolve=True) if lora else None)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"trainer.model.lora: {e}") from e
        _check_frozen_base_dtype(model.get("frozen_base_dtype"), trainer)


def _check_frozen_base_dtype(dtype: Any, trainer: DictConfig) -> None:
    """``frozen_base_dtype: bfloat16`` is exact only under bf16 autocast (trainer.optim.amp)."""
    if dtype is None:
        return
    if dtype != "bfloat16":
        raise ConfigError(f"trainer.model.frozen_base_dtype={dtype!r} is not supported; use bfloat16 "
                          "or null (keep the checkpoint's fp32).")
    amp = OmegaConf.select(trainer, "optim.amp", default=None)
    if not (amp is not None and amp.get("enabled") and amp.get("amp_dtype") == "bfloat16"):
        raise ConfigError("trainer.model.frozen_base_dtype=bfloat16 needs bf16 autocast "
                          "(trainer.optim.amp.enabled: true, amp_dtype: bfloat16, as runtime=gpu sets); "
                          "without it pass trainer.model.frozen_base_dtype=null.")
