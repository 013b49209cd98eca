"""The compact console of ``python -m sam3_lora_plugin.train``: what reaches the console and
the log from SAM3's output (fed here as the real lines SAM3 0.1.4 prints), the header on a
composed config, and the rerun of a finished run."""

from __future__ import annotations

import io
import os

import pytest
import torch
from omegaconf import OmegaConf

from sam3_lora_plugin.cli.console import CompactConsole, format_header, get_dataset_summary
from sam3_lora_plugin.trainer.compose import compose_config

SECRET = "HF_TOKEN=hf_abcdefgh12345"
SAM3_LINES = [
    "###################### Train App Config ####################",
    "trainer:",
    "  _target_: sam3.train.trainer.Trainer",
    "INFO 2026-11-29 11:49:00,001 train_utils.py: 151: Logging ENV_VARIABLES",
    "INFO 2026-11-29 11:49:00,002 train_utils.py: 152: HOME=/root",
    SECRET,
    "PATH=/usr/bin",
    "",
    "INFO 2026-11-29 11:49:01,000 sam3_lora_plugin.lora.inject: LoRA summary:",
    "  vision_trunk       2 qkv[q/k/v]",
    "  trainable 72,448 / total 3,693,210 parameters (1.962%)",
    "INFO 2026-11-29 11:49:02,781 train_utils.py: 268: Train Epoch: [0][ 0/32] | Batch Time: 1.79 "
    "(1.79) | Losses/train_default_loss: 0.00e+00 (0.00e+00) | Losses/train_all_loss: 4.46e+02 (4.46e+02)",
    "INFO 2026-11-29 11:49:05,781 train_utils.py: 268: Train Epoch: [0][ 8/32] | Batch Time: 0.3 "
    "(0.4) | Losses/train_default_loss: 0.00e+00 (0.00e+00) | Losses/train_all_loss: 2.00e+02 (3.10e+02)",
    "INFO 2026-11-29 11:49:20,000 trainer.py: 754: Meters: {'Meters_train/val_coco/detection/"
    "coco_eval_bbox_AP': np.float64(0.4567), 'Meters_train/val_coco/segmentation/coco_eval_segm_AP':"
    " np.float64(0.1234), 'Trainer/epoch': 0}",
    "WARNING 2026-11-29 11:49:21,000 trainer.py: 99: something the user must see",
]


def _feed(lines, max_epochs=8):
    console, log = io.StringIO(), io.StringIO()
    stream = CompactConsole(console, log, max_epochs)
    for line in lines:  # SAM3 writes in pieces: split each line in two writes
        stream.write(line[: len(line) // 2])
        stream.write(line[len(line) // 2:] + "\n")
    return console.getvalue(), log.getvalue()


def test_console_shows_params_progress_ap_and_warnings_only():
    console, log = _feed(SAM3_LINES)
    lines = console.splitlines()
    assert lines[0] == "  params     72,448 trainable of 3,693,210 (1.962%)"
    assert lines[1].startswith("  epoch 1/8  step  1/32  loss 446  ETA epoch -")
    assert lines[2].startswith("  epoch 1/8  step  9/32  loss 310  ETA epoch ")
    assert ", run " in lines[2]  # the run's ETA once a step time is known
    assert lines[3] == "  held-out   bbox AP 0.457  segm AP 0.123"
    assert lines[4] == "  something the user must see"
    assert len(lines) == 5
    assert "Train App Config" in log and "_target_: sam3.train.trainer.Trainer" in log


def test_environment_variables_reach_neither_console_nor_log():
    console, log = _feed(SAM3_LINES)
    for text in (console, log):
        assert "hf_abcdefgh12345" not in text and "HOME=/root" not in text and "PATH=" not in text
    assert "LoRA summary" in log  # the record after the dump is logged again


DETECTOR = "fusion_encoder, decoder, geometry_encoder, segmentation_head"


@pytest.mark.parametrize("config,run,preset", [
    ("configs/lora/first_run_cpu.yaml", "runs/first_run",
     f"default, rank 8, alpha 16; rank 4: text_encoder; rank 16: {DETECTOR}\n"),
    ("configs/lora/smoke_cpu.yaml", "runs/smoke",
     f"default, rank 4, alpha 8; rank 2: text_encoder; rank 8: {DETECTOR}\n"),
])
def test_header_names_config_data_lora_and_paths(config, run, preset, tmp_path, monkeypatch):
    monkeypatch.setenv("SAM3_LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    cfg = compose_config(config)
    assert cfg.paths.experiment_log_dir == run
    cfg = compose_config(config, [f"launcher.experiment_log_dir={tmp_path / 'run'}"])
    header = format_header(cfg, config)
    assert header.splitlines()[0].endswith(config)
    assert f"preset {preset}" in header
    assert "3 categories" in header and "images" in header
    for sub in ("checkpoints/checkpoint.pt", "logs", "adapter"):
        assert str(tmp_path / "run" / sub) in header
    assert "hf_secret_value" not in header
    if "first_run" in config:  # the shifted domain, 256 train / 48 held-out images
        assert "256 images, 3 categories (orange hexagon, purple diamond, yellow star)" in header
        assert "48 images" in header and "tiny_base.safetensors" in header


@pytest.mark.parametrize("overrides,ranks", [
    (["trainer.model.lora.component_overrides={}"], "rank 4, alpha 8\n"),   # one rank
    (["trainer.model.lora.rank=16", "trainer.model.lora.alpha=32"],
     f"rank 16, alpha 32; rank 8: text_encoder; rank 32: {DETECTOR}\n"),  # the scale follows
    (["lora=attention_mlp", "trainer.model.lora.component_overrides={decoder:{rank:2}}"],
     "rank 4, alpha 8; rank 2: decoder\n"),                            # explicit overrides
    (["trainer.model.lora.use_dora=true"],                             # DoRA before the ranks
     f"rank 4, alpha 8, DoRA; rank 2: text_encoder; rank 8: {DETECTOR}\n"),
])
def test_header_gives_the_ranks_the_adapters_get(overrides, ranks, tmp_path, monkeypatch):
    """Per-component ranks that differ from the config's rank are in the header, as the
    adapters will have them (the same resolution as LoraConfig's)."""
    from sam3_lora_plugin.lora.config import LoraConfig

    monkeypatch.setenv("SAM3_LORA_CACHE", str(tmp_path / "cache"))
    cfg = compose_config("configs/lora/smoke_cpu.yaml", overrides)
    assert ranks in format_header(cfg, "smoke_cpu.yaml") + "\n"
    lora = OmegaConf.to_container(cfg.trainer.model.lora, resolve=True)
    lora.pop("_target_", None)
    resolved = LoraConfig(**lora).component_overrides
    for part in ranks.strip().split("; ")[1:]:
        r, names = part.removeprefix("rank ").split(": ")
        assert all(resolved[n]["rank"] == int(r) for n in names.split(", ")), resolved


def test_dataset_summary_of_an_unreadable_file_says_so(tmp_path):
    assert get_dataset_summary(str(tmp_path / "missing.json")).startswith("(not readable")


def test_rerun_of_a_finished_run_trains_nothing_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """A checkpoint with max_epochs done: the message, no Trainer, exit normally."""
    import sam3.train.train as sam3_train

    from sam3_lora_plugin.cli.train import main

    monkeypatch.setenv("SAM3_LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "runs" / "smoke" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"model": {}, "epoch": 2}, ckpt / "checkpoint.pt")
    monkeypatch.setattr(sam3_train, "main", lambda args: pytest.fail("the Trainer must not run"))
    main(["-c", "configs/lora/smoke_cpu.yaml", "trainer.max_epochs=2"])
    out = capsys.readouterr().out
    assert (f"{tmp_path / 'runs' / 'smoke'} has already trained 2 of 2 epochs: nothing to train. "
            "Pass trainer.max_epochs=4 (any N > 2) to continue it, or paths.run_name=<new name> "
            "for a new run.") in out


def test_rerun_with_more_epochs_runs_the_trainer(tmp_path, monkeypatch):
    import sam3.train.train as sam3_train

    from sam3_lora_plugin.cli.train import main

    monkeypatch.setenv("SAM3_LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "runs" / "mine" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"model": {}, "epoch": 2}, ckpt / "checkpoint.pt")
    called = []
    monkeypatch.setattr(sam3_train, "main", lambda args: called.append(args))
    main(["-c", "configs/lora/smoke_cpu.yaml", "trainer.max_epochs=3", "paths.run_name=mine",
          "--verbose"])
    assert len(called) == 1
    # the relative run dir reached SAM3's launcher as an absolute path
    assert sam3_train.compose(config_name="configs/lora/smoke_cpu.yaml").launcher.experiment_log_dir \
        == str(tmp_path / "runs" / "mine")
