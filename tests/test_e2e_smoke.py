"""End to end: configs/lora/smoke_cpu.yaml through SAM3's own launcher, in subprocesses,
from the installed package, outside the repository."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
CONFIG = "configs/lora/smoke_cpu.yaml"


def _run(args, cwd, env):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    env = dict(os.environ, SAM3_LORA_CACHE=str(work / "cache"), PYTHONPATH="")
    first = _run(["sam3.train.train", "-c", CONFIG], work, env)
    exp = work / "sam3_logs" / CONFIG
    return work, env, exp, first


def test_stock_launcher_trains_evaluates_and_saves_lora_only(smoke_run):
    """Stock python -m sam3.train.train runs train + COCO bbox/segm eval and leaves a
    checkpoint.pt holding only LoRA factors and their optimizer state."""
    work, _, exp, out = smoke_run
    repo = Path(__file__).resolve().parents[1]
    assert repo not in work.parents  # runs from the installed package, not the checkout
    assert "Train Epoch: [1][7/8]" in out
    assert "coco_eval_bbox_AP" in out and "coco_eval_segm_AP" in out
    ckpt = torch.load(exp / "checkpoints" / "checkpoint.pt", weights_only=False)
    keys = list(ckpt["model"])
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert len(ckpt["optimizer"]["state"]) == len(keys)
    assert ckpt["epoch"] == 2
    # ~4M-parameter model; the checkpoint must be adapter-sized.
    assert (exp / "checkpoints" / "checkpoint.pt").stat().st_size < 1_000_000
    assert (exp / "config_resolved.yaml").exists()


def test_rerun_resumes_from_lora_checkpoint(smoke_run):
    """Running the same command again resumes (no missing-key error, no epoch 0), and a
    longer run continues at the next epoch."""
    work, env, _, _ = smoke_run
    again = _run(["sam3.train.train", "-c", CONFIG], work, env)
    assert "Resuming training from" in again
    assert "Train Epoch: [0]" not in again
    longer = _run(["sam3_lora_plugin.train", "-c", CONFIG, "trainer.max_epochs=3"], work, env)
    assert "Resuming training from epoch: 2" in longer
    epochs = set(re.findall(r"Train Epoch: \[(\d+)\]", longer))
    assert epochs == {"2"}
