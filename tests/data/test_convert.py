"""Tests for the LabelMe / VOC / YOLO / mask -> COCO converters.

Each test writes a tiny hand-made export into tmp_path, converts it, reads the result
back with pycocotools and compares against hand-computed boxes, areas and masks.
"""

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sam3_lora_plugin.data.check import check_dataset
from sam3_lora_plugin.data.convert import convert_labelme, convert_masks, convert_voc, convert_yolo
from sam3_lora_plugin.data.convert.__main__ import main
from sam3_lora_plugin.data.convert.geometry import clip_polygon, mask_to_polygons, polygons_to_rle

ANN = "_annotations.coco.json"


def _image(path: Path, w: int, h: int, fmt: str = "PNG", exif_orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (w, h), (90, 120, 150))
    if exif_orientation is None:
        im.save(path, format=fmt)
    else:
        exif = im.getexif()
        exif[0x0112] = exif_orientation
        im.save(path, format=fmt, exif=exif.tobytes())
    return path


def _anns_by_cat(coco: COCO) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for a in coco.loadAnns(coco.getAnnIds()):
        out.setdefault(coco.cats[a["category_id"]]["name"], []).append(a)
    return out


def _assert_passes_check(root: Path) -> None:
    report = check_dataset(root)
    assert not report.errors, report.format()


# --------------------------------------------------------------------------- geometry


def test_clip_polygon_exact_intersection() -> None:
    # Diamond centred on the right border: only its left half (a triangle) is inside.
    diamond = np.array([[40, 5], [50, 15], [40, 25], [30, 15]], float)
    inside = clip_polygon(diamond, 40, 30)
    assert inside[:, 0].max() == 40 and inside[:, 0].min() == 30
    x, y = inside[:, 0], inside[:, 1]
    assert 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) == pytest.approx(100.0)
    assert len(clip_polygon(np.array([[50, 5], [60, 5], [55, 9]]), 40, 30)) == 0
    square = np.array([[1, 1], [5, 1], [5, 5], [1, 5]], float)
    np.testing.assert_array_equal(clip_polygon(square, 40, 30), square)


def test_mask_to_polygons_is_pixel_exact() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = np.zeros((24, 30), np.uint8)
        y, x = rng.integers(2, 20), rng.integers(2, 26)
        mask[y - 2:y + 3, x - 2:x + 2] = 1
        mask[rng.integers(0, 24), rng.integers(0, 30)] = 1  # an isolated pixel
        polys = mask_to_polygons(mask)
        decoded = mask_utils.decode(polygons_to_rle(polys, 24, 30))
        np.testing.assert_array_equal(decoded, mask)
    assert mask_to_polygons(np.zeros((5, 5))) == []


# --------------------------------------------------------------------------- LabelMe


def _labelme(folder: Path, name: str, shapes: list[dict], size: tuple[int, int], *, write_image: bool = True,
             declared: tuple[int, int] | None = None, embed: bool = False) -> None:
    w, h = size
    image = folder / f"{name}.png"
    doc = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": image.name, "imageData": None,
           "imageWidth": (declared or size)[0], "imageHeight": (declared or size)[1]}
    if write_image:
        _image(image, w, h)
    if embed:
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, format="PNG")
        doc["imageData"] = base64.b64encode(buf.getvalue()).decode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(doc))


def _shape(label: str, kind: str, points: list, group_id: int | None = None) -> dict:
    return {"label": label, "points": points, "shape_type": kind, "group_id": group_id, "flags": {}}


def test_labelme_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "labelme"
    _labelme(src, "a", [
        _shape("red car", "polygon", [[2, 2], [12, 2], [12, 10], [2, 10]]),
        _shape("person", "rectangle", [[30, 20], [5, 25]]),  # corners in any order
        _shape("kite", "polygon", [[40, 5], [50, 15], [40, 25], [30, 15]]),  # rotated, half outside
        _shape("kite", "polygon", [[50, 5], [60, 5], [55, 9]]),  # fully outside: dropped
        _shape("person", "rectangle", [[7, 3], [7, 9]]),  # zero width: dropped
        _shape("ball", "point", [[20, 15]]),  # no area: skipped
        _shape("wheel", "polygon", [[20, 20], [24, 20], [24, 24], [20, 24]], group_id=1),
        _shape("wheel", "polygon", [[26, 20], [28, 20], [28, 22], [26, 22]], group_id=1),
    ], (40, 30), declared=(41, 30))
    _labelme(src, "b", [_shape("person", "rectangle", [[0, 0], [8, 6]])], (16, 12), write_image=False, embed=True)

    summary = convert_labelme(src, tmp_path / "out")
    coco = COCO(str(tmp_path / "out" / "train" / ANN))
    assert summary.splits == {"train": (2, 5)} and summary.images == 2 and summary.annotations == 5
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["kite", "person", "red car", "wheel"]
    assert [c["id"] for c in coco.dataset["categories"]] == [1, 2, 3, 4]
    anns = _anns_by_cat(coco)
    car = anns["red car"][0]
    assert car["bbox"] == [2.0, 2.0, 10.0, 8.0] and car["area"] == 80.0
    assert coco.annToMask(car).sum() == 80
    people = sorted(anns["person"], key=lambda a: a["image_id"])
    assert people[0]["bbox"] == [5.0, 20.0, 25.0, 5.0] and people[0]["area"] == 125.0
    assert people[0]["segmentation"] == []
    assert people[1]["bbox"] == [0.0, 0.0, 8.0, 6.0]
    kite = anns["kite"][0]
    xs = np.asarray(kite["segmentation"][0])[0::2]
    assert xs.max() == 40 and xs.min() == 30  # clipped to the image, not clamped
    assert kite["area"] == pytest.approx(100, abs=12) and kite["area"] == coco.annToMask(kite).sum()
    np.testing.assert_allclose(kite["bbox"], [30, 5, 10, 20], atol=1)
    wheel = anns["wheel"]
    assert len(wheel) == 1 and len(wheel[0]["segmentation"]) == 2 and wheel[0]["area"] == 16 + 4
    assert {(im["file_name"], im["width"], im["height"]) for im in coco.dataset["images"]} == \
        {("a.png", 40, 30), ("b.png", 16, 12)}
    text = "\n".join(summary.warnings)
    assert "type 'point' skipped (no area: not an object mask or box): 1 (first: a.json:ball)" in text
    # a.json: 7 objects (the two "wheel" polygons share a group id: one object), b.json: 1
    assert summary.objects_line == "8 objects in, 5 written, 3 skipped (1 point, 1 outside image, 1 zero size)"
    assert str(summary).splitlines()[-1] == summary.objects_line
    assert "fewer than 3 points inside the image: 1" in text
    assert "no width or height" in text and "polygons clipped to the image bounds: 1" in text
    assert "different image size" in text and "41x30 vs 40x30" in text
    _assert_passes_check(tmp_path / "out")


def test_labelme_exif_rotated_image_written_upright(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _image(src / "p.jpg", 30, 20, fmt="JPEG", exif_orientation=6)  # displays as 20 wide, 30 high
    (src / "p.json").write_text(json.dumps({"shapes": [_shape("cup", "rectangle", [[1, 1], [19, 29]])],
                                            "imagePath": "p.jpg", "imageWidth": 20, "imageHeight": 30}))
    summary = convert_labelme(src, tmp_path / "out")
    with Image.open(tmp_path / "out" / "train" / "p.jpg") as im:
        assert im.size == (20, 30)
    coco = json.loads((tmp_path / "out" / "train" / ANN).read_text())
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (20, 30)
    assert coco["annotations"][0]["bbox"] == [1.0, 1.0, 18.0, 28.0]
    assert any("EXIF" in w for w in summary.warnings)
    _assert_passes_check(tmp_path / "out")


def test_labelme_unreadable_files_are_named_when_nothing_else_is_read(tmp_path: Path, capsys) -> None:
    """Only broken or foreign JSON in SRC: the error names the file and what is wrong (it
    used to say "no images found"); beside a good file they are skipped with a warning."""
    src = tmp_path / "lm"
    src.mkdir()
    (src / "a.json").write_text("{ broken")
    with pytest.raises(ValueError, match=r"lm/a\.json is not valid JSON \(.*\)\. Fix: repair or remove"):
        convert_labelme(src, tmp_path / "out")
    (src / "a.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"a\.json is not a LabelMe file \(no \"shapes\" list\)"):
        convert_labelme(src, tmp_path / "out")
    with pytest.raises(SystemExit) as exc:
        main(["labelme", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "a.json" in err and "Fix:" in err, err
    assert not (tmp_path / "out").exists()
    _labelme(src, "good", [_shape("cup", "rectangle", [[1, 1], [5, 5]])], (10, 10))
    summary = convert_labelme(src, tmp_path / "out")
    assert summary.splits == {"train": (1, 1)}
    assert any("not LabelMe annotations (skipped): 1 (first: a.json" in w for w in summary.warnings)


# --------------------------------------------------------------------------- VOC


def _voc_xml(path: Path, filename: str, size: tuple[int, int], objects: list[tuple]) -> None:
    objs = "".join(
        f"<object><name>{n}</name><truncated>{t}</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, t, d in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>VOC</folder><filename>{filename}</filename><size><width>{size[0]}"
                    f"</width><height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def _vocdevkit(root: Path) -> Path:
    _image(root / "JPEGImages" / "0001.jpg", 40, 30, fmt="JPEG")
    _image(root / "JPEGImages" / "0002.jpg", 20, 20, fmt="JPEG")
    _voc_xml(root / "Annotations" / "0001.xml", "0001.jpg", (40, 30), [
        ("dog", (1, 1, 10, 5), 0, 0),          # -> [0, 0, 10, 5]
        ("dog", (31, 11, 100, 20), 1, 0),      # runs off the right edge: clipped, truncated kept
        ("bicycle", (5, 5, 14, 24), 0, 1),     # difficult
    ])
    _voc_xml(root / "Annotations" / "0002.xml", "0002.jpg", (21, 20), [("bicycle", (2, 3, 11, 12), 0, 0)])
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("0001\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("0002\n")
    return root


def test_voc_round_trip(tmp_path: Path) -> None:
    summary = convert_voc(_vocdevkit(tmp_path / "VOC2012"), tmp_path / "out")
    assert summary.splits == {"train": (1, 3), "valid": (1, 1)}
    train = COCO(str(tmp_path / "out" / "train" / ANN))
    valid = COCO(str(tmp_path / "out" / "valid" / ANN))
    assert train.dataset["categories"] == valid.dataset["categories"]
    assert [c["name"] for c in train.dataset["categories"]] == ["bicycle", "dog"]
    dogs = sorted(_anns_by_cat(train)["dog"], key=lambda a: a["bbox"][0])
    assert dogs[0]["bbox"] == [0.0, 0.0, 10.0, 5.0] and dogs[0]["area"] == 50.0
    assert dogs[1]["bbox"] == [30.0, 10.0, 10.0, 10.0] and dogs[1]["truncated"] == 1
    bike = _anns_by_cat(train)["bicycle"][0]
    assert bike["difficult"] == 1 and bike["iscrowd"] == 0 and bike["bbox"] == [4.0, 4.0, 10.0, 20.0]
    assert _anns_by_cat(valid)["bicycle"][0]["bbox"] == [1.0, 2.0, 10.0, 10.0]
    text = "\n".join(summary.warnings)
    assert "boxes clipped to the image bounds: 1" in text and "different image size" in text
    _assert_passes_check(tmp_path / "out")


@pytest.mark.parametrize("mode, n_train, iscrowd", [("crowd", 3, 1), ("skip", 2, None)])
def test_voc_difficult_modes(tmp_path: Path, mode: str, n_train: int, iscrowd: int | None) -> None:
    summary = convert_voc(_vocdevkit(tmp_path / "VOC"), tmp_path / "out", difficult=mode)
    assert summary.splits["train"] == (1, n_train)
    bikes = _anns_by_cat(COCO(str(tmp_path / "out" / "train" / ANN))).get("bicycle", [])
    assert [a["iscrowd"] for a in bikes] == ([iscrowd] if iscrowd is not None else [])


def test_voc_flat_zero_based(tmp_path: Path) -> None:
    src = tmp_path / "labelimg"
    _image(src / "x.png", 20, 10)
    _voc_xml(src / "x.xml", "x.png", (20, 10), [("cone", (0, 0, 5, 4), 0, 0)])
    one_based = convert_voc(src, tmp_path / "a")
    assert any("--zero-based" in w for w in one_based.warnings)
    convert_voc(src, tmp_path / "b", zero_based=True, split_name="valid")
    coco = json.loads((tmp_path / "b" / "valid" / ANN).read_text())
    assert coco["annotations"][0]["bbox"] == [0.0, 0.0, 5.0, 4.0]


def test_voc_unreadable_files_are_named_when_nothing_else_is_read(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    (src / "Annotations").mkdir(parents=True)
    (src / "Annotations" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"Annotations/a\.xml is not valid XML \(no element found.*Fix: repair"):
        convert_voc(src, tmp_path / "out")
    (src / "Annotations" / "a.xml").write_text("<svg><rect/></svg>")
    with pytest.raises(ValueError, match=r"a\.xml is not a Pascal VOC annotation \(its root element is <svg>"):
        convert_voc(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- YOLO


def test_yolo_detection_roboflow_layout(tmp_path: Path) -> None:
    src = tmp_path / "yolo"
    (src).mkdir()
    (src / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['zebra', 'ant']\n")
    _image(src / "train" / "images" / "a.jpg", 40, 20, fmt="JPEG")
    _image(src / "train" / "images" / "neg.jpg", 40, 20, fmt="JPEG")
    (src / "train" / "labels").mkdir(parents=True)
    (src / "train" / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.5 0.5\n"      # [10, 5, 20, 10]
        "1 0.95 0.5 0.2 0.2\n"     # x 34..42 -> clipped to [34, 8, 6, 4]
        "0 0.5 0.5 0 0.1\n"        # zero width: dropped
        "5 0.5 0.5 0.1 0.1\n"      # unknown class: skipped
        "\n")
    (src / "train" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    _image(src / "valid" / "images" / "v.png", 10, 10)
    (src / "valid" / "labels").mkdir(parents=True)
    (src / "valid" / "labels" / "v.txt").write_text("1 0.5 0.5 1.0 1.0\n")

    summary = convert_yolo(src, tmp_path / "out")
    assert summary.splits == {"train": (2, 2), "valid": (1, 1)}
    train = COCO(str(tmp_path / "out" / "train" / ANN))
    assert [(c["id"], c["name"]) for c in train.dataset["categories"]] == [(1, "zebra"), (2, "ant")]
    by_cat = _anns_by_cat(train)
    assert by_cat["zebra"][0]["bbox"] == [10.0, 5.0, 20.0, 10.0] and by_cat["zebra"][0]["area"] == 200.0
    np.testing.assert_allclose(by_cat["ant"][0]["bbox"], [34, 8, 6, 4])
    valid = json.loads((tmp_path / "out" / "valid" / ANN).read_text())
    assert valid["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 10.0]
    text = "\n".join(summary.warnings)
    for expected in ("boxes clipped to the image bounds: 1", "no width or height (inside the image) dropped: 1",
                     "class index missing from the class names (skipped): 1", "label files without an image",
                     "images without a label file (kept, with no objects): 1"):
        assert expected in text, text
    _assert_passes_check(tmp_path / "out")


def test_yolo_segmentation_ultralytics_layout(tmp_path: Path) -> None:
    src = tmp_path / "ultra"
    (src).mkdir()
    (src / "classes.txt").write_text("class_0\nplate\n")
    for split in ("train", "val"):
        _image(src / "images" / split / f"{split}.png", 40, 40)
        (src / "labels" / split).mkdir(parents=True)
    (src / "labels" / "train" / "train.txt").write_text(
        "1 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n"   # square 10..30: area 400
        "0 0.5 0.5 1.5 0.5 1.5 1.0 0.5 1.0\n"           # half outside: clipped to 20..40 x 20..40
        "0 0.1 0.1 0.2 0.2\n")                          # a box among polygons
    (src / "labels" / "val" / "val.txt").write_text("1 1.1 0.1 1.3 0.1 1.2 0.3\n")  # fully outside

    summary = convert_yolo(src, tmp_path / "out", rename={"class_0": "bolt"})
    assert set(summary.splits) == {"train", "valid"} and summary.splits["valid"] == (1, 0)
    coco = COCO(str(tmp_path / "out" / "train" / ANN))
    assert [c["name"] for c in coco.dataset["categories"]] == ["bolt", "plate"]
    plate = _anns_by_cat(coco)["plate"][0]
    assert plate["bbox"] == [10.0, 10.0, 20.0, 20.0] and plate["area"] == 400.0
    assert coco.annToMask(plate).sum() == 400
    bolts = sorted(_anns_by_cat(coco)["bolt"], key=lambda a: a["area"])
    assert bolts[0]["bbox"] == pytest.approx([0.0, 0.0, 8.0, 8.0]) and bolts[0]["segmentation"] == []
    assert bolts[1]["bbox"] == [20.0, 20.0, 20.0, 20.0] and bolts[1]["area"] == 400.0
    assert max(bolts[1]["segmentation"][0]) == 40.0
    assert "polygons dropped: fewer than 3 points inside the image: 1" in "\n".join(summary.warnings)
    report = check_dataset(tmp_path / "out")
    assert [i.code for i in report.errors] == ["empty_split"]  # valid has no objects left


def test_yolo_code_like_names_warn(tmp_path: Path) -> None:
    src = tmp_path / "y"
    _image(src / "images" / "i.png", 8, 8)
    (src / "labels").mkdir(parents=True)
    (src / "labels" / "i.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.2 0.2\n")
    (src / "data.yaml").write_text("names: {0: c12, 1: obj1}\n")
    summary = convert_yolo(src, tmp_path / "out")
    line = next(w for w in summary.warnings if "look like codes" in w)
    assert "'c12'" in line and "'obj1'" in line and "--rename" in line


def test_yolo_without_class_names_is_an_error(tmp_path: Path, capsys) -> None:
    """Labels without data.yaml / classes.txt / obj.names: the indices would become the text
    prompts "0", "3"; the conversion fails and says how to name the classes (it used to
    exit 0)."""
    src = tmp_path / "y"
    _image(src / "images" / "i.png", 8, 8)
    (src / "labels").mkdir(parents=True)
    (src / "labels" / "i.txt").write_text("3 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"class names are missing: .* \(the labels use class indices 0, 3\)\. "
                                         r"Fix: add a data\.yaml with names: .* or pass --names FILE"):
        convert_yolo(src, tmp_path / "out")
    with pytest.raises(SystemExit) as exc:
        main(["yolo", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "classes.txt" in err, err
    assert not (tmp_path / "out").exists()
    names = tmp_path / "names.txt"
    names.write_text("bolt\nnut\nwasher\nscrew\n")
    assert main(["yolo", str(src), str(tmp_path / "out"), "--names", str(names), "--no-check"]) == 0
    coco = json.loads((tmp_path / "out" / "train" / ANN).read_text())
    assert [c["name"] for c in coco["categories"]] == ["bolt", "nut", "washer", "screw"]


# --------------------------------------------------------------------------- masks


def _save_mask(path: Path, mask: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint16 if mode == "I;16" else np.uint8)).save(path)


def test_masks_per_object_and_id_mask(tmp_path: Path) -> None:
    src = tmp_path / "m"
    _image(src / "images" / "a.png", 20, 16)
    first = np.zeros((16, 20), np.uint8)
    first[2:6, 3:9] = 255                                      # 4 x 6 block
    second = np.zeros((16, 20), np.uint8)
    second[8:15, 10:17] = 1
    second[10:13, 12:15] = 0                                   # with a hole: polygon fills it
    _save_mask(src / "masks" / "a" / "screw" / "0.png", first)
    _save_mask(src / "masks" / "a" / "washer" / "0.png", second)
    _image(src / "images" / "b.png", 12, 10)
    ids = np.zeros((10, 12), np.uint8)
    ids[0:3, 0:4], ids[5:9, 6:12], ids[9, 0] = 1, 2, 3
    _save_mask(src / "masks" / "b.png", ids)
    (src / "masks" / "b.json").write_text(json.dumps({"1": "screw", "2": "washer"}))

    summary = convert_masks(src, tmp_path / "out")
    coco = COCO(str(tmp_path / "out" / "train" / ANN))
    assert summary.splits == {"train": (2, 4)} and summary.categories == ["screw", "washer"]
    screw_a = next(a for a in coco.loadAnns(coco.getAnnIds()) if a["image_id"] == 1 and a["category_id"] == 1)
    np.testing.assert_array_equal(coco.annToMask(screw_a), first > 0)
    assert screw_a["bbox"] == [3.0, 2.0, 6.0, 4.0] and screw_a["area"] == 24.0
    washer_a = next(a for a in coco.loadAnns(coco.getAnnIds()) if a["image_id"] == 1 and a["category_id"] == 2)
    assert washer_a["area"] == 49 - 9 and coco.annToMask(washer_a).sum() == 49  # hole filled in the polygon
    b_anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[2])), key=lambda a: a["category_id"])
    assert [a["bbox"] for a in b_anns] == [[0.0, 0.0, 4.0, 3.0], [6.0, 5.0, 6.0, 4.0]]
    assert "id-mask values with no category" in "\n".join(summary.warnings)

    convert_masks(src, tmp_path / "rle", mask_format="rle")
    rle = COCO(str(tmp_path / "rle" / "train" / ANN))
    washer = next(a for a in rle.loadAnns(rle.getAnnIds()) if a["image_id"] == 1 and a["category_id"] == 2)
    np.testing.assert_array_equal(rle.annToMask(washer), second)  # RLE keeps the hole
    _assert_passes_check(tmp_path / "out")
    _assert_passes_check(tmp_path / "rle")


def test_masks_id_map_and_16bit(tmp_path: Path) -> None:
    src = tmp_path / "m"
    for split in ("train", "valid"):
        _image(src / split / "images" / "x.png", 8, 6)
        ids = np.zeros((6, 8), np.uint16)
        ids[1:3, 1:3], ids[3:6, 4:8] = 300, 301
        _save_mask(src / split / "masks" / "x.png", ids, mode="I;16")
    summary = convert_masks(src, tmp_path / "out", id_categories={300: "nut", 301: "nut"})
    assert summary.splits == {"train": (1, 2), "valid": (1, 2)} and summary.categories == ["nut"]
    coco = COCO(str(tmp_path / "out" / "valid" / ANN))
    assert sorted(a["area"] for a in coco.loadAnns(coco.getAnnIds())) == [4.0, 12.0]


# --------------------------------------------------------------------------- options and CLI


def test_categories_order_rename_merge(tmp_path: Path) -> None:
    src = tmp_path / "lm"
    _labelme(src, "a", [_shape(n, "rectangle", [[1, 1], [5, 5]]) for n in ("auto", "car", "truck", "tree")],
             (10, 10))
    summary = convert_labelme(src, tmp_path / "out", categories=["vehicle", "tree"],
                              rename={"auto": "vehicle", "car": "vehicle"})
    coco = COCO(str(tmp_path / "out" / "train" / ANN))
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == [(1, "vehicle"), (2, "tree")]
    assert sorted(a["category_id"] for a in coco.dataset["annotations"]) == [1, 1, 2]
    assert "not in the category list (skipped): 1 (first: 'truck')" in "\n".join(summary.warnings)


def test_refuses_non_empty_output_and_links(tmp_path: Path) -> None:
    src = tmp_path / "lm"
    _labelme(src, "a", [_shape("cup", "rectangle", [[1, 1], [5, 5]])], (10, 10))
    convert_labelme(src, tmp_path / "out", link="symlink")
    assert (tmp_path / "out" / "train" / "a.png").is_symlink()
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        convert_labelme(src, tmp_path / "out")
    convert_labelme(src, tmp_path / "out", link="hardlink", overwrite=True)
    out_image = tmp_path / "out" / "train" / "a.png"
    assert not out_image.is_symlink() and out_image.stat().st_ino == (src / "a.png").stat().st_ino


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "y"
    _image(src / "images" / "i.png", 8, 8)
    (src / "labels").mkdir(parents=True)
    (src / "labels" / "i.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (src / "classes.txt").write_text("0\n")
    rc = main(["yolo", str(src), str(tmp_path / "out"), "--rename", "0=traffic cone"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote 1 images, 1 annotations, 1 categories" in out
    assert "valid split missing" in out  # the check ran
    assert json.loads((tmp_path / "out" / "train" / ANN).read_text())["categories"][0]["name"] == "traffic cone"
    with pytest.raises(SystemExit) as exc:
        main(["voc", str(tmp_path / "missing"), str(tmp_path / "o2")])
    assert exc.value.code == 2 and "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    assert all(f in help_text for f in ("labelme", "voc", "yolo", "masks", "_annotations.coco.json"))


def test_labelme_split_folders_and_name_clash(tmp_path: Path) -> None:
    src = tmp_path / "lm"
    _labelme(src / "train" / "x", "img", [_shape("cup", "rectangle", [[1, 1], [5, 5]])], (10, 10))
    _labelme(src / "train" / "y", "img", [_shape("cup", "rectangle", [[2, 2], [6, 6]])], (10, 10))
    _labelme(src / "val", "v", [_shape("cup", "rectangle", [[0, 0], [3, 3]])], (10, 10))
    summary = convert_labelme(src, tmp_path / "out")
    assert summary.splits == {"train": (2, 2), "valid": (1, 1)}
    names = sorted(im["file_name"] for im in json.loads((tmp_path / "out" / "train" / ANN).read_text())["images"])
    assert names == ["img-1.png", "img.png"] and (tmp_path / "out" / "train" / "img-1.png").is_file()
    assert any("same file name" in w for w in summary.warnings)


def test_sam3_loader_reads_converted_dataset(tmp_path: Path) -> None:
    """SAM3's own dataset class turns the converted file into the expected prompts, boxes and masks."""
    dataset_mod = pytest.importorskip("sam3.train.data.sam3_image_dataset")
    from sam3.train.transforms.segmentation import DecodeRle

    src = tmp_path / "lm"
    _labelme(src, "a", [_shape("red car", "polygon", [[2, 2], [12, 2], [12, 10], [2, 10]]),
                        _shape("person", "rectangle", [[30, 20], [5, 25]])], (40, 30))
    convert_labelme(src, tmp_path / "out")
    split = tmp_path / "out" / "train"
    ds = dataset_mod.Sam3ImageDataset(img_folder=str(split), ann_file=str(split / ANN), transforms=[DecodeRle()],
                                      max_ann_per_img=100, multiplier=1, training=True, load_segmentation=True)
    datapoint = ds[0]
    assert sorted(q.query_text for q in datapoint.find_queries) == ["person", "red car"]
    objects = {tuple(round(float(v)) for v in o.bbox): o for o in datapoint.images[0].objects}
    assert set(objects) == {(2, 2, 12, 10), (5, 20, 30, 25)}  # XYXY pixels
    assert int(objects[(2, 2, 12, 10)].segment.sum()) == 80
    assert objects[(5, 20, 30, 25)].segment is None  # box-only: no mask target
