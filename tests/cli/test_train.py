"""The overrides launcher: group selection, the override grammar, and bad overrides that
fail before anything runs. Each case runs the launcher in a fresh interpreter with
SAM3's main() replaced by a recorder, so nothing trains."""

import json
import subprocess
import sys
import textwrap

import pytest

from sam3_lora_plugin.trainer.compose import expand_group_overrides, get_config_groups

CONFIG = "configs/lora/smoke_cpu.yaml"

_RECORD = """
import json, sys
import sam3.train.train as sam3_train
def fake_main(args):
    cfg = sam3_train.compose(config_name=args.config)
    from omegaconf import OmegaConf
    # the real stdout: the launcher's compact console keeps only progress lines
    sys.__stdout__.write("CFG=" + json.dumps(OmegaConf.to_container(cfg.trainer, resolve=False)) + "\\n")
sam3_train.main = fake_main
import sam3_lora_plugin.cli.train as t
t.export_final_adapter = lambda d: None
t.main(sys.argv[1:])
"""


def _launch(tmp_path, *args):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_RECORD), "-c", CONFIG, *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    cfg = None
    for line in proc.stdout.splitlines():
        if line.startswith("CFG="):
            cfg = json.loads(line[4:])
    return proc.returncode, cfg, proc.stderr


def test_groups_and_aliases():
    assert "preset" in get_config_groups(CONFIG)
    assert expand_group_overrides(["lora=qv", "preset=attention", "+a=1", "~b", "c.d=2"], CONFIG) == [
        "configs/lora/preset@preset=qv", "configs/lora/preset@preset=attention", "+a=1", "~b", "c.d=2"]


def test_override_grammar_reaches_sam3s_compose(tmp_path):
    rc, cfg, err = _launch(tmp_path, "lora=attention_mlp", "trainer.max_epochs=5",
                           "trainer.model.lora.rank=16",
                           "+trainer.model.lora.include=[re:.*linear1]",
                           "~trainer.meters", "trainer.model.lora.components=[decoder]")
    assert rc == 0, err
    lora = cfg["model"]["lora"]
    assert lora["preset"] == "attention_mlp" and lora["rank"] == 16
    assert lora["include"] == ["re:.*linear1"] and lora["components"] == ["decoder"]
    assert cfg["max_epochs"] == 5 and "meters" not in cfg


@pytest.mark.parametrize("override, needle", [
    ("trainer.max_epoch=3", "Could not override 'trainer.max_epoch'"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' must be int"),
    ("trainer.distributed.find_unused_parameters=maybe", "trainer.distributed"),
    ("lora=everything", "Could not find 'configs/lora/preset/everything'"),
    ("trainer.model.lora.rank=0", "rank=0"),
    ("trainer.model.lora.preset=nope", "Unknown lora.preset 'nope'"),
    ("dataset=nope", "Could not find 'configs/lora/dataset/nope'"),
    ("runtime=tpu", "Could not find 'configs/lora/runtime/tpu'"),
    ("dataset=roboflow", "paths.dataset_root"),
    ("trainer.model.cpu_fallbacks=false", "Set trainer.model.cpu_fallbacks=true"),
    ("trainer.accelerator=cuda", "Set trainer.model.cpu_fallbacks=false"),
])
def test_bad_overrides_fail_before_anything_runs(tmp_path, override, needle):
    rc, cfg, err = _launch(tmp_path, override)
    assert rc == 2 and cfg is None
    error = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error and needle in err


def test_a_foreign_adapter_dir_stops_the_launcher_before_training(tmp_path):
    """The final export writes <experiment_log_dir>/adapter: a directory there that is not
    an adapter is refused before anything runs, and left as it was (issue 14)."""
    from sam3_lora_plugin.testing import assert_unchanged, snapshot_files

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "my_notes.txt").write_text("not an adapter")
    before = snapshot_files(tmp_path)
    rc, cfg, err = _launch(tmp_path, f"launcher.experiment_log_dir={run}")
    assert rc == 2 and cfg is None
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        next(line for line in err.splitlines() if "my_notes.txt" in line)]
    assert "move it aside or set another launcher.experiment_log_dir" in err
    assert_unchanged(before, snapshot_files(tmp_path))


def test_help_names_every_preset():
    """``--help`` lists the presets ``lora=`` takes: every key of ``PRESETS``."""
    import re

    from sam3_lora_plugin.cli import train
    from sam3_lora_plugin.lora.config import PRESETS

    listed = re.search(r"presets: (.*?)\)\n", train._EPILOG, re.S).group(1)
    names = {w for w in re.split(r"[\s,()=]+", listed) if w}
    assert set(PRESETS) <= names
