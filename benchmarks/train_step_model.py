"""The configurations of ``benchmarks/train_step.py`` and their models: which parameters
train in each (full fine-tune, frozen backbone, LoRA presets), the optimizer SAM3's
``construct_optimizer`` builds for them, and the trainable-parameter counts."""

from __future__ import annotations

from typing import Any, Optional

from sam3_lora_plugin.lora.config import PRESETS

CONFIGS: tuple[str, ...] = ("full_ft", "frozen_base", "lora_default", "lora_image_mlp")
#: LoRA preset of each LoRA configuration: ``lora_<preset>`` for every preset.
LORA_PRESETS: dict[str, str] = {f"lora_{name}": name for name in PRESETS}
#: More configurations, run only when named in ``--configs``: the other presets (the
#: memory tiers first).
EXTRA_CONFIGS: tuple[str, ...] = ("lora_trunk_last8", "lora_low_memory") + tuple(
    c for c in LORA_PRESETS if c not in CONFIGS + ("lora_trunk_last8", "lora_low_memory"))
#: Parameters frozen in ``frozen_base`` (and not checkpointed, via skip_saving_parameters).
FROZEN_BASE_PATTERNS: tuple[str, ...] = ("backbone.*",)


def build_model(config: str, size: str, resolution: int, seed: int, rank: int,
                frozen_base_dtype: Optional[str] = None, dropout: float = 0.1):
    """The SAM3 model of one configuration, trainable parameters set, in train mode.

    ``dropout`` is ``build_sam3_arch``'s (stock 0.1). On CPU, attention dropout > 0 makes
    torch's ``scaled_dot_product_attention`` take its math kernel, which keeps the whole
    attention matrix (at 1008 px 5,184 x 5,184 per head and prompt) for backward; CUDA's
    fused kernels apply dropout without it. ``--dropout 0`` lets the CPU use its fused
    flash kernel too: the CPU stand-in for the memory a GPU run needs.

    Returns:
        ``(model, skip_saving_parameters)``: the patterns the Trainer's
        ``checkpoint.skip_saving_parameters`` would hold for this configuration.
    """
    from sam3_lora_plugin.models.arch import build_sam3_arch
    from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

    model = build_sam3_arch(size, resolution, seed=seed, dropout=dropout)
    skip: list[str] = []
    if config == "frozen_base":
        import fnmatch

        for name, p in model.named_parameters():
            p.requires_grad_(not any(fnmatch.fnmatch(name, pat) for pat in FROZEN_BASE_PATTERNS))
        skip = list(FROZEN_BASE_PATTERNS)
    elif config in LORA_PRESETS:
        model = build_lora_sam3(model, {"preset": LORA_PRESETS[config], "rank": rank,
                                        "alpha": 2.0 * rank}, adapter_only_checkpoints=True,
                                frozen_base_dtype=frozen_base_dtype)
    elif config != "full_ft":
        raise ValueError(f"unknown configuration {config!r}; choose from {CONFIGS + EXTRA_CONFIGS}")
    return model.train(), skip


def build_optimizer(model, config: str):
    """SAM3's ``construct_optimizer`` with ``smoke_cpu.yaml``'s optimizer options.

    ``full_ft`` gets no param-group modifier (every parameter trains); the others get
    ``lora_param_groups`` (frozen parameters in a zero-lr group, as the Trainer requires
    every parameter in a group).
    """
    from sam3.train.optim.optimizer import construct_optimizer

    from sam3_lora_plugin.testing import get_optim_config

    optim_cfg = get_optim_config()
    modifiers = None if config == "full_ft" else optim_cfg.param_group_modifiers
    return construct_optimizer(model, optim_cfg.optimizer, optim_cfg.options, modifiers), optim_cfg


def describe_trainable(model) -> dict[str, Any]:
    """Trainable / total parameter counts, and trainable counts per top-level module."""
    per_module: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = ".".join(name.split(".")[:2]) if name.startswith("backbone.") else name.split(".")[0]
            per_module[top] = per_module.get(top, 0) + p.numel()
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_by_module": dict(sorted(per_module.items())),
    }
