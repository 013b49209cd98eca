"""python -m sam3_lora_plugin.adapters: export, inspect, merge, help and errors."""

import subprocess
import sys

import pytest
import torch

from sam3_lora_plugin.adapters.__main__ import main
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import write_stock_checkpoint


def test_export_inspect_merge(trained, tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": trained.state_dict(), "epoch": 2, "steps": {"train": 16},
                "optimizer": {"state": {0: {}, 1: {}}}}, ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "ad")]) == 0
    out = capsys.readouterr().out
    assert "wrote adapter" in out and "lora: rank 4, alpha 8.0, init kaiming" in out
    assert main(["inspect", str(tmp_path / "ad")]) == 0
    out = capsys.readouterr().out
    assert "adapted modules:" in out and "ranks: {2: " in out and "exported after epoch 2" in out
    assert main(["inspect", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "epoch: 2" in out and "optimizer state entries: 2" in out and "base fingerprint" in out
    base = write_stock_checkpoint(build_sam3_arch("tiny", seed=0), str(tmp_path / "sam3.pt"))
    assert main(["merge", base, str(tmp_path / "ad"), str(tmp_path / "merged.pt")]) == 0
    assert "wrote merged checkpoint" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    assert main(["export", str(tmp_path / "cut.pt"), str(tmp_path / "ad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cut.pt" in err and "truncated or corrupt" in err
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [[], ["export"], ["merge"], ["inspect"]])
def test_help_explains(cmd):
    proc = subprocess.run([sys.executable, "-m", "sam3_lora_plugin.adapters", *cmd, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "usage: python -m sam3_lora_plugin.adapters" in proc.stdout
    assert {"": "examples:", "export": "Needs no base weights", "merge": "tracker.*",
            "inspect": "base fingerprint"}[(cmd or [""])[0]] in proc.stdout
