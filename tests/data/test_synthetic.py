"""Tests for the synthetic Roboflow-style COCO generator."""

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sam3_lora_plugin.data import get_smoke_dataset_root, make_synthetic_coco
from sam3_lora_plugin.data.synthetic import ANN_FILE, SPLITS, main

SMALL = dict(num_train=6, num_valid=3, num_test=3)


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("syn") / "ds")


def _pixels(root: Path) -> dict:
    return {str(p.relative_to(root)): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.jpg"))}


def _jsons(root: Path) -> dict:
    return {s: (root / s / ANN_FILE).read_text() for s in SPLITS}


def test_layout_and_annotations(default_root: Path) -> None:
    counts = {"train": 16, "valid": 8, "test": 8}
    for split in SPLITS:
        coco = COCO(str(default_root / split / ANN_FILE))
        assert len(coco.getImgIds()) == counts[split]
        cats = coco.loadCats(coco.getCatIds())
        assert [c["id"] for c in cats] == [1, 2, 3]
        for c in cats:
            assert re.fullmatch(r"[a-z]{2,}( [a-z]{2,})*", c["name"]), c["name"]
        for img in coco.loadImgs(coco.getImgIds()):
            path = default_root / split / img["file_name"]
            assert Path(img["file_name"]).name == img["file_name"] and path.is_file()
            with Image.open(path) as im:
                assert im.size == (img["width"], img["height"]) == (112, 112)
            assert 1 <= len(coco.getAnnIds(imgIds=img["id"])) <= 4
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            h, w = img["height"], img["width"]
            assert ann["iscrowd"] == 0 and ann["id"] >= 1
            assert isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))
            np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(rle), atol=1.0)
            assert ann["area"] == pytest.approx(float(mask_utils.area(rle)), rel=0.02, abs=2)
            x, y, bw, bh = ann["bbox"]
            assert x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
        if split == "train":
            for c in cats:
                assert coco.getAnnIds(catIds=[c["id"]]), f"no train annotations for {c['name']}"


def test_total_size_small(default_root: Path) -> None:
    total = sum(p.stat().st_size for p in default_root.rglob("*") if p.is_file())
    assert total < 2_000_000


def test_deterministic(tmp_path: Path) -> None:
    a = make_synthetic_coco(tmp_path / "a", seed=3, **SMALL)
    b = make_synthetic_coco(tmp_path / "b", seed=3, **SMALL)
    c = make_synthetic_coco(tmp_path / "c", seed=4, **SMALL)
    assert _jsons(a) == _jsons(b)
    pa, pb, pc = _pixels(a), _pixels(b), _pixels(c)
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert _jsons(a) != _jsons(c)
    assert any(not np.array_equal(pa[k], pc[k]) for k in pa)


def test_idempotent_and_param_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    first = make_synthetic_coco(root, **SMALL)
    ann = root / "train" / ANN_FILE
    mtime = ann.stat().st_mtime_ns
    assert make_synthetic_coco(str(root), **SMALL) == first
    assert ann.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError) as err:
        make_synthetic_coco(root, seed=1, **SMALL)
    assert str(root) in str(err.value) and "Delete" in str(err.value)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="junk"):
        make_synthetic_coco(junk, **SMALL)
    assert not list(tmp_path.glob(".*tmp-*")), "temp dirs must be cleaned up"


def test_empty_dir_is_filled(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    assert make_synthetic_coco(root, **SMALL) == root.absolute()
    assert (root / "train" / ANN_FILE).is_file()


def test_concurrent_writers(tmp_path: Path) -> None:
    root = tmp_path / "race"
    results, errors = [], []

    def worker() -> None:
        try:
            results.append(make_synthetic_coco(root, **SMALL))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert json.loads((root / ".complete").read_text())["params"]["num_train"] == 6
    assert not list(tmp_path.glob(".*tmp-*"))


def test_shifted_style(tmp_path: Path) -> None:
    base = COCO(str(make_synthetic_coco(tmp_path / "b", **SMALL) / "train" / ANN_FILE))
    shifted = COCO(str(make_synthetic_coco(tmp_path / "s", style="shifted", **SMALL) / "train" / ANN_FILE))
    base_names = {c["name"] for c in base.dataset["categories"]}
    shifted_names = {c["name"] for c in shifted.dataset["categories"]}
    assert len(shifted_names) == 3 and not base_names & shifted_names
    with pytest.raises(ValueError, match="style"):
        make_synthetic_coco(tmp_path / "x", style="nope")


def test_smoke_root_uses_env_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAM3_LORA_CACHE", str(tmp_path / "cache"))
    root = get_smoke_dataset_root()
    assert root.startswith(str(tmp_path / "cache")) and "smoke_coco_v" in root
    assert get_smoke_dataset_root() == root
    explicit = get_smoke_dataset_root(str(tmp_path / "other"))
    assert Path(explicit, "valid", ANN_FILE).is_file()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path / "cli"), "--num-train", "2", "--num-valid", "1", "--num-test", "1"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 images" in out and "bytes" in out


def test_small_clutter_keeps_base_names_with_smaller_more_numerous_objects(tmp_path: Path) -> None:
    """A shift of scale and clutter only: base's category names, smaller boxes, more objects
    per image, and unannotated distractors in the pixels."""
    kw = {"num_train": 12, "num_valid": 0, "num_test": 0, "seed": 3}
    base = json.loads((make_synthetic_coco(tmp_path / "b", style="base", **kw)
                       / "train" / ANN_FILE).read_text())
    small = json.loads((make_synthetic_coco(tmp_path / "s", style="small_clutter", **kw)
                        / "train" / ANN_FILE).read_text())
    assert [c["name"] for c in small["categories"]] == [c["name"] for c in base["categories"]]
    def mean_side(coco: dict) -> float:
        return float(np.mean([max(a["bbox"][2:]) for a in coco["annotations"]]))

    assert mean_side(small) < mean_side(base) / 1.5
    assert len(small["annotations"]) / 12 >= 3 > len(base["annotations"]) / 12
