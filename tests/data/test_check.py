"""Tests for the COCO dataset checker: one test per defect class, plus the CLI."""

import copy
import io
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from sam3_lora_plugin.data import make_synthetic_coco
from sam3_lora_plugin.data.check import DatasetError, check_coco, check_dataset, is_code_like_name, main

ANN = "_annotations.coco.json"

BASE: dict[str, Any] = {
    "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
               {"id": 2, "file_name": "b.png", "width": 20, "height": 10}],
    "categories": [{"id": 1, "name": "red cup"}, {"id": 2, "name": "blue plate"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4], "area": 16, "iscrowd": 0,
         "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [10, 3, 5, 5], "area": 25, "iscrowd": 0,
         "segmentation": [[10, 3, 15, 3, 15, 8, 10, 8]]},
    ],
}


def _write(split_dir: Path, coco: dict[str, Any], images: dict[str, tuple[int, int]] | None = None) -> Path:
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, size in (images if images is not None else {"a.png": (20, 10), "b.png": (20, 10)}).items():
        Image.new("RGB", size).save(split_dir / name)
    (split_dir / ANN).write_text(json.dumps(coco))
    return split_dir / ANN


def _ann(coco: dict, i: int = 0) -> dict:
    return coco["annotations"][i]


def _set(**kw: Any) -> Callable[[dict], None]:
    return lambda c: _ann(c).update(kw)


# (code, mutation of the COCO dict or the split folder, text expected in the issue)
CASES: list[tuple[str, Callable[[dict], None] | None, Callable[[Path], None] | None, str]] = [
    ("missing_image", None, lambda d: (d / "b.png").unlink(), "b.png (id 2): not found"),
    ("missing_image", None, lambda d: (d / "a.png").write_bytes(b"not an image"), "a.png (id 1): Unidentified"),
    ("size_mismatch", lambda c: c["images"][0].update(width=30), None, "JSON 30x10, file 20x10"),
    ("size_swapped", lambda c: c["images"][1].update(width=10, height=20), None, "JSON 10x20, file 20x10"),
    ("degenerate_bbox", _set(bbox=[2, 2, 0, 4]), None, "annotation id 1: [2, 2, 0, 4]"),
    ("broken_bbox", _set(bbox=[2, 2, "4", 4]), None, "annotation id 1: [2, 2, '4', 4]"),
    ("broken_bbox", _set(bbox=[2, 2, float("nan"), 4]), None, "nan"),
    ("broken_bbox", _set(bbox=[2, 2, 4]), None, "[2, 2, 4]"),
    ("bbox_outside", _set(bbox=[15, 2, 10, 4]), None, "[15, 2, 10, 4] in 20x10"),
    ("invalid_segmentation", _set(segmentation=[[2, 2, 6, 2, 6]]), None, "polygon with 5 coordinates"),
    ("invalid_segmentation", _set(segmentation=[[2, 2, 6, 2]]), None, "polygon with 4 coordinates"),
    ("invalid_segmentation", _set(segmentation=[2, 2, 6, 2, 6, 6]), None, "not nested"),
    ("invalid_segmentation", _set(segmentation={"size": [5, 5], "counts": "0"}), None, "RLE size [5, 5] != [10, 20]"),
    ("empty_segmentation", _set(segmentation=[[2, 2, 4, 2, 6, 2]]), None, "annotation id 1"),
    ("unknown_category", _set(category_id=9), None, "category_id 9"),
    ("unknown_image", _set(image_id=9), None, "image_id 9"),
    ("duplicate_id", lambda c: c["annotations"][1].update(id=1), None, "annotation id 1"),
    ("duplicate_id", lambda c: c["images"][1].update(id=1), None, "image id 1"),
    ("duplicate_id", lambda c: c["categories"][1].update(id=1), None, "category id 1"),
    ("missing_field", lambda c: _ann(c).pop("iscrowd"), None, "annotation {"),
    ("missing_field", lambda c: c["images"][0].pop("width"), None, "image {"),
    ("missing_section", lambda c: c.pop("categories"), None, "categories"),
    ("empty_split", lambda c: c.update(annotations=[]), None, "2 images, 0 annotations"),
    ("blank_category_name", lambda c: c["categories"][0].update(name="  "), None, "category id 1"),
    ("unused_category", lambda c: c["categories"].append({"id": 3, "name": "green bowl"}), None,
     "'green bowl' (id 3)"),
    ("code_like_name", lambda c: c["categories"][0].update(name="class_3"), None, "'class_3'"),
    ("duplicate_category_name", lambda c: c["categories"][1].update(name="Red cup"), None, "'red cup' x2"),
    ("box_only_mixed", _set(segmentation=[]), None, "1 box-only vs 1 with masks"),
]


@pytest.mark.parametrize("code, mutate, mutate_dir, expected", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_defect(tmp_path: Path, code: str, mutate: Callable | None, mutate_dir: Callable | None,
                expected: str) -> None:
    coco = copy.deepcopy(BASE)
    if mutate:
        mutate(coco)
    json_path = _write(tmp_path / "train", coco)
    if mutate_dir:
        mutate_dir(tmp_path / "train")
    report = check_coco(json_path)
    issues = {i.code: i for i in report.issues}
    assert code in issues, report.format()
    issue = issues[code]
    assert expected in issue.describe(), issue.describe()
    assert f"[{code}]" in report.format() and issue.fix in report.format()
    if issue.severity == "error":
        with pytest.raises(DatasetError) as err:
            report.raise_if_errors()
        msg = str(err.value)
        assert str(json_path) in msg and issue.title in msg and expected in msg and "Fix:" in msg
    else:
        assert report.ok and not report.errors, report.format()
        report.raise_if_errors()


def test_clean_dataset_has_no_issues(tmp_path: Path) -> None:
    report = check_coco(_write(tmp_path / "train", copy.deepcopy(BASE)))
    assert report.issues == [] and report.images == 2 and report.annotations == 2


def test_synthetic_dataset_passes(tmp_path: Path) -> None:
    root = make_synthetic_coco(tmp_path / "syn", num_train=4, num_valid=2, num_test=2)
    report = check_dataset(root)
    assert [p.path.parent.name for p in report.parts] == ["train", "valid", "test"]
    assert not report.errors and not report.warnings, report.format()
    report.raise_if_errors()


def test_corrupt_json_names_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "train" / ANN
    path.parent.mkdir()
    path.write_text('{"images": [1, 2,,]}')
    with pytest.raises(DatasetError) as err:
        check_coco(path).raise_if_errors()
    assert str(path) in str(err.value) and "invalid JSON at line 1 column" in str(err.value)
    assert not isinstance(err.value.__context__, json.JSONDecodeError)
    assert main([str(path)]) == 1
    assert "unreadable_json" in capsys.readouterr().out
    assert "file not found" in check_coco(tmp_path / "nope.json").format()
    path.write_text("[]")
    assert "top level is a list" in check_coco(path).format()


def test_first_offenders_are_limited(tmp_path: Path) -> None:
    coco = copy.deepcopy(BASE)
    coco["images"] = [{"id": i, "file_name": f"m{i}.png", "width": 20, "height": 10} for i in range(1, 9)]
    report = check_coco(_write(tmp_path / "train", coco, images={}))
    issue = next(i for i in report.issues if i.code == "missing_image")
    assert issue.count == 8 and len(issue.examples) == 5 and issue.examples[0].startswith("m1.png")


def test_exif_orientation_warns(tmp_path: Path) -> None:
    json_path = _write(tmp_path / "train", copy.deepcopy(BASE))
    im = Image.new("RGB", (20, 10))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "train" / "a.png", exif=exif.tobytes())
    report = check_coco(json_path)
    assert [i.code for i in report.issues] == ["exif_orientation"] and report.ok


def _boxes_dataset(boxes: list[list[float]], size: tuple[int, int] = (100, 80)) -> dict[str, Any]:
    w, h = size
    return {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
            "categories": [{"id": 1, "name": "tile"}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 1.0, "iscrowd": 0,
                             "segmentation": []} for k, b in enumerate(boxes)]}


def test_suspected_xyxy(tmp_path: Path) -> None:
    xyxy = [[10, 10, 30, 25], [50, 40, 90, 70], [60, 5, 95, 30], [5, 50, 20, 78]]  # x2 > x1, y2 > y1 all
    report = check_coco(_write(tmp_path / "a", _boxes_dataset(xyxy), {"a.png": (100, 80)}))
    issue = next(i for i in report.issues if i.code == "suspected_xyxy")
    assert issue.severity == "warning" and issue.count == 3 and "annotation id 2" in issue.describe()
    assert "width = x2 - x1" in issue.fix

    # Genuine XYWH boxes, two running off the right edge (one of them would fit as XYXY):
    # out-of-image, but not XYXY, since most boxes have bbox[2] < bbox[0].
    xywh = [[70, 10, 40, 20], [60, 40, 20, 30], [55, 5, 10, 10], [80, 50, 15, 20], [5, 10, 98, 20]]
    codes = [i.code for i in check_coco(_write(tmp_path / "b", _boxes_dataset(xywh), {"a.png": (100, 80)})).issues]
    assert codes == ["bbox_outside"]

    # With masks the mask extent decides: boxes written as [x1, y1, x2, y2] of their polygons.
    coco = _boxes_dataset([[10, 10, 30, 25], [50, 40, 60, 50]])
    for a in coco["annotations"]:
        x1, y1, x2, y2 = a["bbox"]
        a["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
    report = check_coco(_write(tmp_path / "c", coco, {"a.png": (100, 80)}))
    assert next(i for i in report.issues if i.code == "suspected_xyxy").count == 2


def test_check_dataset_split_rules(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write(root / "valid", copy.deepcopy(BASE))
    report = check_dataset(root)
    assert [i.code for i in report.errors] == ["missing_split"]
    with pytest.raises(DatasetError, match="train split missing"):
        report.raise_if_errors()

    other = copy.deepcopy(BASE)
    other["categories"][1]["name"] = "green bowl"
    _write(root / "train", other)
    report = check_dataset(root)
    assert report.ok and [i.code for i in report.warnings] == ["category_mismatch"]
    assert report.images == 4 and report.annotations == 4

    (root / "valid" / ANN).unlink()
    assert [i.code for i in check_dataset(root).warnings] == ["missing_valid"]


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ds"
    _write(root / "train", copy.deepcopy(BASE))
    _write(root / "valid", copy.deepcopy(BASE))
    assert main([str(root)]) == 0
    assert main([str(root / "train")]) == 0
    warn = copy.deepcopy(BASE)
    warn["categories"][0]["name"] = "0"
    _write(root / "valid", warn)
    assert main([str(root / "valid" / ANN)]) == 0
    out = capsys.readouterr().out
    assert "WARNING [code_like_name]" in out and "0 error(s), 1 warning(s)" in out
    broken = copy.deepcopy(BASE)
    broken["annotations"][0]["image_id"] = 7
    _write(root / "train", broken)
    assert main([str(root)]) == 1
    assert "ERROR   [unknown_image]" in capsys.readouterr().out
    assert main([str(root), "--no-images"]) == 1
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "Exit code" in capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger="sam3_lora_plugin.data.check"):
        check_coco(root / "train" / ANN, progress_every=1)
    assert "checked 2/2 images" in caplog.text


@pytest.mark.parametrize("name, code_like", [("0", True), ("class_3", True), ("c12", True), ("obj1", True),
                                             ("x", True), ("red car", False), ("4x4 truck", False),
                                             ("r2d2", False), ("person", False)])
def test_is_code_like_name(name: str, code_like: bool) -> None:
    assert is_code_like_name(name) is code_like


def _encoded(fmt: str, size: tuple[int, int] = (20, 10)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_truncated_image_is_an_error(tmp_path: Path, fmt: str) -> None:
    """A file cut short (interrupted copy) has a valid header: the old header-only check passed it,
    and SAM3's loader then raised OSError mid-epoch."""
    json_path = _write(tmp_path / "train", copy.deepcopy(BASE))
    data = _encoded(fmt)
    (tmp_path / "train" / "a.png").write_bytes(data)
    assert check_coco(json_path).issues == []  # the whole file, any format, passes
    (tmp_path / "train" / "a.png").write_bytes(data[:-60])
    report = check_coco(json_path)
    issue = next((i for i in report.issues if i.code in ("truncated_image", "missing_image")), None)
    assert issue is not None and issue.severity == "error", report.format()
    if fmt != "WEBP":  # PIL cannot even read a cut WebP's header: reported as unreadable
        assert issue.code == "truncated_image" and "a.png (id 1): image file is truncated" in issue.describe()
    with pytest.raises(DatasetError, match="copy or export these images again|put the images beside"):
        report.raise_if_errors()


def test_data_after_the_jpeg_end_marker_passes(tmp_path: Path) -> None:
    """Motion photos append a video after the JPEG's end marker: the image itself is whole."""
    json_path = _write(tmp_path / "train", copy.deepcopy(BASE))
    (tmp_path / "train" / "a.png").write_bytes(_encoded("JPEG") + b"ftypmp42" + bytes(500))
    assert check_coco(json_path).issues == []


def test_size_mismatch_is_an_error(tmp_path: Path) -> None:
    """SAM3 normalises boxes by the JSON size and places them on the file's pixels: a JSON
    size that is not the file's puts every box in the wrong place (was only a warning)."""
    coco = copy.deepcopy(BASE)
    coco["images"][0].update(width=40, height=20)  # file is 20x10
    report = check_coco(_write(tmp_path / "train", coco))
    assert [(i.code, i.severity) for i in report.issues] == [("size_mismatch", "error")], report.format()
    with pytest.raises(DatasetError, match=r"JSON 40x20, file 20x10\)\. Fix: set width/height from the files"):
        report.raise_if_errors()
    assert main([str(tmp_path / "train")]) == 1
