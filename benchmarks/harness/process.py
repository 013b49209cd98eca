"""Fresh interpreters for a benchmark's parts: one configuration (or one phase) a process,
so that one's peak memory, threads and global state are not another's."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["run_child", "run_script"]

PathLike = Union[str, Path]
#: Characters of a failed child's output kept in the error.
TAIL_CHARS = 6000


def run_script(script: PathLike, argv: Sequence[str], what: str, result_file: PathLike,
               log: Optional[PathLike] = None, cwd: Optional[PathLike] = None) -> dict[str, Any]:
    """Run ``python SCRIPT ARGV`` in a fresh interpreter and return the JSON it left in
    ``result_file``.

    Args:
        script: the Python file to run.
        argv: its arguments.
        what: names the run in the error (e.g. ``"configuration full_ft"``).
        result_file: the JSON file the child writes.
        log: a file for the child's stdout and stderr (kept); None: captured, and only
            its tail shown on failure.
        cwd: the child's working directory (default: this process's).

    Raises:
        RuntimeError: the child exited non-zero or wrote no result; the message holds the
            tail of its output (and the log's path).
    """
    cmd = [sys.executable, str(Path(script).resolve()), *argv]
    if log is None:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=cwd)
        output = proc.stdout
    else:
        with open(log, "w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        output = Path(log).read_text()
    if proc.returncode != 0 or not Path(result_file).exists():
        where = f"; log {log}" if log is not None else ""
        raise RuntimeError(f"{what} failed (exit {proc.returncode}){where}:\n{output[-TAIL_CHARS:]}")
    return json.loads(Path(result_file).read_text())


def run_child(script: PathLike, config: str, argv: Sequence[str], label: str) -> dict[str, Any]:
    """Run ``python SCRIPT --only CONFIG --child-out FILE ARGV`` in a fresh interpreter and
    return the JSON it wrote to FILE (a temporary file).

    Raises:
        RuntimeError: the child failed; the message holds the tail of its output.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        child_argv = ["--only", config, "--child-out", str(result_file), *argv]
        print(f"[{label}] {config}: {Path(script).resolve()} {' '.join(child_argv)}", flush=True)
        return run_script(script, child_argv, f"configuration {config}", result_file)
