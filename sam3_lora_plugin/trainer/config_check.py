"""Type-check a composed training config before anything runs or is submitted.

SAM3's configs are untyped YAML, so Hydra accepts ``trainer.max_epochs=abc`` and the
mistake only surfaces inside the Trainer, on the cluster, minutes later. This checks,
against SAM3's own declarations rather than a copy of them:

* the scalar keyword arguments of ``sam3.train.trainer.Trainer`` (``max_epochs: int``,
  ``mode: str``, ...), by their annotations;
* ``trainer.distributed``, ``trainer.cuda``, ``trainer.checkpoint`` and
  ``trainer.logging`` against the Trainer's dataclasses (``DistributedConf`` ...):
  unknown keys, and scalar fields of the wrong type;
* the LoRA block, when ``trainer.model`` is ``build_lora_sam3``, through ``LoraConfig``,
  the wrapper's own keys against ``build_lora_sam3``'s signature, and that its
  ``cpu_fallbacks`` agrees with ``trainer.accelerator`` (a CPU run needs them even on a
  GPU machine; a CUDA run must not get them);
* values SAM3 only rejects deep inside: ``trainer.max_epochs`` < 1 (SAM3 then fails on
  its seed, or trains nothing), an unknown ``trainer.mode`` (a bare ``AssertionError``
  after the model is built), unknown ``trainer.*`` keys (a ``TypeError`` from
  ``Trainer.__init__``), a ``trainer.checkpoint.resume_from`` that does not exist, and
  an image resolution that is not a multiple of the ViT patch size (14), for the model
  builders whose patch size is known (``build_sam3_arch``, stock
  ``build_sam3_image_model``; a ``ValueError`` or a shape error after the build).

``check_required_values`` names every ``???`` value still unset, all at once;
``check_added_keys`` rejects a ``+key=value`` override that nothing reads, naming the
nearest real key (``+checkpoint.resume_from=x``: did you mean
``trainer.checkpoint.resume_from``?).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import typing
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ARCH_BUILDER", "LORA_WRAPPER_TARGETS", "SAM3_TOP_LEVEL_KEYS", "STOCK_BUILDER",
           "TRAINER_MODES", "ConfigError",
           "check_added_keys", "check_required_values", "get_dotted_keys", "suggest_key",
           "validate_training_config"]

_SCALARS = (int, float, str, bool)
_BLOCKS = {"distributed": "DistributedConf", "cuda": "CudaConf",
           "checkpoint": "CheckpointConf", "logging": "LoggingConf"}
#: The ``_target_`` names of the LoRA model wrapper (``trainer.model``).
LORA_WRAPPER_TARGETS = ("sam3_lora_plugin.build_lora_sam3",
                        "sam3_lora_plugin.trainer.wrapper.build_lora_sam3")
#: The ``_target_`` names of the SAM3 image-model builders whose patch size (14) is known:
#: this project's ``build_sam3_arch`` and stock ``build_sam3_image_model``.
ARCH_BUILDER = ("sam3_lora_plugin.build_sam3_arch", "sam3_lora_plugin.models.arch.build_sam3_arch")
STOCK_BUILDER = "sam3.model_builder.build_sam3_image_model"
_SAM3_RESOLUTION = 1008  # the image side stock build_sam3_image_model is built for
#: Top-level keys SAM3's launcher reads (``sam3/train/train.py``: ``launcher``, ``submitit``,
#: ``trainer``, ``cluster``) or its configs interpolate from (``paths``, ``scratch``).
SAM3_TOP_LEVEL_KEYS = ("trainer", "launcher", "submitit", "paths", "scratch", "cluster")
#: ``Trainer.run`` asserts ``self.mode in ["train", "train_only", "val"]``.
TRAINER_MODES = ("train", "train_only", "val")
_HYDRA_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}


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


def get_dotted_keys(node: Any, prefix: str = "", depth: int = 5) -> list[str]:
    """Every dotted key of a plain container, down to ``depth`` levels (lists skipped)."""
    if not isinstance(node, dict) or depth == 0:
        return []
    out = []
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.append(key)
        out += get_dotted_keys(v, key, depth - 1)
    return out


def suggest_key(key: str, known: Sequence[str]) -> str:
    """`` Did you mean X?`` for the real key ``key`` most likely meant, or ``""``.

    A real key that ends with ``key`` wins (``checkpoint.resume_from`` ->
    ``trainer.checkpoint.resume_from``), then the closest spelling.
    """
    ends = sorted((k for k in known if k.endswith("." + key)), key=len)
    if ends:
        return f" Did you mean {ends[0]}?"
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" Did you mean {close[0]}?" if close else ""


def check_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Raise ``ConfigError`` for a ``+key=value`` override that adds a top-level key
    nothing reads.

    Hydra accepts ``+checkpoint.resume_from=x`` as a new top-level ``checkpoint`` block
    that SAM3 never looks at, so the run silently starts from scratch. Keys under
    ``paths`` and ``scratch`` are free-form (configs interpolate them); ``trainer.*`` keys
    are checked by ``validate_training_config``.
    """
    known = get_dotted_keys(OmegaConf.to_container(cfg, resolve=False))
    for ov in overrides:
        if not ov.startswith("+") or ov.startswith("++"):
            continue
        key = ov[1:].partition("=")[0].strip()
        if key.split(".")[0].split("@")[0] not in SAM3_TOP_LEVEL_KEYS and "/" not in key:
            known_here = [k for k in known if k != key and not k.startswith(key + ".")]
            raise ConfigError(
                f"override {ov!r} adds the top-level key {key.split('.')[0]!r}, which neither "
                f"SAM3 nor this plugin reads (top-level keys: {', '.join(SAM3_TOP_LEVEL_KEYS)})."
                + suggest_key(key, known_here) + " Drop the '+' to change an existing key.")


def _check_known_keys(where: str, node: DictConfig, accepted: set, owner: str) -> None:
    unknown = sorted(str(k) for k in node if k not in accepted and k not in _HYDRA_KEYS)
    if unknown:
        hint = suggest_key(unknown[0], sorted(accepted))
        raise ConfigError(f"{where}.{unknown[0]} is not a setting of {owner}.{hint} "
                          f"Accepted: {', '.join(sorted(accepted))}.")


def _check_settings(trainer: DictConfig) -> None:
    epochs = OmegaConf.select(trainer, "max_epochs", default=None)
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs < 1:
        raise ConfigError(f"trainer.max_epochs={epochs} must be at least 1 (SAM3 seeds from "
                          "it and would train nothing); e.g. trainer.max_epochs=1.")
    mode = OmegaConf.select(trainer, "mode", default="train")
    if mode not in TRAINER_MODES:
        hint = suggest_key(str(mode), TRAINER_MODES)
        raise ConfigError(f"trainer.mode={mode!r} is not a SAM3 Trainer mode; use one of "
                          f"{', '.join(TRAINER_MODES)}.{hint}")
    resume = OmegaConf.select(trainer, "checkpoint.resume_from", default=None)
    if isinstance(resume, str) and not os.path.exists(resume):
        raise ConfigError(f"trainer.checkpoint.resume_from={resume!r} does not exist. Give "
                          "the path of a Trainer checkpoint (.../checkpoints/checkpoint.pt), "
                          "or trainer.checkpoint.resume_from=null to start fresh.")


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


def _check_cpu_fallbacks(trainer: DictConfig, model: DictConfig) -> None:
    accelerator = OmegaConf.select(trainer, "accelerator", default="cuda")  # the Trainer's default
    on_cpu = str(accelerator).split(":")[0] == "cpu"
    fallbacks = bool(OmegaConf.select(model, "cpu_fallbacks", default=False))
    if on_cpu != fallbacks:
        fix = "true" if on_cpu else "false"
        raise ConfigError(
            f"trainer.accelerator={accelerator} but trainer.model.cpu_fallbacks={str(fallbacks).lower()}: "
            f"{'a CPU run needs the fallbacks (sam3 sends CPU tensors to its Triton focal loss otherwise)' if on_cpu else 'a CUDA run must not swap in the CPU fallbacks'}. "
            f"Set trainer.model.cpu_fallbacks={fix}, or pick runtime={'cpu' if on_cpu else 'gpu'}.")


def _model_builder(trainer: DictConfig) -> Optional[tuple[str, str]]:
    """``(key, target)`` of the SAM3 builder node whose patch size is known: ``model``
    itself, or the LoRA wrapper's ``model.model``; None for any other model."""
    for key in ("model", "model.model"):
        target = OmegaConf.select(trainer, f"{key}._target_", default=None)
        if target in ARCH_BUILDER or target == STOCK_BUILDER:
            return key, target
    return None


def _check_resolution(cfg: DictConfig, trainer: DictConfig) -> None:
    """The image side the model gets must be a positive multiple of the patch size.

    ``build_sam3_arch`` reads its ``resolution`` argument (named as the key it
    interpolates, ``scratch.resolution`` in the shipped configs); stock
    ``build_sam3_image_model`` has none and gets images of ``scratch.resolution`` from
    the transforms.
    """
    found = _model_builder(trainer)
    if found is None:
        return
    key, target = found
    where = "scratch.resolution"
    if target in ARCH_BUILDER:
        where = f"trainer.{key}.resolution"
        raw = OmegaConf.to_container(OmegaConf.select(trainer, key), resolve=False).get("resolution")
        ref = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
        where = ref.group(1) if ref else where
    try:
        value = OmegaConf.select(cfg, where, default=None)
    except OmegaConfBaseException:
        return  # an unresolvable value: check_required_values or the build names it
    if value is None:
        return  # build_sam3_arch's default for the size (a multiple of 14)
    # Imported here: models.arch pulls in sam3's model code.
    from sam3_lora_plugin.models.arch import PATCH_SIZE

    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} must be an int, a multiple of the patch size "
                          f"{PATCH_SIZE} (e.g. {where}=1008); fix the override or the YAML.")
    if value > 0 and value % PATCH_SIZE == 0:
        return
    nearest = max(PATCH_SIZE, round(value / PATCH_SIZE) * PATCH_SIZE)
    fix = f"use {where}={nearest}, the nearest valid value"
    if target == STOCK_BUILDER and nearest != _SAM3_RESOLUTION:  # built for 1008 px (doctor's check)
        fix = f"use {where}={_SAM3_RESOLUTION}, stock SAM3's resolution (the nearest multiple is {nearest})"
    raise ConfigError(
        f"{where}={value} is not a {'multiple' if value > 0 else 'positive multiple'} of the "
        f"patch size {PATCH_SIZE} ({target.rsplit('.', 1)[-1]} cuts images into "
        f"{PATCH_SIZE}x{PATCH_SIZE} px patches); {fix}.")


def validate_training_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the first ill-typed value of ``cfg.trainer``.

    Only checks what can be checked without building anything.
    """
    from sam3.train import trainer as sam3_trainer

    trainer = cfg.get("trainer")
    if trainer is None:
        raise ConfigError("The config has no 'trainer' block.")
    params = inspect.signature(sam3_trainer.Trainer.__init__).parameters
    _check_known_keys("trainer", trainer, set(params) - {"self"},
                      "sam3.train.trainer.Trainer")
    for name, p in params.items():
        if p.annotation in _SCALARS and name in trainer:
            _check_scalar(f"trainer.{name}", OmegaConf.select(trainer, name), p.annotation)
    for block, cls_name in _BLOCKS.items():
        node = trainer.get(block)
        if node is not None:
            _check_dataclass_block(f"trainer.{block}", node, getattr(sam3_trainer, cls_name))
    _check_settings(trainer)
    _check_resolution(cfg, trainer)
    model = trainer.get("model")
    if model is not None and model.get("_target_") in LORA_WRAPPER_TARGETS:
        # Imported here: lora.config pulls in torch, and the tools import this module
        # for --help.
        from sam3_lora_plugin.lora.config import LoraConfig
        from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

        _check_known_keys("trainer.model", model,
                          set(inspect.signature(build_lora_sam3).parameters),
                          "sam3_lora_plugin.build_lora_sam3")

        _check_cpu_fallbacks(trainer, model)
        lora = model.get("lora")
        try:
            LoraConfig.from_any(OmegaConf.to_container(lora, resolve=True) if lora else None)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"trainer.model.lora: {e}") from e
        _check_frozen_base_dtype(model.get("frozen_base_dtype"), trainer)


def _check_frozen_base_dtype(dtype: Any, trainer: DictConfig) -> None:
    """``frozen_base_dtype: bfloat16`` / ``nf4`` are exact only under bf16 autocast
    (trainer.optim.amp); ``nf4`` also needs torchao installed."""
    if dtype is None:
        return
    if dtype not in ("bfloat16", "nf4"):
        raise ConfigError(f"trainer.model.frozen_base_dtype={dtype!r} is not supported; use bfloat16, "
                          "nf4 (QLoRA) or null (keep the checkpoint's fp32).")
    amp = OmegaConf.select(trainer, "optim.amp", default=None)
    if not (amp is not None and amp.get("enabled") and amp.get("amp_dtype") == "bfloat16"):
        raise ConfigError(f"trainer.model.frozen_base_dtype={dtype} needs bf16 autocast "
                          "(trainer.optim.amp.enabled: true, amp_dtype: bfloat16, as runtime=gpu sets); "
                          "without it pass trainer.model.frozen_base_dtype=null.")
    if dtype == "nf4":
        from sam3_lora_plugin.lora.nf4 import require_torchao

        try:
            require_torchao()
        except ImportError as e:
            raise ConfigError(f"trainer.model.{e}") from None
