"""Output paths: export and merge replace only what they wrote, atomically
(issue 14, "adapters export destroys what is at its output path")."""

import os

import pytest
import torch

from sam3_lora_plugin.adapters.__main__ import main
from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import write_stock_checkpoint
from sam3_lora_plugin.testing import assert_unchanged, snapshot_files


@pytest.fixture
def run_dir(trained, tmp_path):
    """A run directory as SAM3's Trainer leaves it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "tensorboard").mkdir()
    torch.save({"model": trained.state_dict(), "epoch": 2}, run / "checkpoints" / "checkpoint.pt")
    (run / "log.txt").write_text("epoch 1\nepoch 2\n")
    (run / "config.yaml").write_text("trainer: {}\n")
    (run / "tensorboard" / "events.out").write_bytes(b"\x00\x01")
    return run


def _refused(capsys, argv, root, needle):
    before = snapshot_files(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert_unchanged(before, snapshot_files(root))


def test_export_into_a_run_directory_is_refused(run_dir, tmp_path, capsys):
    ckpt = str(run_dir / "checkpoints" / "checkpoint.pt")
    _refused(capsys, ["export", ckpt, str(run_dir)], tmp_path, "holds files this tool did not write")
    _refused(capsys, ["export", ckpt, ckpt], tmp_path, "is not a directory")
    _refused(capsys, ["export", ckpt, str(run_dir / "checkpoints")], tmp_path, "checkpoint.pt")


def test_export_replaces_its_own_adapter_and_fills_an_empty_dir(run_dir, tmp_path, capsys):
    ckpt = str(run_dir / "checkpoints" / "checkpoint.pt")
    (tmp_path / "empty").mkdir()
    assert main(["export", ckpt, str(tmp_path / "empty")]) == 0
    before = snapshot_files(tmp_path)
    assert main(["export", ckpt, str(tmp_path / "empty")]) == 0  # its own output
    assert_unchanged(before, snapshot_files(tmp_path))  # same content, same bytes
    # an adapter directory with a stranger in it is not ours any more
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    _refused(capsys, ["export", ckpt, str(tmp_path / "empty")], tmp_path, "notes.txt")


def test_merge_output_rules(adapter_dir, tmp_path, capsys):
    base = write_stock_checkpoint(build_sam3_arch("tiny", seed=0), str(tmp_path / "sam3.pt"))
    out = tmp_path / "merged.pt"
    assert main(["merge", base, adapter_dir, str(out)]) == 0
    capsys.readouterr()
    _refused(capsys, ["merge", base, adapter_dir, str(out)], tmp_path, "--overwrite")
    _refused(capsys, ["merge", base, adapter_dir, base, "--overwrite"], tmp_path,
             "Refusing to overwrite the input")
    _refused(capsys, ["merge", base, adapter_dir, str(tmp_path)], tmp_path, "is a directory")
    assert main(["merge", base, adapter_dir, str(out), "--overwrite"]) == 0
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_an_interrupted_merge_leaves_the_old_file(adapter_dir, tmp_path, monkeypatch):
    base = write_stock_checkpoint(build_sam3_arch("tiny", seed=0), str(tmp_path / "sam3.pt"))
    out = tmp_path / "merged.pt"
    out.write_bytes(b"the good old merge")

    def boom(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        main(["merge", base, adapter_dir, str(out), "--overwrite"])
    assert out.read_bytes() == b"the good old merge"
    assert sorted(os.listdir(tmp_path)) == ["adapter", "checkpoint.pt", "merged.pt", "sam3.pt"]


def test_snapshot_sees_every_kind_of_change(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("1")
    before = snapshot_files(tmp_path)
    (tmp_path / "d" / "a").write_text("2")
    (tmp_path / "b").write_text("new")
    with pytest.raises(AssertionError, match=r"'added': \['b'\].*'changed': \['d/a'\]"):
        assert_unchanged(before, snapshot_files(tmp_path))
    assert_unchanged(before, snapshot_files(tmp_path), allowed=["b", "d/*"])
