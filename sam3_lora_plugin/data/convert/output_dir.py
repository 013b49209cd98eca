"""Where the converters write: a new or empty OUT, or one they wrote themselves.

The rule is the project's rule for outputs (``sam3_lora_plugin.models.output_files``):

* OUT may be new or empty;
* OUT may be an earlier output of a converter: every entry of OUT is a split folder
  holding our ``_annotations.coco.json`` (its ``info.description`` is ``CONVERTER_MARK``)
  and only the images that JSON lists, or an empty folder. It is replaced as a whole
  (every split of it), and only with ``overwrite`` (``--overwrite``);
* anything else (a source dataset, another tool's output, a file of the user's) is
  refused with one line, before anything is written or removed.

The new splits are written into temporary folders inside OUT and moved into place only
when all are complete (``SplitStaging``), so an interrupted conversion leaves an earlier
output as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ...models.output_files import OutputPathError, check_output_dir
from ..synthetic import ANN_FILE

__all__ = ["CONVERTER_MARK", "SplitStaging", "check_convert_output", "get_own_split_files"]

#: ``info.description`` of every ``_annotations.coco.json`` a converter writes.
CONVERTER_MARK = "converted by sam3_lora_plugin.data.convert"
_WHAT = "converted dataset: pass another OUT, or remove what is there yourself"


def get_own_split_files(folder: Path) -> list[str] | None:
    """The names a converter wrote in the split folder ``folder``: its JSON and the images
    that JSON lists; None when ``folder`` is not a converter's split (no JSON of ours)."""
    if folder.is_symlink() or not folder.is_dir():
        return None
    try:
        coco = json.loads((folder / ANN_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    info = coco.get("info") if isinstance(coco, dict) else None
    if not isinstance(info, dict) or info.get("description") != CONVERTER_MARK:
        return None
    images = coco.get("images") if isinstance(coco.get("images"), list) else []
    return [ANN_FILE, *(str(im["file_name"]) for im in images if isinstance(im, dict) and "file_name" in im)]


def check_convert_output(out: Path, *, overwrite: bool) -> dict[str, list[str]]:
    """Refuse ``out`` unless it is new, empty, or a converter's earlier output (replaced
    only with ``overwrite``). Empty sub-folders are allowed and left alone.

    Args:
        out: The output dataset root.
        overwrite: Replace an earlier output of a converter.

    Returns:
        Split folder name -> the files of the earlier output in it (to remove when the new
        splits are in place); empty when there is no earlier output.

    Raises:
        ValueError: ``out`` is a file, holds anything a converter did not write (the
            message names it), or holds an earlier output and ``overwrite`` is False.
    """
    if not os.path.lexists(out) or (out.is_dir() and not any(out.iterdir())):
        return {}
    own: dict[str, list[str]] = {}
    empty: list[str] = []
    try:
        if out.is_dir():
            for child in sorted(out.iterdir()):
                if child.is_dir() and not child.is_symlink() and not any(child.iterdir()):
                    empty.append(child.name)
                elif (files := get_own_split_files(child)) is not None:
                    check_output_dir(str(child), owned=files, what=_WHAT)  # names a stranger inside
                    own[child.name] = files
        check_output_dir(str(out), owned=[*own, *empty], what=_WHAT)
    except OutputPathError as exc:
        raise ValueError(str(exc)) from None
    if own and not overwrite:
        raise ValueError(f"{out} is not empty: it holds an earlier conversion ({', '.join(own)}); pass --overwrite "
                         "(overwrite=True) to replace it, or choose another OUT")
    return own


class SplitStaging:
    """Temporary split folders inside OUT, moved into place by ``commit``.

    Use as a context manager: on leaving, whatever was not committed is removed (the
    temporary folders only, which this class created, and OUT if it created OUT and it
    is still empty).
    """

    def __init__(self, out: Path, replaced: dict[str, list[str]]) -> None:
        self.out, self.replaced = out, replaced
        self.staged: dict[str, Path] = {}
        self._created_out = not os.path.lexists(out)

    def folder(self, split: str) -> Path:
        """A new, empty temporary folder for ``split`` inside OUT (with the usual mode,
        not ``mkdtemp``'s 0700)."""
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=self.out))
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)
        self.staged[split] = tmp
        return tmp

    def commit(self) -> None:
        """Remove the earlier output's files (only those: ``rmdir`` then fails on a folder
        that holds anything else) and move the new splits into place."""
        for split, files in self.replaced.items():
            folder, owned = self.out / split, set(files)
            for name in os.listdir(folder):
                if name in owned:
                    os.unlink(folder / name)
            folder.rmdir()
        for split, tmp in list(self.staged.items()):
            os.replace(tmp, self.out / split)  # onto nothing, or onto an empty folder
            del self.staged[split]

    def __enter__(self) -> "SplitStaging":
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp in self.staged.values():
            shutil.rmtree(tmp, ignore_errors=True)
        if self._created_out and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()
