"""End to end (issue 14): planted secrets never reach the console or a file, with the
stock launcher and with ours; a run over unreadable checkpoints stops, and the command it
prints runs as printed, keeping the old files."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sam3_lora_plugin.testing import assert_unchanged, snapshot_files

pytestmark = pytest.mark.slow
CONFIG = "configs/lora/smoke_cpu.yaml"
REPO = Path(__file__).resolve().parents[1]
SECRETS = {"HF_TOKEN": "hf_PLANTEDtoken0123456789", "AWS_SECRET_ACCESS_KEY": "PLANTEDaws/secret+key",
           "WANDB_API_KEY": "PLANTEDwandb0123456789"}


def _run(argv, cwd, env):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _leaks(root, output):
    hits = [f"console: {k}" for k, v in SECRETS.items() if v in output]
    for path in Path(root).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {k}" for k, v in SECRETS.items() if v.encode() in data]
    return hits


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return dict(os.environ, SAM3_LORA_CACHE=str(cache), PYTHONPATH=str(REPO), **SECRETS)


def test_secrets_stay_out_of_every_output_and_the_advice_runs_as_printed(env, tmp_path):
    rc, out = _run([sys.executable, "-m", "sam3.train.train", "-c", CONFIG], tmp_path, env)
    assert rc == 0, out[-3000:]
    assert "HF_TOKEN=<redacted>" in out  # the Trainer did log the environment
    assert _leaks(tmp_path, out) == []

    # every checkpoint unreadable: the rerun must stop, change nothing, and say what to run
    ckpts = tmp_path / "runs" / "smoke" / "checkpoints"  # launcher.experiment_log_dir: runs/${paths.run_name}
    assert list(ckpts.glob("checkpoint*.pt")), f"no checkpoint in {ckpts}"
    for path in ckpts.glob("checkpoint*.pt"):
        path.write_bytes(path.read_bytes()[:1000])
    before = snapshot_files(ckpts)
    rc, out = _run([sys.executable, "-m", "sam3.train.train", "-c", CONFIG], tmp_path, env)
    assert rc != 0 and "Cannot resume" in out
    assert_unchanged(before, snapshot_files(ckpts))
    command = re.search(r"`(python -m sam3_lora_plugin\.train [^`]*allow_fresh_start=true)`", out)
    assert command, out[-3000:]
    argv = shlex.split(command.group(1))
    assert argv[:1] == ["python"]
    rc, out = _run([sys.executable, *argv[1:]], tmp_path, env)  # exactly as printed
    assert rc == 0, out[-3000:]
    assert "starting from scratch as allow_fresh_start asks" in out
    kept = sorted(p.name for p in ckpts.glob("unreadable-*/*"))
    assert kept == sorted(k.split("/")[-1] for k in before if k.endswith(".pt"))
    assert _leaks(tmp_path, out) == []  # our launcher, and its exported adapter, too
