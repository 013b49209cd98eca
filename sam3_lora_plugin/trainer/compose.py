"""Compose a SAM3 training config the way SAM3's launcher does, with overrides.

``python -m sam3.train.train`` composes ``-c NAME`` inside ``initialize_config_module(
"sam3.train")``, where our search-path plugin adds ``pkg://hydra_configs``; this module does
the same for the tools that read a config before (or instead of) running it
(``doctor``, ``evaluate``). SAM3's OmegaConf resolvers (``times``, ``string``, ...) are
registered once, so ``${...}`` interpolations resolve as they do in a run.
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

__all__ = ["GROUP_ALIASES", "compose_config", "expand_group_overrides", "get_config_groups",
           "register_sam3_resolvers"]


#: Hydra's ``GlobalHydra`` is one object per process: two threads composing at once (the
#: learning study's ``--jobs 2`` builds its phases' configs in threads) would both try to
#: initialize it. Composition is quick, so one lock serializes it.
_COMPOSE_LOCK = threading.Lock()

#: Short names for config groups, as in ``lora=qv``.
GROUP_ALIASES = {"lora": "preset"}


def get_config_groups(config: str) -> list[str]:
    """Config groups next to ``config`` in this package (``configs/lora/<group>/``)."""
    from importlib import resources

    package = "hydra_configs." + os.path.dirname(config).replace("/", ".")
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and any(f.name.endswith(".yaml") for f in p.iterdir()))


def expand_group_overrides(overrides: list[str], config: str) -> list[str]:
    """Rewrite ``group=option`` for a group of ``config``'s directory into Hydra's full
    form (``configs/lora/preset@preset=qv``), which is what Hydra requires for a group
    picked in a defaults list of a config that lives in a subdirectory."""
    groups = get_config_groups(config)
    out = []
    for ov in overrides:
        key, eq, value = ov.partition("=")
        key = GROUP_ALIASES.get(key, key)
        if eq and key in groups:
            ov = f"{os.path.dirname(config)}/{key}@{key}={value}"
        out.append(ov)
    return out


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

    overrides = expand_group_overrides(list(overrides), config_name)
    with _COMPOSE_LOCK:
        register_sam3_resolvers()
        if GlobalHydra.instance().is_initialized():
            return compose(config_name=config_name, overrides=list(overrides))
        with initialize_config_module("sam3.train", version_base="1.2"):
            return compose(config_name=config_name, overrides=list(overrides))
