"""Decide which SAM3 modules get LoRA adapters, from a ``LoraConfig``.

Selection works on full dotted module names, so it never depends on substrings that
could silently match nothing: every component that the model lacks and every
exclude pattern that matches nothing is reported; an ``include`` pattern that matches
nothing and an empty selection are errors.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch.nn as nn

from .config import COMPONENTS, LoraConfig

__all__ = ["LoraTarget", "LoraSelectionError", "get_component", "get_layer_role",
           "match_pattern", "select_lora_targets", "trunk_block_filter"]

_MLP_SUFFIXES = ("mlp.fc1", "mlp.fc2", "mlp.c_fc", "mlp.c_proj", "linear1", "linear2")
_ATTN_ROLES = ("q", "k", "v", "out")


class LoraSelectionError(ValueError):
    """The LoRA selection is empty or names something that does not exist."""


@dataclass(frozen=True)
class LoraTarget:
    """One module to adapt.

    Attributes:
        name: full dotted module name.
        kind: ``"mha"`` (nn.MultiheadAttention), ``"qkv"`` (fused q/k/v Linear) or
            ``"linear"``.
        component: the SAM3 component it belongs to, or None.
        targets: mha: subset of q/k/v/out; qkv: subset of q/k/v, or ``("all",)`` when
            fused; linear: ``("all",)``.
        rank: adapter rank.
        alpha: adapter alpha.
    """

    name: str
    kind: str
    component: Optional[str]
    targets: tuple[str, ...]
    rank: int
    alpha: float


def match_pattern(pattern: str, name: str) -> bool:
    """fnmatch (case-sensitive) on the full name, or ``re:<regex>`` with fullmatch."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def get_component(name: str) -> Optional[str]:
    """The SAM3 component (key of ``COMPONENTS``) that module ``name`` belongs to."""
    for component, prefix in COMPONENTS.items():
        if name == prefix or name.startswith(prefix + "."):
            return component
    return None


def get_layer_role(name: str, module: nn.Module) -> Optional[str]:
    """Role of a module: "attention", "qkv", "out", "mlp", "head", or None if not adaptable."""
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    if not isinstance(module, nn.Linear):
        return None
    if name.endswith(".attn.qkv"):
        return "qkv"
    if name.endswith(".attn.proj"):
        return "out"
    if name.endswith(_MLP_SUFFIXES):
        return "mlp"
    return "head"


def _attn_targets(wanted: list[str]) -> tuple[str, ...]:
    return tuple(r for r in _ATTN_ROLES if r in wanted)


_TRUNK_BLOCK = re.compile(re.escape(COMPONENTS["vision_trunk"]) + r"\.blocks\.(\d+)(\.|$)")


def trunk_block_filter(modules: dict[str, nn.Module], cfg: LoraConfig) -> Callable[[str], bool]:
    """``name -> keep?`` for ``cfg.trunk_blocks`` (everything when it is None): the trunk's
    modules in the blocks selected, and its stem (before block 0) only when block 0 is.

    Raises:
        LoraSelectionError: the slice selects no block of this trunk.
    """
    if cfg.trunk_blocks is None:
        return lambda name: True
    blocks = {int(m.group(1)) for n in modules if (m := _TRUNK_BLOCK.match(n))}
    start, end = cfg.trunk_blocks
    kept = set(range(len(blocks))[slice(start, end)])
    if not kept:
        raise LoraSelectionError(
            f"lora.trunk_blocks={cfg.trunk_blocks} selects none of the {len(blocks)} ViT trunk "
            f"blocks; use [start, end] with Python slice semantics, e.g. [-8, null] for the last 8.")

    trunk = COMPONENTS["vision_trunk"] + "."

    def keep(name: str) -> bool:
        m = _TRUNK_BLOCK.match(name)
        if m is None:  # outside the blocks: the trunk's stem comes before block 0
            return not name.startswith(trunk) or 0 in kept
        return int(m.group(1)) in kept

    return keep


def select_lora_targets(model: nn.Module, cfg: LoraConfig) -> tuple[list[LoraTarget], list[str]]:
    """Resolve ``cfg`` against ``model``.

    Args:
        model: a SAM3 image model (or any module with SAM3's naming).
        cfg: the LoRA settings.

    Returns:
        ``(targets, warnings)``: the modules to adapt, in model order, and
        human-readable notes about presets or patterns that matched nothing.

    Raises:
        LoraSelectionError: the selection matches no module, or an ``include`` pattern
            matches none.
    """
    modules = dict(model.named_modules())
    # out_proj of an attention module is adapted through the attention module itself.
    mha_children = {f"{n}.out_proj" for n, m in modules.items()
                    if isinstance(m, nn.MultiheadAttention)}
    warnings: list[str] = []
    for comp in cfg.components:
        if COMPONENTS[comp] not in modules:
            warnings.append(
                f"lora.components names {comp!r} but this model has no "
                f"{COMPONENTS[comp]!r} module; nothing adapted there."
            )
    trunk_keep = trunk_block_filter(modules, cfg)
    include_hits = {p: 0 for p in cfg.include}
    exclude_hits = {p: 0 for p in cfg.exclude}
    attn_roles = _attn_targets(cfg.roles)
    targets: list[LoraTarget] = []
    for name, module in modules.items():
        role = get_layer_role(name, module)
        if role is None or name in mha_children:
            continue
        component = get_component(name)
        selected: tuple[str, ...] = ()
        if component in cfg.components and trunk_keep(name):
            if role == "attention":
                selected = attn_roles
            elif role == "qkv":
                qkv = tuple(r for r in ("q", "k", "v") if r in cfg.roles)
                selected = ("all",) if qkv and cfg.qkv_mode == "fused" else qkv
            elif role in cfg.roles:
                selected = ("all",)
        for pattern in cfg.include:
            if match_pattern(pattern, name):
                include_hits[pattern] += 1
                if not selected:
                    if role == "attention":
                        selected = attn_roles or _ATTN_ROLES
                    else:
                        selected = ("all",)
        if selected:
            for pattern in cfg.exclude:
                if match_pattern(pattern, name):
                    exclude_hits[pattern] += 1
                    selected = ()
        if not selected:
            continue
        kind = {"attention": "mha", "qkv": "qkv"}.get(role, "linear")
        if kind == "qkv" and selected == ("all",):
            kind = "linear"
        rank, alpha = cfg.rank_alpha_for(component)
        targets.append(LoraTarget(name, kind, component, selected, rank, alpha))
    for comp in cfg.components:
        if COMPONENTS[comp] in modules and not any(t.component == comp for t in targets):
            warnings.append(
                f"lora.components names {comp!r} but roles {cfg.roles} match no layer "
                "in it; add a role (e.g. 'head' or 'mlp') or drop the component."
            )
    for kind, hits in (("include", include_hits), ("exclude", exclude_hits)):
        for pattern, n in hits.items():
            if n == 0:
                warnings.append(
                    f"lora.{kind} pattern {pattern!r} matched no adaptable module "
                    "(patterns are matched against full dotted module names, e.g. "
                    "'transformer.decoder.layers.*.linear1')."
                )
    if not targets:
        raise LoraSelectionError(
            f"The LoRA selection matches no module: components={cfg.components}, "
            f"roles={cfg.roles}, include={cfg.include}, exclude={cfg.exclude}. "
            + (" ".join(warnings) + " " if warnings else "")
            + f"Valid components: {list(COMPONENTS)}; print "
            "[n for n, _ in model.named_modules()] to see the module names."
        )
    unmatched = [p for p, n in include_hits.items() if n == 0]
    if unmatched:
        # An explicit include list is what the user asked for: a pattern that selects
        # nothing is a typo or another model's name, not a preset default.
        raise LoraSelectionError(
            f"lora.include pattern(s) {unmatched} match no adaptable module (nn.Linear or "
            "nn.MultiheadAttention). Patterns are fnmatch or 're:<regex>' on full dotted "
            "module names, e.g. 'transformer.decoder.layers.*.linear1'; print "
            "[n for n, _ in model.named_modules()] to see the module names.")
    return targets, warnings
