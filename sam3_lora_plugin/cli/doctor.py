"""``python -m sam3_lora_plugin.doctor [-c CONFIG] [overrides...]``: check an install, and a
config, before a run; print one line per check (OK / WARN / FAIL) with the fix.

Without ``-c``: sam3's version (0.1.4 expected) and its trainer's imports, the Hydra
search-path plugin, the BPE vocabulary, CUDA and bf16. With ``-c``: also that the config
composes with the overrides, that the base checkpoint exists (or that the HF hub answers,
with a short timeout), the resolution stock SAM3 needs, that every dataset path exists,
and the dataset checker (``sam3_lora_plugin.data.check``) on every annotation file.
Exit code 1 if any check FAILs, else 0 (warnings do not fail).
"""

from __future__ import annotations

import argparse
import re
from typing import Any, Optional, Sequence

from sam3_lora_plugin.cli.doctor_checks import (Check, check_bpe, check_checkpoint, check_cuda, check_datasets,
                                            check_install, check_resolution, find_dataset_paths)

# Modules that pull in torch, sam3 or Hydra are imported inside the functions that need
# them, so that `--help` and a bad argument answer at once.

__all__ = ["build_parser", "main", "run_checks"]

_EPILOG = """\
examples:
  python -m sam3_lora_plugin.doctor                                  # the install only
  python -m sam3_lora_plugin.doctor -c configs/lora/smoke_cpu.yaml   # CPU smoke run
  python -m sam3_lora_plugin.doctor -c configs/lora/coco_segm.yaml paths.dataset_root=/data/x \\
      paths.checkpoint_path=/ckpt/sam3.pt

Overrides are the ones you will pass to python -m sam3_lora_plugin.train. The dataset check is
the one training runs first (configs/lora/*.yaml call sam3_lora_plugin.data.preflight); details
of a dataset's problems: python -m sam3_lora_plugin.data.check <dataset root or JSON>.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.doctor",
        description="Check the install (sam3 version, trainer imports, config plugin, BPE vocabulary, CUDA, "
                    "bf16) and, with -c, a training config (checkpoint or HF hub, resolution, dataset paths, "
                    "dataset check). One line per check: OK, WARN or FAIL, with the fix. Exit code 1 if any FAIL.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=None, help="config name, e.g. configs/lora/coco_box.yaml")
    p.add_argument("--no-network", action="store_true", help="do not contact the HF hub")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the HF hub (default 5)")
    p.add_argument("--no-images", action="store_true", help="dataset check: JSON only, do not open images")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides, as for training")
    return p


def _check_plugin() -> Check:
    try:
        from hydra.core.plugins import Plugins
        from hydra.plugins.search_path_plugin import SearchPathPlugin

        found = [f"{c.__module__}.{c.__qualname__}" for c in Plugins.instance().discover(SearchPathPlugin)]
    except Exception as exc:  # hydra missing or broken
        return Check("FAIL", "config plugin", f"Hydra plugin discovery failed: {exc}", "pip install hydra-core")
    if any(name.startswith("hydra_plugins.sam3_lora_plugin_searchpath") for name in found):
        return Check("OK", "config plugin", "Hydra finds configs/lora/*.yaml (search-path plugin)")
    return Check("FAIL", "config plugin", "the search-path plugin is not discovered, so -c configs/lora/... "
                 "will not resolve", "reinstall the plugin from its checkout: pip install -e .")


def _resolve(cfg: Any, key: str, checks: list[Check]) -> Any:
    """``cfg.<key>`` as plain containers, or None with a FAIL naming a missing value."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=True)
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException as exc:
        text = str(exc).splitlines()[0]
        found = re.search(r"Missing mandatory value: ([\w.\[\]-]+)", text)
        missing = found.group(1) if found else getattr(exc, "full_key", "") or key
        if any(missing in c.detail for c in checks if c.name == "config"):
            return None  # already reported
        detail = f"{missing} is not set (???)" if found else f"{key}: {text}"
        checks.append(Check("FAIL", "config", detail,
                            f"pass it on the command line, e.g. {missing}=/path/to/..."
                            if found else "fix the value on the command line"))
        return None


def _check_config(config: str, overrides: Sequence[str], args: argparse.Namespace) -> list[Check]:
    from omegaconf import OmegaConf

    from sam3_lora_plugin.trainer.compose import compose_config

    checks: list[Check] = []
    try:
        cfg = compose_config(config, overrides)
    except Exception as exc:  # Hydra's own message says what is wrong
        return [Check("FAIL", "config", f"{config} does not compose: {str(exc).splitlines()[0]}",
                      "check the name (configs/lora/<name>.yaml) and the overrides' keys")]
    try:
        from sam3_lora_plugin.trainer.config_check import validate_training_config

        validate_training_config(cfg)  # types and keys against sam3's Trainer
    except Exception as exc:  # ConfigError, or a missing value it had to resolve
        checks.append(Check("FAIL", "config", f"{config}: {str(exc).splitlines()[0]}",
                            "fix the override or the YAML"))
    else:
        checks.append(Check("OK", "config", f"{config} composes and type-checks" +
                            (f" with {len(overrides)} override(s)" if overrides else "")))
    bpe = OmegaConf.select(cfg, "paths.bpe_path", default=None)
    checks.insert(0, check_bpe(bpe))
    amp_bf16 = bool(OmegaConf.select(cfg, "trainer.optim.amp.enabled", default=False)) and \
        OmegaConf.select(cfg, "trainer.optim.amp.amp_dtype", default=None) == "bfloat16"
    checks += check_cuda(needs_cuda=OmegaConf.select(cfg, "trainer.accelerator", default=None) == "cuda",
                         needs_bf16=amp_bf16)
    model = _resolve(cfg, "trainer.model", checks)
    if model is not None:
        checks += check_checkpoint(model, network=not args.no_network, timeout=args.timeout)
        res = check_resolution(model, OmegaConf.select(cfg, "scratch.resolution", default=None))
        if res is not None:
            checks.append(res)
        checks.append(_check_memory(cfg, model, amp_bf16))
    paths = []
    for key in ("trainer.data", "trainer.meters"):
        node = _resolve(cfg, key, checks)
        if node is not None:
            try:
                paths += find_dataset_paths(node, key)
            except Exception as exc:  # a resolver node failed
                checks.append(Check("FAIL", "dataset path", f"{key}: {type(exc).__name__}: {exc}"))
    if not paths and not any(c.name == "config" and c.status == "FAIL" for c in checks):
        checks.append(Check("WARN", "dataset path", "no img_folder/ann_file/gt_path found in the config"))
    checks += check_datasets(paths, check_images=not args.no_images)
    return checks


def _check_memory(cfg: Any, model: dict, amp_bf16: bool) -> Check:
    """The expected tensor-memory peak from measured figures; on CUDA, against free memory."""
    from omegaconf import OmegaConf

    from sam3_lora_plugin.trainer.memory_estimate import estimate_peak_bytes, measured_presets

    inner, lora = model.get("model") or {}, model.get("lora") or {}
    target = str(inner.get("_target_", ""))
    if target.endswith("build_sam3_arch") and inner.get("size", "full") != "full":
        return Check("OK", "memory", f"size={inner.get('size')} model: no estimate (figures are for full-size SAM3)")
    preset = lora.get("preset", "default")
    custom = [k for k in ("components", "roles", "include", "trunk_blocks") if lora.get(k)]
    res = OmegaConf.select(cfg, "scratch.resolution", default=1008)
    batch = OmegaConf.select(cfg, "scratch.train_batch_size", default=1)
    seg = bool(inner.get("enable_segmentation", True))
    base = model.get("frozen_base_dtype")
    what = (f"preset {preset}, {res} px, batch {batch}, {'bf16 autocast' if amp_bf16 else 'no bf16 autocast'}, "
            f"masks {'on' if seg else 'off'}, frozen base {base or 'fp32'}")
    est = None if custom else estimate_peak_bytes(preset, int(res), int(batch), amp_bf16=amp_bf16,
                                                  segmentation=seg, frozen_base_dtype=base)
    if est is None:
        return Check("OK", "memory", f"no measured figure for {what}" + (f" (custom {', '.join(custom)})" if custom
                     else "") + f"; measured, with bf16 autocast: frozen_base_dtype bfloat16 for presets "
                     f"{measured_presets()}, nf4 for {measured_presets('nf4')} "
                     "(benchmarks/train_step.py)")
    line = f"expected peak {est.format()} for {what}"
    try:
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            if est.peak_bytes > 0.9 * free:
                return Check("WARN", "memory", f"{line}; only {free / 2**30:.1f} GiB free on the GPU",
                             "add lora=low_memory, trainer.model.frozen_base_dtype=nf4 (QLoRA) or "
                             "scratch.train_batch_size=1 to the command")
            line += f"; {free / 2**30:.1f} GiB free on the GPU"
    except Exception:  # no usable CUDA: the estimate alone
        pass
    return Check("OK", "memory", line)


def run_checks(config: Optional[str] = None, overrides: Sequence[str] = (), *, network: bool = True,
               timeout: float = 5.0, check_images: bool = True) -> list[Check]:
    """All checks, in report order (see the module docstring)."""
    args = argparse.Namespace(no_network=not network, timeout=timeout, no_images=not check_images)
    checks = check_install() + [_check_plugin()]
    if config is None:
        return checks + [check_bpe()] + check_cuda()
    return checks + _check_config(config, overrides, args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; prints the report and returns the exit code."""
    import logging
    import warnings

    args, unknown = build_parser().parse_known_args(argv)
    dashed = [u for u in unknown if u.startswith("-")]
    if dashed:
        build_parser().error(f"unrecognized arguments: {' '.join(dashed)}")
    logging.disable(logging.WARNING)  # the report is the output; the checker's log lines repeat it
    warnings.filterwarnings("ignore")
    checks = run_checks(args.config, list(args.overrides) + unknown, network=not args.no_network,
                        timeout=args.timeout, check_images=not args.no_images)
    for check in checks:
        print(check.format())
    n_fail = sum(c.status == "FAIL" for c in checks)
    n_warn = sum(c.status == "WARN" for c in checks)
    print(f"\n{len(checks)} checks: {len(checks) - n_fail - n_warn} OK, {n_warn} WARN, {n_fail} FAIL")
    return 1 if n_fail else 0
