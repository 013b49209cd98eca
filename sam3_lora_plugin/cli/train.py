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

__all__ = ["build_parser", "check_final_adapter_dir", "export_final_adapter", "get_trained_epochs",
           "main"]

_EPILOG = """\
Hydra overrides (any number, after or between the flags):
  key=value          change a value:        trainer.max_epochs=5
  +key=value         add a new key:         +trainer.model.lora.include=[re:.*linear1]
  ~key               delete a key:          ~trainer.meters
  key='[a,b]'        lists / dicts:         trainer.model.lora.components=[vision_trunk,decoder]
  group=option       pick a config group option under configs/lora/<group>/:
                     lora=qv  (alias of preset=qv; presets: default
                     (= attention_mlp_heads_rebalanced), attention_mlp_heads_rebalanced,
                     attention_mlp_heads, image_mlp, attention_image, qv, attention,
                     attention_mlp, all_linear, low_memory, trunk_last8)
A bad override (unknown key, wrong type, unknown option) is reported before anything
runs or is submitted. Quote values with spaces or shell characters. The resolved config is saved as
<experiment_log_dir>/config_resolved.yaml, as with SAM3's own launcher.

A local single-process run prints a compact console (the config, dataset, LoRA and
paths, then progress with ETAs); SAM3's full output goes to <log_dir>/console.log
(--verbose prints it instead). Rerunning a finished run trains nothing and says so.

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
    p.add_argument("--verbose", action="store_true",
                   help="print SAM3's full output (config, every log line) instead of the compact console")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides such as trainer.max_epochs=3")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``argv``, compose the config with overrides, run SAM3's launcher."""
    pre, _ = build_parser().parse_known_args(argv)
    if not pre.verbose and (pre.num_gpus or 1) == 1:
        # torch's C++ warnings (DDP's "find_unused_parameters=True ...") bypass the compact
        # console; read by torch at import, so set before anything imports it.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from sam3_lora_plugin.adapters.metadata import AdapterMismatchError
    from sam3_lora_plugin.data.check import DatasetError
    from sam3_lora_plugin.data.preflight import check_config_datasets
    from sam3_lora_plugin.lora.selection import LoraSelectionError
    from sam3_lora_plugin.models.base_checkpoint import CheckpointError
    from sam3_lora_plugin.trainer.config_check import (LORA_WRAPPER_TARGETS, ConfigError,
                                                       check_added_keys, check_required_values,
                                                       validate_training_config)
    from sam3_lora_plugin.trainer.model_check import check_lora_files

    from sam3_lora_plugin.cli.console import ignore_sam3_import_noise

    ignore_sam3_import_noise()
    import sam3.train.train as sam3_train

    args, unknown = build_parser().parse_known_args(argv)
    dashed = [u for u in unknown if u.startswith("-")]
    if dashed:
        build_parser().error(f"unrecognized arguments: {' '.join(dashed)}")
    overrides = expand_group_overrides(list(args.overrides) + list(unknown), args.config)
    args.use_cluster = bool(args.use_cluster) if args.use_cluster is not None else None

    from hydra.core.global_hydra import GlobalHydra

    from sam3_lora_plugin.trainer.compose import register_sam3_resolvers

    GlobalHydra.instance().clear()
    initialize_config_module("sam3.train", version_base="1.2")
    register_sam3_resolvers()  # idempotent: main() may run twice in one process (tests)
    # Compose once here so a bad override fails with Hydra's message before anything
    # runs or is submitted; SAM3's main() then composes the same config again.
    try:
        cfg = compose(config_name=args.config, overrides=overrides)
        check_added_keys(cfg, overrides)
        run_dir = cfg.launcher.experiment_log_dir
        if run_dir is not None and not os.path.isabs(str(run_dir)):
            # A config's relative run dir (runs/<run_name>) is made absolute here so that
            # every path the tools print is; SAM3's stock launcher resolves it against the
            # same cwd.
            overrides.append(f"launcher.experiment_log_dir={_quote(os.path.abspath(str(run_dir)))}")
            cfg = compose(config_name=args.config, overrides=overrides)
        check_required_values(cfg, args.config)
        validate_training_config(cfg)
        # Check the datasets now, before a model is built or a job submitted.
        use_cluster = args.use_cluster if args.use_cluster is not None else bool(
            cfg.get("submitit", {}).get("use_cluster", False))
        check_config_datasets(cfg, job_array=use_cluster, skip=(
            ("trainer.data.train",) if cfg.trainer.get("mode") == "val" else ()))
        log_dir = cfg.launcher.experiment_log_dir or os.path.join(os.getcwd(), "sam3_logs",
                                                                  args.config)
        if not use_cluster:
            check_final_adapter_dir(log_dir)
        # The files the run reads (checkpoint.pt, resume_from, adapter_path, the base),
        # against the config's LoRA layout, from a weightless build of the model.
        if OmegaConf.select(cfg, "trainer.model._target_") in LORA_WRAPPER_TARGETS:
            check_lora_files(cfg, args.config)
    except (HydraException, OmegaConfBaseException, ConfigError, DatasetError, CheckpointError,
            AdapterMismatchError, LoraSelectionError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    # SAM3's main() calls the module-level name `compose(config_name=...)`; binding our
    # overrides to it is the only change, and it lives in this process only.
    sam3_train.compose = functools.partial(compose, overrides=overrides)
    from sam3_lora_plugin.trainer.submitit_runner import LoraSubmititRunner

    sam3_train.SubmititRunner = LoraSubmititRunner  # job-array fix, see that module
    from hydra_plugins.sam3_lora_plugin_searchpath import env_redaction

    env_redaction.install()  # no secret values in SAM3's environment log (every rank)
    if use_cluster:
        _run_sam3(sam3_train, args, cfg, log_dir)
        return
    if _already_trained(cfg, log_dir):
        export_final_adapter(log_dir)
        return
    procs = args.num_gpus if args.num_gpus is not None else cfg.launcher.gpus_per_node
    if args.verbose or (procs or 1) > 1 or cfg.launcher.get("num_nodes", 1) > 1:
        _run_sam3(sam3_train, args, cfg, log_dir)
    else:
        from sam3_lora_plugin.cli.console import compact_console, format_header

        print(format_header(cfg, args.config, list(args.overrides) + list(unknown)), flush=True)
        console_log = os.path.join(str(cfg.trainer.logging.log_dir), "console.log")
        with compact_console(console_log, cfg.trainer.get("max_epochs", 1)):
            _run_sam3(sam3_train, args, cfg, log_dir)
    export_final_adapter(log_dir)


def check_final_adapter_dir(experiment_log_dir: str) -> None:
    """Refuse, before training, a ``<dir>/adapter`` the final export may not replace.

    Raises:
        ConfigError: it exists and is neither empty nor an adapter directory.
    """
    from sam3_lora_plugin.adapters.outputs import (ADAPTER_FILES, OutputPathError,
                                                   check_output_dir, is_adapter_dir)
    from sam3_lora_plugin.trainer.config_check import ConfigError

    try:
        check_output_dir(os.path.join(experiment_log_dir, "adapter"), owned=ADAPTER_FILES,
                         what="adapter directory", is_own=is_adapter_dir)
    except OutputPathError as e:
        raise ConfigError(f"{e} The launcher exports the adapter there at the end of the run: "
                          "move it aside or set another launcher.experiment_log_dir.") from e


def _run_sam3(sam3_train, args, cfg, experiment_log_dir: str) -> None:
    """SAM3's ``main(args)``; one of our errors raised inside it becomes one ``error:``
    line (exit 2), its traceback appended to the run's ``log.txt``."""
    from omegaconf import OmegaConf

    from sam3_lora_plugin.trainer.errors import append_traceback, get_plugin_error_message

    try:
        sam3_train.main(args)
    except Exception as e:
        message = get_plugin_error_message(e)
        if message is None:
            raise
        try:  # the run's log_dir, with the experiment dir the launcher resolved
            tmp = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
            tmp.launcher.experiment_log_dir = experiment_log_dir
            log_dir = OmegaConf.select(tmp, "trainer.logging.log_dir", default=None)
        except Exception:  # an unresolvable log_dir: fall back to the experiment dir
            log_dir = None
        where = append_traceback(e, os.path.join(log_dir or experiment_log_dir, "log.txt"))
        print(f"error: {message}" + (f" (traceback in {where})" if where else ""),
              file=sys.stderr)
        sys.exit(2)


def _quote(value: str) -> str:
    """A Hydra override value that survives spaces, quotes and ``=`` in paths."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def get_trained_epochs(checkpoint_dir: str) -> Optional[int]:
    """Epochs a run's ``<checkpoint_dir>/checkpoint.pt`` has completed (None: no checkpoint)."""
    from sam3_lora_plugin.models.base_checkpoint import read_checkpoint

    path = os.path.join(checkpoint_dir, "checkpoint.pt")
    if not os.path.isfile(path):
        return None
    epoch = read_checkpoint(path, weights_only=False).get("epoch")
    return int(epoch) if epoch is not None else None


def _already_trained(cfg, run_dir: str) -> bool:
    """True (and say so) when the run's checkpoint has all of ``trainer.max_epochs``."""
    if cfg.trainer.get("mode", "train") == "val":
        return False
    done = get_trained_epochs(str(cfg.trainer.checkpoint.save_dir))
    total = int(cfg.trainer.get("max_epochs", 0))
    if done is None or done < total:
        return False
    fresh = ("paths.run_name=<new name>" if cfg.get("paths", {}).get("run_name") is not None
             else "launcher.experiment_log_dir=<new dir>")
    print(f"{run_dir} has already trained {done} of {total} epochs: nothing to train. Pass "
          f"trainer.max_epochs={done + total} (any N > {done}) to continue it, or "
          f"{fresh} for a new run.", flush=True)
    return True


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
