"""``python -m sam3_lora_plugin.evaluate``: the base model vs the adapted model, same split,
SAM3's own COCO evaluators.

Runs SAM3's Trainer in ``trainer.mode=val`` twice through ``python -m
sam3_lora_plugin.train`` (so SAM3's launcher, data pipeline, postprocessors,
``PredictionDumper`` and ``CocoEvaluatorOfflineWithPredFileEvaluators`` do the work):

1. base: ``trainer.model.adapter_path=null``. ``build_lora_sam3`` still injects the
   adapters, but they are zero at initialisation (``B = 0``), so the outputs are exactly
   the base model's.
2. adapter: ``trainer.model.adapter_path=<DIR>``.

Each run writes into its own directory under ``--out`` (never the training run's, whose
``checkpoint.pt`` the Trainer would resume). Then ``comparison.md`` and
``comparison.json`` are written: overall AP/AP50/AP75 as SAM3's evaluator logged them,
and per category from the same prediction dumps. The resolution is the config's
(``scratch.resolution``: 1008, SAM3's, in the real-weights configs).

Example::

    python -m sam3_lora_plugin.evaluate -c configs/lora/coco_segm.yaml \\
        --adapter runs/coco_segm/adapter --out eval_mydata \\
        paths.dataset_root=/data/mydata scratch.val_split=test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import deque
from typing import Any, Optional, Sequence

from sam3_lora_plugin.trainer.config_check import LORA_WRAPPER_TARGETS

# Modules that pull in torch, sam3 or Hydra are imported inside the functions that need
# them, so that `--help` and a bad argument answer at once.

__all__ = ["EvaluationError", "build_parser", "evaluate", "format_brief", "get_run_command", "main",
           "write_pictures"]

_STOCK_BUILDER = "sam3.model_builder.build_sam3_image_model"
_SAM3_RESOLUTION = 1008
# What evaluate() writes into --out; an --out holding anything else is refused.
EVAL_OUTPUTS = ("base", "adapter", "base.log", "adapter.log", "comparison.json", "comparison.md")

_EPILOG = """\
Hydra overrides (after the flags) go to both runs, e.g. paths.dataset_root=/data/x
scratch.val_split=test. The split evaluated is the config's val dataset and the ground truth
its COCO evaluators read (gt_path).

Output (--out): base/ and adapter/ (SAM3 run directories: logs, prediction dumps,
resolved config), base.log and adapter.log (the runs' output), comparison.md and
comparison.json, before_after.png (base | adapter | ground truth on the images where the two
differ most), per_category_ap.png (base vs adapter AP per category) and, when the adapter sits
in a training run (<run>/adapter, or --train-run), curves.png (its loss and held-out AP). Exit code 1 if a run fails or the runs cannot be compared, 2 for a bad override.
"""


class EvaluationError(RuntimeError):
    """A run failed or the config cannot be evaluated; the message says what to fix."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.evaluate",
        description="Evaluate the base SAM3 model and the LoRA-adapted model on the same split with "
                    "SAM3's own COCO evaluators (bbox and, if the config has it, segm) and write a "
                    "comparison table (overall and per category AP, AP50, AP75) as Markdown and JSON.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="config name, e.g. configs/lora/coco_box.yaml")
    p.add_argument("--adapter", required=True,
                   help="adapter directory (adapter_config.json + adapter_model.safetensors), e.g. "
                        "<experiment_log_dir>/adapter from python -m sam3_lora_plugin.train")
    p.add_argument("--out", default="sam3_eval", help="output directory (default: ./sam3_eval)")
    p.add_argument("--num-gpus", type=int, default=None, help="processes (GPUs) per run")
    p.add_argument("--verbose", action="store_true", help="print the runs' full output")
    p.add_argument("--train-run", default=None,
                   help="the training run whose curves go to curves.png (default: the adapter's "
                        "parent directory when it is a run)")
    p.add_argument("--brief", action="store_true",
                   help="print only the overall base-vs-adapter AP table and the file paths "
                        "(comparison.md keeps the per-category tables)")
    p.add_argument("--gallery-images", type=int, default=4, help="rows of before_after.png (default 4)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="score threshold of the detections drawn in before_after.png (default 0.5)")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides for both runs")
    return p


def _quote(value: str) -> str:
    """A Hydra override value that survives spaces, quotes and ``=`` in paths."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def get_run_command(config: str, overrides: Sequence[str], experiment_log_dir: str,
                    adapter: Optional[str], num_gpus: Optional[int] = None) -> list[str]:
    """The ``python -m sam3_lora_plugin.train`` command of one val run."""
    cmd = [sys.executable, "-m", "sam3_lora_plugin.train", "-c", config, "--use-cluster", "0"]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    return cmd + list(overrides) + [
        "trainer.mode=val",
        f"launcher.experiment_log_dir={_quote(os.path.abspath(experiment_log_dir))}",
        f"++trainer.model.adapter_path={'null' if adapter is None else _quote(os.path.abspath(adapter))}",
        "++trainer.checkpoint.resume_from=null",
        "++trainer.skip_saving_ckpts=true",
    ]


def _check_config(config: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Compose the config, check it can be evaluated and run the dataset check."""
    from omegaconf import OmegaConf

    from sam3_lora_plugin.trainer.compose import compose_config
    from sam3_lora_plugin.data.preflight import check_config_datasets

    from sam3_lora_plugin.trainer.config_check import check_required_values, validate_training_config

    cfg = compose_config(config, list(overrides) + ["trainer.mode=val"])
    check_required_values(cfg, config)
    validate_training_config(cfg)
    target = OmegaConf.select(cfg, "trainer.model._target_")
    if target not in LORA_WRAPPER_TARGETS:
        raise EvaluationError(
            f"{config}: trainer.model._target_ is {target!r}; evaluation needs "
            "sam3_lora_plugin.build_lora_sam3 (it loads the adapter through adapter_path).")
    check_config_datasets(cfg, skip=("trainer.data.train",))  # a val run reads no train split
    resolution = OmegaConf.select(cfg, "scratch.resolution", default=None)
    builder = OmegaConf.select(cfg, "trainer.model.model._target_", default=None)
    if builder == _STOCK_BUILDER and resolution != _SAM3_RESOLUTION:
        print(f"WARNING: scratch.resolution={resolution}, but SAM3's resolution (and the stock "
              f"builder's) is {_SAM3_RESOLUTION}.", file=sys.stderr)
    return {"resolution": resolution, "model": builder, "cfg": cfg}


def _run(cmd: list[str], log_path: str, verbose: bool) -> None:
    tail: deque[str] = deque(maxlen=40)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            tail.append(line)
            if verbose or "Val Epoch: [" in line:
                print("    " + line.rstrip()[:160], flush=True)
    last = tail[-1].strip() if tail else ""
    if proc.returncode == 2 and last.startswith("error: "):  # the launcher's one-line error
        raise EvaluationError(f"{last[len('error: '):]} (full output in {log_path})")
    if proc.returncode != 0:
        raise EvaluationError(f"The run failed (exit code {proc.returncode}); full output in {log_path}. "
                              "Last lines:\n" + "".join(tail))


def evaluate(config: str, adapter: str, out_dir: str, overrides: Sequence[str] = (), *,
             num_gpus: Optional[int] = None, verbose: bool = False,
             pictures: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Evaluate base and adapter, write ``comparison.{md,json}`` into ``out_dir``.

    Args:
        config: Config name, as for ``-c``.
        adapter: Adapter directory.
        out_dir: Output directory (created).
        overrides: Hydra overrides for both runs.
        num_gpus: Processes per run (``--num-gpus``); None: the config's.
        verbose: Print the runs' full output.
        pictures: keyword arguments of ``write_pictures`` (``train_run``, ``num_images``,
            ``threshold``).

    Returns:
        The comparison (as written to ``comparison.json``).

    Raises:
        EvaluationError: a run failed or the config cannot be evaluated.
        DatasetError / AdapterFileError: the dataset or the adapter is broken.
    """
    from sam3_lora_plugin.evaluation import build_comparison, format_markdown, read_val_run
    from sam3_lora_plugin.trainer.model_check import check_adapter_fits_config

    from sam3_lora_plugin.adapters.outputs import check_output_dir, write_text_atomic

    check_output_dir(out_dir, owned=EVAL_OUTPUTS, what="evaluation directory")
    facts = _check_config(config, overrides)  # a bad override fails first
    # A broken adapter, or one that does not fit the config's LoRA settings, fails now,
    # not after the base run.
    check_adapter_fits_config(facts["cfg"], adapter)
    os.makedirs(out_dir, exist_ok=True)
    runs: dict[str, Any] = {}
    for i, (name, path) in enumerate((("base", None), ("adapter", adapter)), 1):
        run_dir = os.path.join(out_dir, name)
        cmd = get_run_command(config, overrides, run_dir, path, num_gpus)
        log_path = os.path.join(out_dir, f"{name}.log")
        print(f"[{i}/2] {name}: python {' '.join(cmd[1:])}\n      log: {log_path}", flush=True)
        _run(cmd, log_path, verbose)
        runs[name] = {"dir": os.path.abspath(run_dir), "command": cmd[1:], "meters": read_val_run(run_dir)}
    info = {"config": config, "adapter": os.path.abspath(adapter), "overrides": list(overrides),
            "resolution": facts["resolution"], "model": facts["model"],
            "base_run": runs["base"]["dir"], "adapter_run": runs["adapter"]["dir"],
            "commands": {k: v["command"] for k, v in runs.items()}}
    comparison = build_comparison(runs["base"]["meters"], runs["adapter"]["meters"], info=info)
    write_text_atomic(os.path.join(out_dir, "comparison.json"), json.dumps(comparison, indent=2))
    write_text_atomic(os.path.join(out_dir, "comparison.md"), format_markdown(comparison))
    comparison["pictures"] = write_pictures(out_dir, runs, comparison, **(pictures or {}))
    return comparison


def _val_image_dir(run_dir: str) -> str:
    """The val images folder of a finished run (its resolved config's val dataset)."""
    from omegaconf import OmegaConf

    from sam3_lora_plugin.evaluation.runs import _resolve_path

    cfg = OmegaConf.load(os.path.join(run_dir, "config_resolved.yaml"))
    node = OmegaConf.to_container(cfg.trainer.data.val.dataset.img_folder, resolve=False)
    return _resolve_path(OmegaConf.create(node) if isinstance(node, dict) else node)


def write_pictures(out_dir: str, runs: dict[str, Any], comparison: dict[str, Any], *,
                   train_run: Optional[str] = None, num_images: int = 4,
                   threshold: float = 0.5) -> dict[str, str]:
    """before_after.png, per_category_ap.png and (with a training run) curves.png."""
    from sam3_lora_plugin.evaluation.curves import plot_training_curves
    from sam3_lora_plugin.evaluation.pictures import write_category_chart, write_gallery

    out: dict[str, str] = {}
    base_meters, adapter_meters = runs["base"]["meters"], runs["adapter"]["meters"]
    pick = next((i for i, m in enumerate(base_meters) if m.iou_type == "segm"), 0)
    b, a = base_meters[pick], adapter_meters[pick]
    path = os.path.join(out_dir, "before_after.png")
    write_gallery(path, b.gt_path, _val_image_dir(runs["base"]["dir"]), b.dump_path, a.dump_path,
                  num_images=num_images, threshold=threshold)
    out["before_after"] = path
    if write_category_chart(os.path.join(out_dir, "per_category_ap.png"), comparison):
        out["per_category_ap"] = os.path.join(out_dir, "per_category_ap.png")
    if train_run and os.path.isfile(os.path.join(train_run, "logs", "val_stats.json")):
        base = {f"{r['iou_type']}_AP": r["overall"]["base"]["AP"] for r in comparison["results"]}
        if plot_training_curves(train_run, os.path.join(out_dir, "curves.png"), base=base):
            out["curves"] = os.path.join(out_dir, "curves.png")
    return out


def format_brief(comparison: dict[str, Any]) -> str:
    """The overall table only: one row per IoU type and metric (AP, AP50), base vs adapter."""
    lines = [f"held-out split: {comparison['results'][0]['num_images']} images "
             f"({comparison['results'][0]['gt_path']})",
             f"{'':<10}{'base':>8}{'adapter':>9}{'delta':>8}"]
    for r in comparison["results"]:
        for metric in ("AP", "AP50"):
            row = r["overall"]
            b, a = row["base"][metric], row["adapter"][metric]
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            delta = "" if a is None or b is None else f"{a - b:+.3f}"
            lines.append(f"{r['iou_type'] + ' ' + metric:<10}{fmt(b):>8}{fmt(a):>9}{delta:>8}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code."""
    from hydra.errors import HydraException

    from sam3_lora_plugin.cli.console import ignore_sam3_import_noise

    ignore_sam3_import_noise()
    from omegaconf.errors import OmegaConfBaseException

    from sam3_lora_plugin.adapters.io import AdapterFileError
    from sam3_lora_plugin.adapters.outputs import OutputPathError
    from sam3_lora_plugin.adapters.metadata import AdapterMismatchError
    from sam3_lora_plugin.data.check import DatasetError
    from sam3_lora_plugin.lora.selection import LoraSelectionError
    from sam3_lora_plugin.models.base_checkpoint import CheckpointError
    from sam3_lora_plugin.trainer.config_check import ConfigError
    from sam3_lora_plugin.evaluation import ComparisonError, RunReadError, format_markdown

    args, unknown = build_parser().parse_known_args(argv)
    dashed = [u for u in unknown if u.startswith("-")]
    if dashed:
        build_parser().error(f"unrecognized arguments: {' '.join(dashed)}")
    train_run = args.train_run
    if train_run is None and os.path.basename(os.path.normpath(args.adapter)) == "adapter":
        train_run = os.path.dirname(os.path.abspath(args.adapter))
    try:
        comparison = evaluate(args.config, args.adapter, args.out, list(args.overrides) + unknown,
                              num_gpus=args.num_gpus, verbose=args.verbose,
                              pictures={"train_run": train_run, "num_images": args.gallery_images,
                                        "threshold": args.threshold})
    except (HydraException, OmegaConfBaseException) as exc:  # a bad override, as the launcher says it
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    except (EvaluationError, DatasetError, AdapterFileError, CheckpointError, AdapterMismatchError,
            LoraSelectionError, ConfigError, ComparisonError, RunReadError, OutputPathError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(format_brief(comparison) if args.brief else format_markdown(comparison))
    print(f"Wrote {os.path.join(args.out, 'comparison.md')} and {os.path.join(args.out, 'comparison.json')}")
    for name, path in comparison.get("pictures", {}).items():
        print(f"  {name + '.png':<20} {os.path.abspath(path)}")
    return 0
