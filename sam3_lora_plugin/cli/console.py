"""The compact console of ``python -m sam3_lora_plugin.train``.

SAM3's launcher prints the whole config (~800 lines for a LoRA config) and its Trainer logs
every environment variable and a line per logged step. With our launcher the console shows
instead:

* a header (``format_header``): config, model and base weights, dataset with image and
  category counts, LoRA preset/rank, where checkpoints, logs and the adapter go; then the
  trainable/total parameter count once the model is built;
* one line per logged training step with the epoch's ETA and the run's, and one line per
  validation with the COCO bbox/segm AP;
* warnings and errors.

Everything else the launcher and the Trainer print goes to ``<log_dir>/console.log``
(the full config included), except the environment-variable dump: it is never written
here. SAM3's own ``<log_dir>/log.txt`` is unchanged. Only a single-process local run is
filtered; DDP workers and cluster jobs print as SAM3 does.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional, TextIO

__all__ = ["SAM3_IMPORT_NOISE", "CompactConsole", "compact_console", "format_header",
           "get_dataset_summary", "get_run_paths", "ignore_sam3_import_noise"]

_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d ")
_TRAIN = re.compile(r"Train Epoch: \[(\d+)\]\[\s*(\d+)/(\d+)\].*?Losses/train_all_loss: "
                    r"([-\d.e+naif]+) \(([-\d.e+naif]+)\)")
_AP = re.compile(r"coco_eval_(bbox|segm)_AP': (?:np\.float64\()?([-\d.e]+)")
_SOURCE = re.compile(r"^\S+?:\s*\d+: ")  # SAM3's "trainer.py: 754: "
_PARAMS = re.compile(r"trainable ([\d,]+) / total ([\d,]+) parameters \(([\d.]+)%\)")


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class CompactConsole(io.TextIOBase):
    """A text stream that keeps the console short and logs the rest (see the module doc).

    Args:
        console: where the compact lines go (the real ``sys.stdout``).
        log: the file that receives every other line (the env-variable dump excepted).
        max_epochs: the run's ``trainer.max_epochs``, for the run's ETA.
    """

    def __init__(self, console: TextIO, log: TextIO, max_epochs: int):
        super().__init__()
        self.console, self.log, self.max_epochs = console, log, max(int(max_epochs), 1)
        self._buf = ""
        self._env = 0  # 1: the next record is the env dump; 2: inside it
        self._epoch_start: dict[int, float] = {}
        self._epoch_seconds: list[float] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def _show(self, text: str) -> None:
        self.console.write(text + "\n")
        self.console.flush()

    def _line(self, line: str) -> None:
        record = _RECORD.match(line)
        if self._env == 2 and not record:
            return
        if record and self._env == 1:
            self._env = 2
            return
        if record:
            self._env = 0
        if "Logging ENV_VARIABLES" in line:
            self._env = 1
        self.log.write(line + "\n")
        m = _TRAIN.search(line)
        if m:
            self._show(self._progress(int(m[1]), int(m[2]), int(m[3]), m[5]))
            return
        m = _PARAMS.search(line)
        if m:
            self._show(f"  params     {m[1]} trainable of {m[2]} ({m[3]}%)")
            return
        if "Meters: {" in line:
            ap = dict(_AP.findall(line))
            if ap:
                self._show("  held-out   " + "  ".join(
                    f"{k} AP {float(v):.3f}" for k, v in sorted(ap.items())))
            return
        if "Resuming training from epoch" in line or (record and record[1] in (
                "WARNING", "ERROR", "CRITICAL")) or line.lstrip().startswith("warning:"):
            rest = line[record.end():] if record else line.strip()
            self._show("  " + _SOURCE.sub("", rest.split(" ", 1)[-1] if record else rest))

    def _progress(self, epoch: int, step: int, steps: int, loss: str) -> str:
        now = time.monotonic()
        start = self._epoch_start.setdefault(epoch, now)
        if epoch - 1 in self._epoch_start and len(self._epoch_seconds) < epoch:
            self._epoch_seconds.append(start - self._epoch_start[epoch - 1])
        done = step + 1
        per_step = (now - start) / step if step > 0 else None
        eta = f"ETA epoch {_clock(per_step * (steps - done))}" if per_step else "ETA epoch -"
        epoch_time = (self._epoch_seconds[-1] if self._epoch_seconds
                      else per_step * steps if per_step else None)
        if epoch_time is not None:
            left = epoch_time * (self.max_epochs - epoch - 1) + (
                per_step * (steps - done) if per_step else epoch_time)
            eta += f", run {_clock(left)}"
        return (f"  epoch {epoch + 1}/{self.max_epochs}  step {done:>{len(str(steps))}}/{steps}"
                f"  loss {float(loss):.3g}  {eta}")


@contextmanager
def compact_console(log_path: str, max_epochs: int) -> Iterator[CompactConsole]:
    """Route ``sys.stdout`` and Python warnings through a ``CompactConsole`` logging to
    ``log_path`` (appended), for the duration of the block."""
    import logging
    import sys

    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    old_out, old_show = sys.stdout, warnings.showwarning
    with open(log_path, "a") as log:
        stream = CompactConsole(old_out, log, max_epochs)

        def to_log(message, category, filename, lineno, file=None, line=None):
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

        # SAM3's setup_logging swaps logging.root, so the package's loggers (the LoRA
        # summary with the exact parameter counts) reach no handler: give them this one.
        ours = logging.getLogger("sam3_lora_plugin")
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s"))
        old_level = ours.level
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        sys.stdout, warnings.showwarning = stream, to_log
        try:
            yield stream
        finally:
            stream.write("\n") if stream._buf else None
            sys.stdout, warnings.showwarning = old_out, old_show
            ours.removeHandler(handler)
            ours.setLevel(old_level)


def _instantiated(node: Any) -> Any:
    """A config value, calling a nested ``_target_`` (as the Trainer's instantiate would)."""
    if hasattr(node, "get") and node.get("_target_"):
        from hydra.utils import instantiate

        return instantiate(node)
    return node


def get_dataset_summary(ann_file: Any) -> str:
    """``N images, K categories (a, b, c)`` of a COCO file (a path or a ``_target_`` node)."""
    try:
        path = str(_instantiated(ann_file))
        with open(path) as f:
            coco = json.load(f)
    except (OSError, ValueError, TypeError) as e:
        return f"(not readable: {e})"
    names = [c.get("name", "?") for c in coco.get("categories", [])]
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"{len(coco.get('images', []))} images, {len(names)} categories ({shown})"


def get_run_paths(cfg: Any) -> dict[str, str]:
    """Where the run writes: run dir, checkpoints, logs, adapter."""
    from omegaconf import OmegaConf

    run = str(cfg.launcher.experiment_log_dir)
    return {"run": run,
            "checkpoints": str(OmegaConf.select(cfg, "trainer.checkpoint.save_dir")),
            "logs": str(OmegaConf.select(cfg, "trainer.logging.log_dir")),
            "adapter": os.path.join(run, "adapter")}


def _component_ranks(lora: Any) -> str:
    """``"; rank 4: text_encoder; rank 16: decoder, ..."`` for the components whose rank is
    not the config's, resolved as ``LoraConfig`` resolves them
    (:func:`~sam3_lora_plugin.lora.config.resolve_component_overrides`); ``""`` when every
    component has the config's rank or the values are not plain numbers yet."""
    from ..lora.config import PRESETS, resolve_component_overrides

    rank, alpha = lora.get("rank"), lora.get("alpha")
    if not isinstance(rank, int) or not isinstance(alpha, (int, float)):
        return ""
    overrides = resolve_component_overrides(lora.get("component_overrides"),
                                            PRESETS.get(str(lora.get("preset", "default")), {}),
                                            rank, alpha)
    by_rank: dict[int, list[str]] = {}
    for component, ov in overrides.items():
        r = ov.get("rank", rank)
        if isinstance(r, int) and r != rank:
            by_rank.setdefault(r, []).append(str(component))
    return "".join(f"; rank {r}: {', '.join(names)}" for r, names in sorted(by_rank.items()))


def format_header(cfg: Any, config: str, overrides: Optional[list[str]] = None) -> str:
    """The header printed before the model is built (see the module doc)."""
    from omegaconf import OmegaConf

    sel = lambda key: OmegaConf.select(cfg, key, default=None)  # noqa: E731
    model = sel("trainer.model.model") or sel("trainer.model")
    builder = str(model.get("_target_", "?")).rsplit(".", 1)[-1] if model is not None else "?"
    size = f"(size={model.get('size')})" if model is not None and model.get("size") else ""
    ckpt = _instantiated(model.get("checkpoint_path")) if model is not None else None
    base = f", base weights {ckpt}" if ckpt else (
        ", weights from the Hugging Face hub" if model is not None and model.get("load_from_HF")
        else ", random init")
    lora = sel("trainer.model.lora") or {}
    paths = get_run_paths(cfg)
    lines = [f"sam3_lora_plugin.train  {config}" + (f"  {' '.join(overrides)}" if overrides else ""),
             f"  model      {builder}{size}{base}",
             f"  train      {get_dataset_summary(sel('scratch.train_ann_file'))}"
             if sel("trainer.mode") != "val" else None,
             f"  held-out   {get_dataset_summary(sel('scratch.val_ann_file'))}",
             f"  LoRA       preset {lora.get('preset', '?')}, rank {lora.get('rank', '?')}, "
             f"alpha {lora.get('alpha', '?')}" + (", DoRA" if lora.get("use_dora") else "")
             + _component_ranks(lora) if lora else None,
             f"  epochs     {sel('trainer.max_epochs')}, batch {sel('scratch.train_batch_size')}"
             if sel("trainer.mode") != "val" else None,
             f"  run        {paths['run']}",
             f"  checkpoint {paths['checkpoints']}/checkpoint.pt",
             f"  logs       {paths['logs']} (log.txt; console.log: the full config and output)",
             f"  adapter    {paths['adapter']} (exported when training ends)"]
    return "\n".join(line for line in lines if line)


#: Import-time warnings of sam3 and torch on a machine without CUDA: they say nothing about
#: the user's run (sam3 decorates functions with CUDA autocast; torch deprecates jit.script).
SAM3_IMPORT_NOISE = (".*torch.jit.script.*is deprecated", "CUDA is not available or torch_xla")


def ignore_sam3_import_noise() -> None:
    """Hide :data:`SAM3_IMPORT_NOISE` for the rest of this process (a command-line tool's)."""
    for pattern in SAM3_IMPORT_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
