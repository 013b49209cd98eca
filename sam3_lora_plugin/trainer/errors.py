"""Our errors, raised inside SAM3's Trainer, shown as one line.

An error the plugin raises while the Trainer builds ``trainer.model`` (an adapter that
does not fit, a LoRA selection that matches nothing, an unreadable ``checkpoint.pt``)
reaches the user wrapped in Hydra's ``InstantiationException``, nested once per config
level, under ~100 lines of traceback. Two ways out:

* ``python -m sam3_lora_plugin.train`` catches the exception, finds our error in its
  chain (``get_plugin_error_message``), appends the full traceback to the run's log file
  (``append_traceback``) and prints one ``error:`` line;
* under stock ``python -m sam3.train.train``, which we do not wrap, the model wrapper
  calls ``install_excepthook`` before re-raising, so Python prints the traceback as
  usual and then our message as the last line.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Optional

from sam3_lora_plugin.adapters.metadata import AdapterMismatchError
from sam3_lora_plugin.data.check import DatasetError
from sam3_lora_plugin.lora.selection import LoraSelectionError
from sam3_lora_plugin.models.base_checkpoint import CheckpointError

__all__ = ["PLUGIN_ERRORS", "append_traceback", "get_plugin_error_message",
           "install_excepthook", "mark_plugin_error"]

#: Error types whose message is written for the user (names the problem and the fix).
PLUGIN_ERRORS = (CheckpointError, AdapterMismatchError, LoraSelectionError, DatasetError)
_MARK = "_sam3_lora_plugin_error"
# A child process's error as torch.multiprocessing relays it (the traceback as text).
_CHILD_ERROR = re.compile(r"^(?:sam3_lora_plugin\.[\w.]+\.)?(\w*Error): (.+)$", re.M)
_OUR_NAMES = {"CheckpointError", "AdapterFileError", "AdapterMismatchError",
              "LoraSelectionError", "DatasetError", "ConfigError"}


def mark_plugin_error(exc: BaseException) -> BaseException:
    """Mark ``exc`` (e.g. a ``ValueError`` of ours) as one whose message is for the user."""
    try:
        setattr(exc, _MARK, True)
    except AttributeError:
        pass
    return exc


def _chain(exc: Optional[BaseException]):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def get_plugin_error_message(exc: BaseException) -> Optional[str]:
    """The message of the outermost plugin error in ``exc``'s chain (it carries the most
    context, e.g. "Cannot resume: <why the file is unreadable>; <what to do>"), or None.

    Also finds it in the text of a child process's traceback (``--num-gpus N``).
    """
    found = [e for e in _chain(exc) if isinstance(e, PLUGIN_ERRORS) or getattr(e, _MARK, False)]
    if found:
        return " ".join(str(found[0]).split())
    for e in _chain(exc):
        hits = [m for m in _CHILD_ERROR.finditer(str(e)) if m.group(1) in _OUR_NAMES]
        if hits:
            return " ".join(hits[-1].group(2).split())
    return None


def append_traceback(exc: BaseException, log_file: str) -> Optional[str]:
    """Append ``exc``'s full traceback to ``log_file`` (created with its directory if
    needed); returns the path, or None if it cannot be written."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        with open(log_file, "a") as f:
            f.write("".join(traceback.format_exception(exc)))
        return log_file
    except OSError:
        return None


def _hook(exc_type, exc, tb) -> None:
    sys.__excepthook__(exc_type, exc, tb)
    message = get_plugin_error_message(exc) if exc is not None else None
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """After the usual traceback of an uncaught exception, print our message (if the
    exception carries one) as the last line. Idempotent."""
    if sys.excepthook is not _hook:
        sys.excepthook = _hook
