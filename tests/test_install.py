"""`pip install -e .` (PEP 660, no editable_mode=compat) and `pip install .` both make
SAM3's launcher find `configs/lora/*.yaml`, each in a fresh virtual environment.

The venv holds only this package (``--no-deps``); its dependencies come from the running
interpreter's site-packages on PYTHONPATH (not a site dir: its .pth files, including
this checkout's own editable install, are not read). The build uses that setuptools
too (``--no-build-isolation``: no network).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = ("from hydra import compose, initialize_config_module\n"
         "with initialize_config_module('sam3.train', version_base='1.2'):\n"
         "    cfg = compose(config_name='configs/lora/smoke_cpu.yaml')\n"
         "import sam3_lora_plugin, hydra_plugins\n"
         "print('FOUND', cfg.trainer.max_epochs, sam3_lora_plugin.__file__)\n")


def _copy_source(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", "build",
                                    "experiments", "sam3_logs", "runs")
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("editable", [True, False], ids=["pip_install_-e", "pip_install"])
def test_configs_resolve_after_install(tmp_path: Path, editable: bool) -> None:
    src = _copy_source(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    deps = os.pathsep.join(site.getsitepackages())
    env = dict(os.environ, PYTHONPATH=deps, PIP_NO_INDEX="1")
    cmd = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
           "--no-build-isolation"] + (["-e", str(src)] if editable else [str(src)])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([str(py), "-c", PROBE], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert "FOUND 2" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    where = proc.stdout.split()[-1]
    assert where.startswith(str(src if editable else venv)), where
