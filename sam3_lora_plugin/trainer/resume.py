"""The resume guard: what the Trainer will resume from, decided before it looks.

SAM3's Trainer resumes from ``<save_dir>/checkpoint.pt`` if that file exists and starts
from scratch otherwise; ``checkpoint.resume_from`` is copied there only when it is
missing. A run started from scratch overwrites the directory's ``checkpoint_N.pt`` files
as it saves. ``check_resume_checkpoint`` runs when ``build_lora_sam3`` builds the model
(``checkpoint_dir: ${trainer.checkpoint.save_dir}`` in the configs), after the process
group exists and before the Trainer resumes, and makes sure nothing is lost:

* a complete ``checkpoint.pt.tmp`` (a kill between the Trainer's delete and rename) is
  put back in place;
* ``checkpoint.pt`` missing or unreadable, and ``trainer.checkpoint.resume_from`` not
  set: the newest intact ``checkpoint_N.pt`` is copied to ``checkpoint.pt`` with a
  warning (what a SLURM requeue after a badly timed kill needs: no one is there to pass
  a flag). An unreadable ``checkpoint.pt`` is kept, moved to ``unreadable-<time>/``;
* a directory that holds checkpoints none of which can be read is an error, never a
  silent fresh start: the message gives the two commands that continue, with
  ``++trainer.checkpoint.resume_from=FILE`` or ``++trainer.model.allow_fresh_start=true``
  (which keeps the unreadable files under ``unreadable-<time>/`` and starts over).
  ``allow_fresh_start`` never discards a readable checkpoint, so leaving it set is safe
  on a requeue; to start over from a readable one, use a new
  ``launcher.experiment_log_dir``.

In a multi-process run only rank 0 looks at and changes the directory; the other ranks
wait for its answer (``torch.distributed.broadcast_object_list``), so no rank reads a
file rank 0 is renaming.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import sys
import time
from typing import Optional

import torch.distributed as dist

from sam3_lora_plugin.adapters.outputs import atomic_path
from sam3_lora_plugin.models.base_checkpoint import CheckpointError, read_checkpoint

__all__ = ["check_resume_checkpoint", "get_rerun_command"]

log = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^checkpoint_(\d+)\.pt$")
_CHECKPOINT_FILE = re.compile(r"^checkpoint.*\.pt(\.tmp)?$")
_LAUNCHERS = (os.path.join("sam3", "train", "train.py"), os.path.join("sam3_lora_plugin", "train.py"),
              os.path.join("sam3_lora_plugin", "cli", "train.py"))


def get_rerun_command(override: str) -> str:
    """The command that reruns this launch with ``override`` added.

    Works from both launchers (the stock one takes no overrides, so the command is always
    ``python -m sam3_lora_plugin.train`` with the same flags); outside a launcher, a
    template with ``-c <your config>``.
    """
    argv = list(sys.argv)
    if not argv or not argv[0].endswith(_LAUNCHERS):
        return f"python -m sam3_lora_plugin.train -c <your config> {override}"
    key = override.split("=", 1)[0].lstrip("+")
    kept = [a for a in argv[1:] if a.split("=", 1)[0].lstrip("+~") != key]
    return shlex.join(["python", "-m", "sam3_lora_plugin.train", *kept, override])


def _readable(path: str) -> Optional[str]:
    """None if ``path`` loads, else the reason."""
    try:
        read_checkpoint(path)
    except CheckpointError as e:
        return str(e)
    return None


def _newest_intact(checkpoint_dir: str) -> Optional[str]:
    numbered = sorted(((int(m.group(1)), n) for n in os.listdir(checkpoint_dir)
                       if (m := _NUMBERED.match(n))), reverse=True)
    for _, name in numbered:
        path = os.path.join(checkpoint_dir, name)
        if _readable(path) is None:
            return path
        log.warning("%s is unreadable too; looking at older checkpoints.", path)
    return None


def _move_aside(checkpoint_dir: str, names: list[str]) -> str:
    dest = os.path.join(checkpoint_dir, time.strftime("unreadable-%Y%m%d-%H%M%S"))
    os.makedirs(dest, exist_ok=True)
    for name in names:
        os.replace(os.path.join(checkpoint_dir, name), os.path.join(dest, name))
    return dest


def _decide(checkpoint_dir: str, resume_from: Optional[str], allow_fresh_start: bool) -> Optional[str]:
    """Rank 0's part of ``check_resume_checkpoint`` (it alone changes the directory)."""
    path = os.path.join(checkpoint_dir, "checkpoint.pt")
    tmp = path + ".tmp"
    if not os.path.isdir(checkpoint_dir):
        if resume_from is not None and (why := _readable(resume_from)):
            raise CheckpointError(f"Cannot start from trainer.checkpoint.resume_from: {why}")
        return None
    if not os.path.exists(path) and os.path.exists(tmp):
        if _readable(tmp) is None:
            os.replace(tmp, path)
            log.warning("Recovered %s from the complete %s left by a run killed while "
                        "saving.", path, tmp)
        else:
            log.warning("Ignoring the incomplete %s (interrupted while saving).", tmp)
    problem = _readable(path) if os.path.exists(path) else None
    if os.path.exists(path) and problem is None:
        if resume_from is not None:
            log.warning("Resuming from %s; trainer.checkpoint.resume_from=%s is used only when "
                        "the directory has no checkpoint.pt.", path, resume_from)
        return path
    if resume_from is not None:
        if why := _readable(resume_from):
            raise CheckpointError(f"Cannot start from trainer.checkpoint.resume_from: {why}")
        if problem:
            log.warning("%s is unreadable; kept in %s. Starting from resume_from=%s.", path,
                        _move_aside(checkpoint_dir, ["checkpoint.pt"]), resume_from)
        return None
    newest = _newest_intact(checkpoint_dir)
    if newest is not None:
        if problem:
            log.warning("%s is unreadable (%s); kept in %s.", path, problem,
                        _move_aside(checkpoint_dir, ["checkpoint.pt"]))
        with atomic_path(path) as part:
            shutil.copyfile(newest, part)
        log.warning("No readable checkpoint.pt in %s: resuming from the newest intact epoch "
                    "checkpoint, %s (the epochs after it are trained again).", checkpoint_dir,
                    newest)
        return path
    stale = sorted(n for n in os.listdir(checkpoint_dir)
                   if _CHECKPOINT_FILE.match(n) and not n.endswith(".tmp"))
    if not stale:
        return None
    if allow_fresh_start:
        log.warning("No checkpoint in %s can be read; starting from scratch as "
                    "allow_fresh_start asks. The unreadable files are kept in %s.",
                    checkpoint_dir, _move_aside(checkpoint_dir, stale))
        return None
    raise CheckpointError(
        f"Cannot resume: {path!r} is "
        + ("truncated or corrupt" if problem else "missing")
        + f", no other checkpoint in {checkpoint_dir!r} can be read ({', '.join(stale)}), "
        "and this run would start from "
        "scratch over them; nothing was changed. Resume from another file with `"
        + get_rerun_command("++trainer.checkpoint.resume_from=FILE") + "`, or start over "
        "here (the unreadable files are kept in unreadable-<time>/) with `"
        + get_rerun_command("++trainer.model.allow_fresh_start=true") + "`.")


def check_resume_checkpoint(checkpoint_dir: str, *, resume_from: Optional[str] = None,
                            allow_fresh_start: bool = False) -> Optional[str]:
    """Make sure the Trainer resumes from an intact checkpoint, or may start afresh.

    See the module docstring for the rules. Call before the Trainer resumes
    (``build_lora_sam3(checkpoint_dir=...)`` does). In a multi-process run, rank 0
    decides and the other ranks receive its answer.

    Args:
        checkpoint_dir: The Trainer's ``checkpoint.save_dir``.
        resume_from: The Trainer's ``checkpoint.resume_from`` (checked readable; the
            Trainer copies it in when ``checkpoint.pt`` is absent).
        allow_fresh_start: Start from scratch when the directory holds checkpoints but
            none can be read (they are moved to ``unreadable-<time>/``).

    Returns:
        The ``checkpoint.pt`` the Trainer will resume from, or None (a fresh start, or
        ``resume_from`` is copied in by the Trainer).

    Raises:
        CheckpointError: an unreadable ``resume_from``, or checkpoints that cannot be
            read and no permission to start over; the message gives the commands.
    """
    multi = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not multi:
        return _decide(checkpoint_dir, resume_from, allow_fresh_start)
    answer: list = [None]
    failure: Optional[BaseException] = None
    if dist.get_rank() == 0:
        try:
            answer = [("ok", _decide(checkpoint_dir, resume_from, allow_fresh_start))]
        except Exception as e:  # every rank must hear of it, or the others wait forever
            answer, failure = [("error", str(e))], e
    dist.broadcast_object_list(answer, src=0)
    if failure is not None:
        raise failure
    kind, value = answer[0]
    if kind == "error":
        raise CheckpointError(value)
    return value
