"""Tests for ``python -m sam3_lora_plugin.doctor``: the CLI on the smoke config (passes on
CPU, CUDA a WARN), with a broken dataset path and a broken dataset (FAIL, exit 1), and the
network check, which must report an unreachable or silent hub instead of hanging."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from sam3_lora_plugin.data import make_synthetic_coco
from sam3_lora_plugin.data.synthetic import SMOKE_DIRNAME
from sam3_lora_plugin.cli.doctor_checks import check_checkpoint, check_hf_hub

SMOKE = "configs/lora/smoke_cpu.yaml"
LINE = re.compile(r"^(OK|WARN|FAIL) +([\w ]+): (.*)$")


def _doctor(args, cwd, cache):
    env = dict(os.environ, SAM3_LORA_CACHE=str(cache), PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-m", "sam3_lora_plugin.doctor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [m.groups() for m in map(LINE.match, proc.stdout.splitlines()) if m]
    return proc.returncode, lines, proc.stdout + proc.stderr


def _by_name(lines, name):
    return [(status, detail) for status, n, detail in lines if n == name]


def test_help_explains_the_checks_and_exit_code():
    proc = subprocess.run([sys.executable, "-m", "sam3_lora_plugin.doctor", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for word in ("OK, WARN or FAIL", "Exit code 1 if any FAIL", "-c CONFIG", "--no-network", "dataset check"):
        assert word in " ".join(proc.stdout.split()), word


def test_smoke_config_passes_on_cpu_with_a_cuda_warning(tmp_path):
    rc, lines, out = _doctor(["-c", SMOKE], tmp_path, tmp_path / "cache")
    assert rc == 0, out
    assert not [line for line in lines if line[0] == "FAIL"], out
    assert _by_name(lines, "sam3") == [("OK", "version 0.1.4")]
    assert _by_name(lines, "config")[0][0] == "OK"
    (status, bpe), = _by_name(lines, "bpe vocabulary")
    assert status == "OK" and bpe.endswith("bpe_simple_vocab_16e6.txt.gz")
    import torch

    assert _by_name(lines, "cuda")[0][0] == ("OK" if torch.cuda.is_available() else "WARN")
    assert _by_name(lines, "checkpoint")[0][0] == "OK"
    paths = _by_name(lines, "dataset path")
    assert len(paths) == 4 and all(s == "OK" for s, _ in paths)
    checks = _by_name(lines, "dataset check")
    assert [s for s, _ in checks] == ["OK", "OK"]
    assert "16 images" in checks[0][1] and "8 images" in checks[1][1]
    assert re.search(r"\d+ checks: \d+ OK, \d+ WARN, 0 FAIL", out)


def test_broken_dataset_path_fails_with_the_fix(tmp_path):
    missing = tmp_path / "nowhere" / "train"
    rc, lines, out = _doctor(["-c", SMOKE, f"trainer.data.train.dataset.img_folder={missing}/"],
                             tmp_path, tmp_path / "cache")
    assert rc == 1, out
    fails = [(n, d) for s, n, d in lines if s == "FAIL"]
    assert len(fails) == 1, out
    name, detail = fails[0]
    assert name == "dataset path"
    assert f"{missing}/ does not exist (trainer.data.train.dataset.img_folder)" in detail
    assert "-> fix: set paths.dataset_root" in detail


def test_broken_dataset_fails_the_dataset_check(tmp_path):
    root = make_synthetic_coco(tmp_path / "cache" / SMOKE_DIRNAME)  # the smoke dataset, pre-made
    ann = root / "valid" / "_annotations.coco.json"
    victim = json.loads(ann.read_text())["images"][2]["file_name"]
    (root / "valid" / victim).unlink()
    rc, lines, out = _doctor(["-c", SMOKE], tmp_path, tmp_path / "cache")
    assert rc == 1, out
    (status, detail), = [c for c in _by_name(lines, "dataset check") if str(ann) in c[1]]
    assert status == "FAIL"
    assert f"image files missing or unreadable: 1 (first: {victim}" in detail
    assert "-> fix: put the images beside the JSON" in detail
    assert f"python -m sam3_lora_plugin.data.check {ann}" in detail


STOCK = {"_target_": "sam3_lora_plugin.build_lora_sam3",
         "model": {"_target_": "sam3.model_builder.build_sam3_image_model", "checkpoint_path": None,
                   "load_from_HF": True}}


@pytest.fixture
def empty_hf_cache(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_unreachable_hub_is_a_fail_not_a_hang(monkeypatch, empty_hf_cache):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    start = time.monotonic()
    (check,) = check_checkpoint(STOCK, timeout=2.0)
    assert time.monotonic() - start < 5
    assert check.status == "FAIL" and "HF hub not reachable" in check.detail
    assert "set paths.checkpoint_path=/path/to/sam3.pt" in check.fix


def test_silent_hub_times_out(monkeypatch, empty_hf_cache):
    """A server (or DNS) that never answers: the probe thread is abandoned after the timeout."""
    def never(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(urllib.request, "urlopen", never)
    start = time.monotonic()
    check = check_hf_hub(timeout=1.0)
    assert time.monotonic() - start < 4
    assert check.status == "FAIL" and "no answer within 2 s" in check.detail


def test_checkpoint_path_that_does_not_exist_fails(tmp_path):
    cfg = {**STOCK, "model": {**STOCK["model"], "checkpoint_path": str(tmp_path / "sam3.pt")}}
    (check,) = check_checkpoint(cfg, network=False)
    assert check.status == "FAIL" and "does not exist" in check.detail
    (tmp_path / "sam3.pt").write_bytes(b"x" * 10)
    (check,) = check_checkpoint(cfg, network=False)
    assert check.status == "OK"


def test_first_run_config_checks_the_path_its_function_returns(tmp_path):
    """README command 1's config computes its base path (``_target_: get_tiny_base_path``):
    the doctor calls that function and checks the file it names; a function that fails is a
    FAIL line, not a traceback."""
    from sam3_lora_plugin.models.pretrained import get_tiny_base_path

    rc, lines, out = _doctor(["-c", "configs/lora/first_run_cpu.yaml", "--no-network"], tmp_path,
                             tmp_path / "cache")
    assert rc == 0 and "Traceback" not in out, out
    assert _by_name(lines, "checkpoint") == [
        ("OK", f"{get_tiny_base_path()} ({os.path.getsize(get_tiny_base_path()) / 1e9:.2f} GB)")]
    broken = {"_target_": "sam3_lora_plugin.build_lora_sam3",
              "model": {"_target_": "sam3_lora_plugin.models.arch.build_sam3_arch",
                        "checkpoint_path": {"_target_": "no.such.module.get_path"}}}
    (check,) = check_checkpoint(broken, network=False)
    assert check.status == "FAIL" and "no.such.module.get_path failed" in check.detail
