"""Where the converters write (``data.convert.output_dir``): a new or empty OUT, or their
own earlier output (replaced as a whole, only with ``overwrite``); anything else is refused
before anything is written, and an interrupted conversion leaves the old output as it was."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from sam3_lora_plugin.data.convert import convert_labelme
from sam3_lora_plugin.data.convert import coco_writer
from sam3_lora_plugin.data.convert.__main__ import main
from sam3_lora_plugin.testing.protect import assert_unchanged, snapshot_files

ANN = "_annotations.coco.json"


def _labelme(folder: Path, name: str, label: str = "cup") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 10), (90, 120, 150)).save(folder / f"{name}.png")
    shape = {"label": label, "points": [[1, 1], [5, 5]], "shape_type": "rectangle", "group_id": None, "flags": {}}
    (folder / f"{name}.json").write_text(json.dumps({"shapes": [shape], "imagePath": f"{name}.png",
                                                     "imageWidth": 10, "imageHeight": 10}))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A LabelMe export with train/ (a, b) and val/ (v)."""
    root = tmp_path / "src"
    _labelme(root / "train", "a")
    _labelme(root / "train", "b")
    _labelme(root / "val", "v")
    return root


def _refused(tmp_path: Path, src: Path, out: Path, match: str, **kwargs) -> None:
    before = snapshot_files(tmp_path)
    with pytest.raises(ValueError, match=match):
        convert_labelme(src, out, **kwargs)
    assert_unchanged(before, snapshot_files(tmp_path))


def test_a_folder_holding_other_files_is_refused_even_with_overwrite(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    for overwrite in (False, True):
        _refused(tmp_path, src, out, r"mine' holds files this tool did not write \(notes\.txt\); nothing was "
                 r"written or removed\. .*pass another OUT, or remove what is there yourself", overwrite=overwrite)
    _refused(tmp_path, src, out / "notes.txt", r"notes\.txt' exists and is not a directory", overwrite=True)
    # SRC as OUT: its own files are not ours
    _refused(tmp_path, src, src, r"holds files this tool did not write", overwrite=True)


def test_a_dataset_not_written_here_is_refused(tmp_path: Path, src: Path) -> None:
    """A Roboflow COCO export has the same layout, but not our JSON: never replaced."""
    out = tmp_path / "roboflow"
    (out / "train").mkdir(parents=True)
    (out / "train" / ANN).write_text(json.dumps({"info": {"description": "Roboflow"}, "images": [],
                                                 "annotations": [], "categories": []}))
    Image.new("RGB", (4, 4)).save(out / "train" / "x.jpg")
    _refused(tmp_path, src, out, r"roboflow' holds files this tool did not write \(train\)", overwrite=True)


def test_a_stranger_inside_an_earlier_output_is_named(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    convert_labelme(src, out)
    (out / "train" / "keep_me.png").write_bytes(b"not ours")
    _refused(tmp_path, src, out, r"out/train' holds files this tool did not write \(keep_me\.png\)",
             overwrite=True)


def test_an_earlier_output_is_replaced_as_a_whole_only_with_overwrite(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    convert_labelme(src, out)
    assert sorted(os.listdir(out)) == ["train", "valid"]
    _refused(tmp_path, src, out, r"out is not empty: it holds an earlier conversion \(train, valid\); "
                                 r"pass --overwrite")
    other = tmp_path / "other"
    _labelme(other, "c", label="mug")
    convert_labelme(other, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["train"]  # the old valid split is gone with the rest
    assert sorted(os.listdir(out / "train")) == [ANN, "c.png"]
    coco = json.loads((out / "train" / ANN).read_text())
    assert [c["name"] for c in coco["categories"]] == ["mug"]
    mode = stat.S_IMODE((out / "train").stat().st_mode)
    assert mode & 0o055 == 0o055 & ~_umask(), oct(mode)  # not mkdtemp's 0700


def test_empty_folders_are_fine_and_stay(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "later").mkdir()
    convert_labelme(src, out)  # nothing to replace: no --overwrite needed
    assert sorted(os.listdir(out)) == ["later", "train", "valid"]


def test_an_interrupted_conversion_leaves_the_old_output(tmp_path: Path, src: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    convert_labelme(src, out)
    before = snapshot_files(out)
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = coco_writer._link
    monkeypatch.setattr(coco_writer, "_link", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_labelme(src, out, overwrite=True)
    assert_unchanged(before, snapshot_files(out))  # no temporary folder left either
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        convert_labelme(src, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # it created OUT, and removes it empty


def test_cli_refusal_is_one_line(tmp_path: Path, src: Path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(SystemExit) as exc:
        main(["labelme", str(src), str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "notes.txt" in err and "another OUT" in err, err
    assert (out / "notes.txt").read_text() == "my notes" and os.listdir(out) == ["notes.txt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
