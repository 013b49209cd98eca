"""Running the bad-input cases: file hashing (``snapshot_files``), one command with its
time and changed files (``run_case``), all of them a few at a time (``run_all``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[2]
#: Log lines that mean a model is being built (SAM3's Trainer, our builders).
BUILD_LINE = ("Setting up components: Model", "Building SAM3", "Building the SAM3")


def snapshot_files(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (path -> digest)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Result:
    """What one case's command did."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    changed: list[str] = field(default_factory=list)


def run_case(argv: list[str], cwd: Path, env: dict[str, str], protected: list[Path],
             timeout: Optional[float] = None) -> Result:
    """Run ``argv`` in ``cwd``; time it; report protected files that changed or vanished."""
    timeout = timeout or float(os.environ.get("BAD_INPUTS_TIMEOUT", "600"))
    before = snapshot_files(*protected)
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:  # still running: it did not stop early
        rc, out, err = -9, _text(e.stdout), _text(e.stderr) + f"\nTIMEOUT after {timeout} s"
    seconds = time.monotonic() - start
    after = snapshot_files(*protected)
    changed = sorted(p for p, h in before.items() if after.get(p) != h)
    return Result(argv, rc, out, err, seconds, changed)


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def run_all(cases: list[Any], prepare: Callable[[Any], tuple[list[str], Path, dict, list[Path]]],
            workers: Optional[int] = None) -> dict[str, Result]:
    """Run every case's command, ``workers`` at a time (each is its own process, in its
    own directory, so they do not interact)."""
    workers = workers or int(os.environ.get("BAD_INPUTS_WORKERS", "3"))

    def one(case):
        argv, cwd, env, protected = prepare(case)
        return case.id, run_case(argv, cwd, env, protected)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, cases))


def base_env(cache: Path) -> dict[str, str]:
    """The environment of every command: this checkout first, the fixture's dataset cache."""
    env = dict(os.environ, SAM3_LORA_CACHE=str(cache), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.environ.get("BAD_INPUTS_REPO", str(REPO))]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


PYTHON = sys.executable
