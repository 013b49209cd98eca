"""Compose a SAM3 training config the way SAM3's launcher does, with overrides.

``python -m sam3.train.train`` composes ``-c NAME`` inside ``initialize_config_module(
"sam3.train")``, where our search-path plugin adds ``pkg://hydra_configs``; this module does
the same for the tools that read a config before (or instead of) running it
(``doctor``, ``evaluate``). SAM3's OmegaConf resolvers (``times``, ``string``, ...) are
registered once, so ``${...}`` interpolations resolve as they do in a run.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["compose_config", "register_sam3_resolvers"]


def register_sam3_resolvers() -> None:
    """Register SAM3's OmegaConf resolvers unless they already are (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("times"):
        from sam3.train.utils.train_utils import register_omegaconf_resolvers

        register_omegaconf_resolvers()


def compose_config(config_name: str, overrides: Sequence[str] = ()):
    """Compose ``config_name`` (e.g. ``configs/lora/smoke_cpu.yaml``) with Hydra overrides.

    Args:
        config_name: A name SAM3's launcher accepts for ``-c``.
        overrides: Hydra overrides (``key=value``, ``+key=value``, ``~key``), and config
            group choices as ``python -m sam3_lora_plugin.train`` takes them (``lora=qv``).

    Returns:
        The composed ``DictConfig`` (interpolations unresolved).

    Raises:
        hydra.errors.MissingConfigException: no such config (is the plugin installed?).
        hydra.errors.ConfigCompositionException: a bad override.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sam3_lora_plugin.train import expand_group_overrides

    overrides = expand_group_overrides(list(overrides), config_name)
    register_sam3_resolvers()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_module("sam3.train", version_base="1.2"):
        return compose(config_name=config_name, overrides=list(overrides))
