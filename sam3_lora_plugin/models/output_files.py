"""Where the tools write: refuse to replace what they did not write, and write atomically.

Every command that writes a directory or a file (``adapters export`` and ``merge``, the
launcher's final adapter export, ``predict``, ``evaluate``, ``data.convert`` and the
stock-checkpoint writers of ``base_checkpoint``) follows one rule:

* a directory output may be new, empty, or one this tool wrote before: every entry in
  it is a name the command itself writes (and an extra test, ``is_own``, may look
  inside, e.g. an adapter's ``adapter_config.json`` carries our ``sam3_lora`` block).
  Anything else (a run directory, a dataset, a file) is refused with one line, before
  anything is written;
* a file output may be new; an existing file is replaced only with ``overwrite=True``
  (``--overwrite``), never when it is one of the command's inputs, and never when it is
  a directory;
* files are written to a temporary name in the same directory and renamed into place,
  so an interrupted write never leaves a partial file over a good one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable, Iterable, Iterator, Optional, Sequence

from sam3_lora_plugin.models.errors import CheckpointError

__all__ = ["OutputPathError", "atomic_path", "check_output_dir", "check_output_file",
           "write_text_atomic"]


class OutputPathError(CheckpointError):
    """An output path holds something the command did not write; nothing was written."""


def check_output_dir(path: str, *, owned: Iterable[str], what: str,
                     is_own: Optional[Callable[[str], bool]] = None) -> None:
    """Refuse ``path`` as an output directory unless it is new, empty or our own.

    Args:
        path: The directory the command will write.
        owned: The entry names the command writes into it.
        what: What the command writes, for the message (e.g. ``"adapter directory"``).
        is_own: An extra test a non-empty directory must pass (e.g.
            ``adapters.outputs.is_adapter_dir``).

    Raises:
        OutputPathError: ``path`` is a file, or a non-empty directory holding anything
            else; the message names what is there and the fix.
    """
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise OutputPathError(
            f"{path!r} exists and is not a directory; nothing was written. Choose a new or "
            f"empty directory for the {what}.")
    names = sorted(os.listdir(path))
    if not names:
        return
    foreign = [n for n in names if n not in set(owned)]
    if not foreign and (is_own is None or is_own(path)):
        return
    shown = ", ".join(foreign[:4] or names[:4]) + (", ..." if len(foreign or names) > 4 else "")
    raise OutputPathError(
        f"{path!r} holds files this tool did not write ({shown}); nothing was written or "
        f"removed. Choose a new or empty directory for the {what}.")


def check_output_file(path: str, *, inputs: Sequence[str] = (), overwrite: bool = False,
                      what: str = "output file") -> None:
    """Refuse ``path`` as an output file if it is a directory, an input, or exists.

    Args:
        path: The file the command will write.
        inputs: The command's input paths; the output may never be one of them.
        overwrite: Allow replacing an existing file that is not an input.
        what: What the command writes, for the message.

    Raises:
        OutputPathError: naming the problem and the fix.
    """
    if not os.path.lexists(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise OutputPathError(f"Cannot write {path!r}: {parent!r} is a file, not a "
                                  "directory. Choose another output path.")
        return
    if os.path.isdir(path):
        raise OutputPathError(f"{path!r} is a directory; nothing was written. Give the "
                              f"{what} a file name, e.g. {os.path.join(path, 'merged.pt')!r}.")
    for src in inputs:
        if os.path.exists(src) and os.path.samefile(src, path):
            raise OutputPathError(f"Refusing to overwrite the input {src!r} with the {what}; "
                                  "choose another output path.")
    if not overwrite:
        raise OutputPathError(f"{path!r} already exists; nothing was written. Choose another "
                              "output path, or pass --overwrite to replace it.")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    try:
        yield tmp
        # mkstemp creates 0600, and so does safetensors' save_file whatever was there:
        # give the finished file the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through ``atomic_path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
