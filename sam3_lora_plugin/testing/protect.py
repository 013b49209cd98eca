"""The protected-files check of the bad-input tests: hash every file under a root before
and after a command, and say exactly what changed.

    before = snapshot_files(tmp_path)
    run_bad_command(...)
    assert_unchanged(before, snapshot_files(tmp_path))

A command that succeeded and was meant to write passes the paths it may create or change
as ``allowed``; everything else (checkpoints, adapters, logs, datasets) must be
byte-identical, present and not added to.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from typing import Iterable, Mapping

__all__ = ["assert_unchanged", "diff_snapshots", "snapshot_files"]


def snapshot_files(root: str | os.PathLike) -> dict[str, str]:
    """``{path relative to root: sha256}`` of every regular file under ``root``.

    Directories appear as ``<dir>/`` with the hash ``"dir"``, so an emptied directory or
    a file turned into a directory (and back) counts as a change. Symlinks are not
    followed; they are recorded by their target.
    """
    root = os.fspath(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != ".":
            out[rel_dir.replace(os.sep, "/") + "/"] = "dir"
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path)
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[rel] = h.hexdigest()
    return out


def diff_snapshots(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, list[str]]:
    """``{"added": [...], "removed": [...], "changed": [...]}`` between two snapshots."""
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


def assert_unchanged(before: Mapping[str, str], after: Mapping[str, str],
                     allowed: Iterable[str] = ()) -> None:
    """Fail, naming the paths, if anything outside ``allowed`` was added, removed or changed.

    Args:
        before, after: ``snapshot_files`` results.
        allowed: fnmatch patterns of relative paths the command may create or change
            (e.g. ``["out/*", "out/"]`` for a successful export into ``out``).
    """
    allowed = list(allowed)
    diff = diff_snapshots(before, after)
    bad = {kind: [p for p in paths if not any(fnmatch.fnmatch(p, a) for a in allowed)]
           for kind, paths in diff.items()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise AssertionError(f"protected files changed: {bad}")
