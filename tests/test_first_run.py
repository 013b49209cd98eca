"""README command 1, quick version: LoRA on the shipped pretrained tiny base, on the shifted
synthetic domain, beats the base on the held-out split (SAM3's COCO evaluator, through
``python -m sam3_lora_plugin.evaluate``), and the evaluation writes its pictures.

The full run (256 steps) reached bbox AP 0.59 from 0.0 on 2 threads with the default
(benchmarks/learning.py's attention_mlp_heads_neck14_norms_text4_small16_lr3e-3 row); here
128 train images x 4 epochs (64 steps) and only the direction is checked: the adapter's bbox
AP50 is above the base's by at least 0.02.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sam3_lora_plugin.models.pretrained import get_tiny_base_path

CONFIG = "configs/lora/first_run_cpu.yaml"
QUICK = ["trainer.max_epochs=4", "scratch.shift_data.num_train=128", "scratch.shift_data.num_test=16"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.path.isfile(get_tiny_base_path()),
    reason="the shipped base is missing (tests/models/test_pretrained.py fails on that)")]


def _run(args, cwd, env):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout


def test_quick_first_run_adapter_beats_the_base(tmp_path):
    env = dict(os.environ, SAM3_LORA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = _run(["sam3_lora_plugin.train", "-c", CONFIG, *QUICK], tmp_path, env)
    assert "preset default, rank 8, alpha 16; rank 4: text_encoder; rank 16: " in out
    assert "ETA epoch" in out
    assert "Train App Config" not in out  # the full config went to the log file
    assert (tmp_path / "runs" / "first_run" / "logs" / "console.log").is_file()
    again = _run(["sam3_lora_plugin.train", "-c", CONFIG, *QUICK], tmp_path, env)
    assert "has already trained 4 of 4 epochs: nothing to train" in again
    brief = _run(["sam3_lora_plugin.evaluate", "-c", CONFIG, "--adapter", "runs/first_run/adapter",
                  "--out", "runs/first_run/eval", "--brief", *QUICK], tmp_path, env)
    comp = json.loads((tmp_path / "runs/first_run/eval/comparison.json").read_text())
    bbox = next(r for r in comp["results"] if r["iou_type"] == "bbox")["overall"]
    assert bbox["adapter"]["AP50"] >= bbox["base"]["AP50"] + 0.02, bbox
    for name in ("before_after.png", "per_category_ap.png", "curves.png"):
        assert str(tmp_path / "runs" / "first_run" / "eval" / name) in brief
