"""Check a dataset automatically before SAM3's trainer reads it.

``checked_path`` is a Hydra-instantiable resolver for dataset paths. The configs use it
for ``img_folder``, ``ann_file`` and the COCO evaluator's ``gt_path``::

    ann_file:
      _target_: sam3_lora_plugin.data.preflight.checked_path
      path: ${paths.dataset_root}/train/_annotations.coco.json

It returns the path unchanged when the dataset is fine, and otherwise raises
``DatasetError`` with the checker's one message (every file, problem and fix). An
annotation file is checked with ``sam3_lora_plugin.data.check.check_coco`` once per
process and per version of the file (cached on its absolute path, size and mtime), so
the train dataset, the val dataset and the evaluator share one check. Warnings are
logged once and never stop a run.

``check_config_datasets`` runs every ``checked_path`` node of a composed config without
building anything else, so a launcher can stop before any model is built or any job is
submitted (``python -m sam3_lora_plugin.evaluate`` does); ``python -m
sam3_lora_plugin.doctor`` reports the same checks (``get_report``) line by line. The
cache is per process and keyed on the JSON file: after fixing only image files in a
long-lived process, call ``clear_cache``.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from .check import CheckReport, DatasetError, check_coco

__all__ = ["TARGET", "DatasetError", "check_config_datasets", "checked_path", "clear_cache",
           "find_checked_paths", "get_report"]

log = logging.getLogger(__name__)

#: The ``_target_`` string of ``checked_path`` as written in the YAML configs.
TARGET = "sam3_lora_plugin.data.preflight.checked_path"

_FIX_PATH = ("point the config at your dataset (e.g. paths.dataset_root=/data/my_dataset, holding "
             "train/ valid/ test/ each with _annotations.coco.json and its images), or convert it "
             "first with `python -m sam3_lora_plugin.data.convert`")

_STRICT_HINT = ("Training stops here so no GPU time is spent on a dataset SAM3 would drop entries of or "
                "crash on. To run anyway, set strict: false on checked_path (this project's configs: "
                "scratch.strict_dataset_check=false).")

_CACHE: dict[tuple, CheckReport] = {}


def _key(json_path: Path, image_dir: Path, check_images: bool) -> tuple:
    st = json_path.stat()
    return (str(json_path), st.st_size, st.st_mtime_ns, str(image_dir), check_images)


def get_report(json_path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
               check_images: bool = True) -> CheckReport:
    """The ``CheckReport`` of one annotation file, computed once per file version.

    Args:
        json_path: A COCO annotation file (must exist).
        image_dir: Folder ``file_name`` is relative to; default the JSON's folder.
        check_images: Open every image file (sizes, EXIF, unreadable or truncated files).

    Returns:
        The cached or fresh report; its warnings are logged the first time.
    """
    path = Path(json_path).expanduser().absolute()
    folder = Path(image_dir).expanduser().absolute() if image_dir else path.parent
    key = _key(path, folder, check_images)
    report = _CACHE.get(key)
    if report is None:
        report = check_coco(path, folder, check_images=check_images)
        _CACHE[key] = report
        for issue in report.warnings:
            log.warning("dataset check: %s: %s (fix: %s)", issue.path, issue.describe(), issue.fix)
        log.info("dataset check of %s: %d images, %d annotations, %d error(s), %d warning(s)",
                 path, report.images, report.annotations, len(report.errors), len(report.warnings))
    return report


def clear_cache() -> None:
    """Forget every cached check (the next ``checked_path`` call checks again)."""
    _CACHE.clear()


def checked_path(path: str, *, image_dir: Optional[str] = None, check_images: bool = True,
                 strict: bool = True, reindex: bool = False, segm_gt: bool = False) -> str:
    """Return ``path`` after checking it; raise ``DatasetError`` if training would fail on it.

    * A folder (``img_folder``) must exist.
    * A ``.json`` file (``ann_file``, ``gt_path``) must exist and pass
      ``check_coco(path, image_dir)`` without errors.

    Args:
        path: The dataset path the config gives SAM3.
        image_dir: Folder the JSON's ``file_name`` entries are relative to (the dataset's
            ``img_folder``); default the JSON's folder, as in the Roboflow layout.
        check_images: Also open every image file (missing, unreadable, truncated or
            rotated images); False checks the JSON only.
        strict: True: checker errors raise ``DatasetError``. False: they are logged as
            warnings and the run goes on (SAM3 then drops or fails on those entries as it
            would without the check). A missing path always raises.
        reindex: Return sam3's ``reindex_coco_to_temp(path)`` (a 1-indexed copy) instead
            of ``path``, as SAM3's ODinW configs do for 0-indexed files. The original is
            what gets checked.
        segm_gt: For a segm evaluator's ``gt_path``: when some annotations have no mask,
            return a copy in which they are ignore regions
            (``sam3_lora_plugin.data.segm_gt.get_segm_eval_gt``); pycocotools' segm
            evaluation would raise ``IndexError`` on them.

    Returns:
        ``path`` (or the derived copy), for SAM3's dataset or evaluator.

    Raises:
        DatasetError: The path is missing, or the checker found errors. The message
            names each file, problem and fix.
    """
    p = Path(str(path)).expanduser()
    if p.suffix.lower() != ".json":
        if not p.is_dir():
            raise DatasetError(f"Dataset image folder {str(path)!r} does not exist. Fix: {_FIX_PATH}.")
        return path
    if not p.is_file():
        raise DatasetError(f"Dataset annotation file {str(path)!r} does not exist. Fix: {_FIX_PATH}.")
    if image_dir is not None and not Path(image_dir).expanduser().is_dir():
        raise DatasetError(f"Dataset image folder {str(image_dir)!r} (for {str(path)!r}) does not exist. "
                           f"Fix: {_FIX_PATH}.")
    report = get_report(p, image_dir, check_images=check_images)
    try:
        report.raise_if_errors()
    except DatasetError as exc:
        if strict:
            raise DatasetError(f"{exc}\n{_STRICT_HINT}") from None
        log.warning("dataset check errors ignored (strict: false):\n%s", exc)
    out = path
    if segm_gt:
        from .segm_gt import get_segm_eval_gt

        out = get_segm_eval_gt(path)
        if out != path:
            log.info("segm evaluation reads %s: %s with its box-only annotations as ignore regions", out, path)
    if reindex:
        from sam3.eval.coco_reindex import reindex_coco_to_temp

        return reindex_coco_to_temp(str(out))
    return out


def find_checked_paths(cfg: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted key, node)`` for every ``checked_path`` node of a config.

    Nodes are yielded unresolved, in document order. Whole-node interpolations (e.g.
    ``transforms: ${scratch.train_transforms}``) are not followed: a node is found where
    it is defined, once.
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        if cfg.get("_target_") == TARGET:
            yield where, cfg
            return
        items = [(k, f"{where}.{k}" if where else str(k)) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        items = [(i, f"{where}[{i}]") for i in range(len(cfg))]
    else:
        return
    for key, name in items:
        if not (OmegaConf.is_interpolation(cfg, key) or OmegaConf.is_missing(cfg, key)):
            yield from find_checked_paths(cfg[key], name)


def check_config_datasets(cfg: Any, *, check_images: bool = True, job_array: bool = False,
                          skip: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Run every ``checked_path`` node of a composed config, as instantiation would.

    Call it right after composing, before anything heavy is built (or submitted).

    Args:
        cfg: The composed config (OmegaConf).
        check_images: False: check the JSON files only (overrides the nodes' value).
        job_array: Also check every task of ``submitit.job_array`` (each resolves its own
            ``task_index``, e.g. one dataset per task in rf100vl.yaml), not only the
            config's current one.
        skip: Dotted-key prefixes to leave out, e.g. ``("trainer.data.train",)`` for a
            ``trainer.mode=val`` run, which never reads the train split.

    Returns:
        ``(dotted key, path)`` for each node checked, in document order (task by task).

    Raises:
        DatasetError: The first node whose dataset fails, with the checker's message.
        omegaconf.errors.MissingMandatoryValue: a required path (``???``) is not set.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    tasks = OmegaConf.select(cfg, "submitit.job_array.num_tasks", default=None)
    indices: list[Optional[int]] = [None]
    if job_array and isinstance(tasks, int) and tasks > 0:
        cfg, indices = copy.deepcopy(cfg), list(range(tasks))
    overrides: dict[str, Any] = {"reindex": False, "segm_gt": False}  # check only: the trainer makes the copies
    if not check_images:
        overrides["check_images"] = False
    checked: list[tuple[str, str]] = []
    for index in indices:
        if index is not None:  # interpolations resolve lazily: each task sees its own index
            OmegaConf.update(cfg, "submitit.job_array.task_index", index)
        for where, node in find_checked_paths(cfg):
            if any(where == p or where.startswith(p + ".") for p in skip):
                continue
            try:
                checked.append((where, instantiate(node, **overrides)))
            except Exception as exc:  # Hydra wraps the target's exception: surface the checker's
                cause = exc.__cause__
                while cause is not None and not isinstance(cause, DatasetError):
                    cause = cause.__cause__
                if cause is None:
                    raise
                raise cause from None
    return checked
