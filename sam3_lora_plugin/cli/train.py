"""``python -m sam3_lora_plugin.train``: SAM3's launcher plus Hydra command-line overrides.

SAM3's ``python -m sam3.train.train`` accepts a config name and a few SLURM flags but no
overrides. This launcher parses the same flags, hands every remaining ``key=value`` /
``+key=value`` / ``~key`` argument to Hydra's ``compose``, and then runs SAM3's own
``sam3.train.train.main`` unchanged (local single/multi-process runs, submitit, job
arrays), so nothing of the launcher is copied here.

Example::

    python -m sam3_lora_plugin.train -c configs/lora/smoke_cpu.yaml \\
        trainer.max_epochs=1 trainer.model.lora.rank=8 --num-gpus 1
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Optional, Sequence

from sam3_lora_plugin.trainer.compose import expand_group_overrides

# Modules that pull in torch, sam3 or Hydra are imported inside the functions that need
# them, so that `--help` and a bad argument answer at once.

__all__ = ["build_parser", "export_final_adapter", "main"]

_EPILOG = """\
Hydra overrides (any number, after or between the flags):
  key=value          change a value:        trainer.max_epochs=5
  +key=value         add a new key:         +trainer.model.lora.include=[re:.*linear1]
  ~key               delete a key:          ~trainer.meters
  key='[a,b]'        lists / dicts:         trainer.model.lora.components=[vision_trunk,decoder]
  group=option       pick a config group option under configs/lora/<group>/:
                     lora=qv  (alias of preset=qv; presets: default, attention_image, qv,
                     attention, attention_mlp, all_linear)
A bad override (unknown key, wrong type, unknown option) is reported before anything
runs or is submitted. Quote values with spaces or shell characters. The resolved config is saved as
<experiment_log_dir>/config_resolved.yaml, as with SAM3's own launcher.

After a local run, the adapter of the last checkpoint is exported to
<experiment_log_dir>/adapter/ (adapter_config.json + adapter_model.safetensors);
`python -m sam3_lora_plugin.adapters --help` for export/merge/inspect.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: SAM3's launcher flags plus free-form Hydra overrides."""
    p = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.train",
        description="Run a SAM3 training config through SAM3's own launcher, with Hydra "
        "command-line overrides.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True,
                   help="config name, e.g. configs/lora/smoke_cpu.yaml")
    p.add_argument("--use-cluster", type=int, default=None,
                   help="0: run locally, 1: submit through submitit (SLURM if sbatch exists)")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--qos", default=None, help="SLURM qos")
    p.add_argument("--num-gpus", type=int, default=None,
                   help="processes (GPUs) per node; on CPU, gloo processes")
    p.add_argument("--num-nodes", type=int, default=None, help="number of nodes")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides such as trainer.max_epochs=3")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``argv``, compose the config with overrides, run SAM3's launcher."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sam3_lora_plugin.trainer.config_check import (ConfigError, check_required_values,
                                               validate_training_config)
    from sam3_lora_plugin.data.check import DatasetError
    from sam3_lora_plugin.data.preflight import check_config_datasets

    import sam3.train.train as sam3_train
    from sam3.train.utils.train_utils import register_omegaconf_resolvers

    args, unknown = build_parser().parse_known_args(argv)
    dashed = [u for u in unknown if u.startswith("-")]
    if dashed:
        build_parser().error(f"unrecognized arguments: {' '.join(dashed)}")
    overrides = expand_group_overrides(list(args.overrides) + list(unknown), args.config)
    args.use_cluster = bool(args.use_cluster) if args.use_cluster is not None else None

    initialize_config_module("sam3.train", version_base="1.2")
    register_omegaconf_resolvers()
    # Compose once here so a bad override fails with Hydra's message before anything
    # runs or is submitted; SAM3's main() then composes the same config again.
    try:
        cfg = compose(config_name=args.config, overrides=overrides)
        check_required_values(cfg, args.config)
        validate_training_config(cfg)
        # Check the datasets now, before a model is built or a job submitted.
        use_cluster = args.use_cluster if args.use_cluster is not None else bool(
            cfg.get("submitit", {}).get("use_cluster", False))
        check_config_datasets(cfg, job_array=use_cluster, skip=(
            ("trainer.data.train",) if cfg.trainer.get("mode") == "val" else ()))
    except (HydraException, OmegaConfBaseException, ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # SAM3's main() calls the module-level name `compose(config_name=...)`; binding our
    # overrides to it is the only change, and it lives in this process only.
    sam3_train.compose = functools.partial(compose, overrides=overrides)
    from sam3_lora_plugin.trainer.submitit_runner import LoraSubmititRunner

    sam3_train.SubmititRunner = LoraSubmititRunner  # job-array fix, see that module
    sam3_train.main(args)
    if not use_cluster:
        export_final_adapter(cfg.launcher.experiment_log_dir
                             or os.path.join(os.getcwd(), "sam3_logs", args.config))


def export_final_adapter(experiment_log_dir: str) -> Optional[str]:
    """Export ``<dir>/checkpoints/checkpoint.pt``'s adapter to ``<dir>/adapter``.

    Returns the adapter directory, or None when the run left no adapter-only checkpoint
    (e.g. ``trainer.mode=val``, or a model without ``build_lora_sam3``).
    """
    from sam3_lora_plugin.adapters.io import export_adapter
    from sam3_lora_plugin.adapters.metadata import METADATA_KEY
    from sam3_lora_plugin.models.base_checkpoint import read_checkpoint

    ckpt = os.path.join(experiment_log_dir, "checkpoints", "checkpoint.pt")
    if not os.path.exists(ckpt) or METADATA_KEY not in read_checkpoint(
            ckpt).get("model", {}):
        return None
    out = export_adapter(ckpt, os.path.join(experiment_log_dir, "adapter"))
    print(f"Exported the adapter of {ckpt} to {out}")
    return out
