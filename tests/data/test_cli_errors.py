"""Every error the data CLIs print names the problem and the fix, exits non-zero, shows
no traceback, and any command it quotes runs as printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sam3_lora_plugin.data.check.report import DEFECTS

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _quoted_commands(text: str) -> list[str]:
    return re.findall(r"`(python -m [^`]+)`", text)


def _assert_commands_run(text: str, cwd: Path) -> None:
    for command in _quoted_commands(text):
        proc = _run(shlex.split(command)[1:], cwd)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (command, proc.stderr[-2000:])


@pytest.mark.parametrize("argv, expected", [
    (["-m", "sam3_lora_plugin.data.check", "{tmp}/nope"], "does not exist. Fix: pass a COCO JSON file"),
    (["-m", "sam3_lora_plugin.data.check", "{tmp}", "--image-dir", "{tmp}/nope"], "is not a folder. Fix:"),
    (["-m", "sam3_lora_plugin.data.convert", "yolo", "{tmp}/nope", "{tmp}/out"], "is not a folder; pass the YOLO"),
    (["-m", "sam3_lora_plugin.data.convert", "yolo", "{tmp}", "{tmp}/out", "--names", "{tmp}/nope.yaml"],
     "not found; pass --names with an existing data.yaml"),
    (["-m", "sam3_lora_plugin.data.convert", "masks", "{tmp}", "{tmp}/out"],
     "needs images/ and masks/ folders; the layout is in `python -m sam3_lora_plugin.data.convert masks --help`"),
    (["-m", "sam3_lora_plugin.data.convert", "masks", "{tmp}", "{tmp}/out", "--id-map", "a=b"],
     "pass a JSON file holding"),
    (["-m", "sam3_lora_plugin.data.convert", "labelme", "{tmp}", "{tmp}/out"],
     "no images found in the source; the layouts each format reads are in"),
    (["-m", "sam3_lora_plugin.data.synthetic", "--out", "{tmp}/syn", "--image-size", "8"],
     "pass --num-train/--num-valid/--num-test >= 0 and --image-size >= 32"),
])
def test_cli_error_names_the_fix(tmp_path: Path, argv: list[str], expected: str) -> None:
    proc = _run([a.format(tmp=tmp_path) for a in argv], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert expected in out, out[-3000:]
    _assert_commands_run(out, tmp_path)


def test_every_defect_fix_is_runnable_as_printed(tmp_path: Path) -> None:
    """Commands quoted in the checker's fixes run as printed (e.g. the convert --help)."""
    fixes = "\n".join(fix for _, _, fix in DEFECTS.values())
    assert _quoted_commands(fixes), "expected at least one quoted command among the fixes"
    _assert_commands_run(fixes, tmp_path)
