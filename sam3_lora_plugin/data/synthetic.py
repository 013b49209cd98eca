"""Deterministic synthetic COCO dataset laid out like a Roboflow COCO export.

Layout under ``root``: ``{train,valid,test}/_annotations.coco.json`` with the
JPEG images beside each JSON, plus a ``.complete`` marker holding a parameter
hash. Used by the CPU smoke fine-tune and the tests.

CLI: ``python -m sam3_lora_plugin.data.synthetic --out DIR [--style shifted]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

DATASET_VERSION = 1
SMOKE_DIRNAME = f"smoke_coco_v{DATASET_VERSION}"
MARKER = ".complete"
ANN_FILE = "_annotations.coco.json"
SPLITS = ("train", "valid", "test")

# style -> (background kind, background RGB, [(category name, shape, RGB), ...][, options])
# options (optional 4th element, defaults in LAYOUT_DEFAULTS): object radius range as a
# fraction of the side, object count range [lo, hi), unannotated distractor blobs.
STYLES: dict[str, tuple[Any, ...]] = {
    "base": ("plain", (128, 128, 128), [
        ("red circle", "circle", (205, 40, 40)),
        ("blue square", "square", (40, 70, 210)),
        ("green triangle", "triangle", (40, 170, 60)),
    ]),
    "shifted": ("stripes", (45, 60, 75), [
        ("orange hexagon", "hexagon", (245, 140, 30)),
        ("purple diamond", "diamond", (150, 60, 190)),
        ("yellow star", "star", (235, 215, 40)),
    ]),
    # base's categories and names, but small, many, and among unannotated clutter
    "small_clutter": ("plain", (128, 128, 128), [
        ("red circle", "circle", (205, 40, 40)),
        ("blue square", "square", (40, 70, 210)),
        ("green triangle", "triangle", (40, 170, 60)),
    ], {"radius": (0.05, 0.09), "objects": (3, 9), "distractors": 8}),
}
LAYOUT_DEFAULTS: dict[str, Any] = {"radius": (0.09, 0.18), "objects": (1, 5), "distractors": 0}


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (N, 2) of a shape inscribed in the unit circle."""
    if shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    if shape == "diamond":
        return np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])
    n, start = {"circle": (24, 0.0), "square": (4, np.pi / 4),
                "triangle": (3, -np.pi / 2), "hexagon": (6, 0.0)}[shape]
    ang = start + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(ang), np.sin(ang)], 1)


def _background(rng: np.random.Generator, kind: str, rgb: tuple[int, int, int], size: int) -> np.ndarray:
    base = np.asarray(rgb, np.float32) + rng.uniform(-12, 12, 3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if kind == "stripes":
        yy, xx = np.mgrid[0:size, 0:size]
        period, phase = rng.uniform(9, 16), rng.uniform(0, 2 * np.pi)
        img += (18 * np.sin((xx + yy) * 2 * np.pi / period + phase))[..., None]
        img += np.linspace(-15, 15, size, dtype=np.float32)[:, None, None]
    return img + rng.normal(0, 5, img.shape)


def _draw_distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, n: int) -> None:
    """``n`` unannotated clutter blobs: muted ellipses and strokes (drawn under the objects)."""
    for _ in range(n):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.02, 0.07, 2) * size
        muted = (rng.uniform(70, 190, 3) * 0.5 + 64).astype(int)
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        if rng.random() < 0.5:
            draw.ellipse(box, fill=tuple(int(c) for c in muted))
        else:
            draw.line(box, fill=tuple(int(c) for c in muted), width=int(rng.integers(2, 5)))


def _make_image(rng: np.random.Generator, style: str, size: int, cat_ids: list[int]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one image; ``cat_ids`` seeds the categories of its first objects."""
    from pycocotools import mask as mask_utils  # only needed while generating

    kind, bg, cats, *rest = STYLES[style]
    layout = {**LAYOUT_DEFAULTS, **(rest[0] if rest else {})}
    n_obj = int(rng.integers(*layout["objects"]))
    img = Image.fromarray(np.clip(_background(rng, kind, bg, size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    _draw_distractors(draw, rng, size, int(layout["distractors"]))
    placed: list[tuple[float, float, float]] = []
    anns: list[dict[str, Any]] = []
    for k in range(n_obj):
        r = float(rng.uniform(*layout["radius"]) * size)
        for _ in range(100):
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            if all(np.hypot(cx - px, cy - py) >= r + pr + 2 for px, py, pr in placed):
                break
        else:
            break  # image is full; keep fewer objects
        placed.append((cx, cy, r))
        cat = cat_ids[k] if k < len(cat_ids) else int(rng.integers(1, len(cats) + 1))
        _, shape, rgb = cats[cat - 1]
        theta = 0.0 if shape == "circle" else float(rng.uniform(-0.26, 0.26))
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        poly = np.round(_unit_polygon(shape) @ rot.T * r + [cx, cy], 2)
        colour = tuple(int(c) for c in np.clip(np.asarray(rgb) + rng.integers(-20, 21, 3), 0, 255))
        draw.polygon([tuple(p) for p in poly.tolist()], fill=colour)
        flat = [float(v) for v in poly.reshape(-1)]
        rle = mask_utils.merge(mask_utils.frPyObjects([flat], size, size))
        anns.append({"category_id": cat, "segmentation": [flat], "iscrowd": 0,
                     "area": float(mask_utils.area(rle)),  # bbox/area of the rasterised polygon mask
                     "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    arr = np.asarray(img, np.float32) + rng.normal(0, 3, (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8), anns


def _write_split(out: Path, split: str, n: int, rng: np.random.Generator, size: int, style: str) -> None:
    cats = STYLES[style][2]
    out.mkdir(parents=True)
    images, annotations = [], []
    pending = list(range(1, len(cats) + 1))  # guarantee every category appears
    for i in range(n):
        fname = f"{split}_{i:04d}.jpg"
        arr, anns = _make_image(rng, style, size, pending)
        pending = pending[len(anns):]
        Image.fromarray(arr).save(out / fname, format="JPEG", quality=90)
        images.append({"id": i + 1, "file_name": fname, "width": size, "height": size, "license": 1})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **a})
    coco = {
        "info": {"description": f"sam3_lora_plugin synthetic ({style}) v{DATASET_VERSION}", "version": str(DATASET_VERSION)},
        "licenses": [{"id": 1, "name": "CC0", "url": ""}],
        "categories": [{"id": j + 1, "name": name, "supercategory": "shape"} for j, (name, _, _) in enumerate(cats)],
        "images": images,
        "annotations": annotations,
    }
    (out / ANN_FILE).write_text(json.dumps(coco, indent=1))


def _read_marker(root: Path) -> str | None:
    try:
        return json.loads((root / MARKER).read_text())["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def make_synthetic_coco(root: str | os.PathLike, *, num_train: int = 16, num_valid: int = 8, num_test: int = 8,
                        image_size: int = 112, seed: int = 0, style: str = "base") -> Path:
    """Write a deterministic synthetic Roboflow-style COCO dataset.

    Generation happens in a temporary sibling directory that is renamed into
    place, so concurrent callers (e.g. DDP ranks) are safe: the loser of the
    rename race returns the winner's dataset.

    Args:
        root: Destination directory (must not exist, be empty, or hold a
            complete dataset made with identical parameters).
        num_train: Number of train images.
        num_valid: Number of valid images.
        num_test: Number of test images.
        image_size: Side length in pixels of the square images.
        seed: Seed for ``numpy.random.default_rng``; same seed gives identical output.
        style: a key of :data:`STYLES`: ``"base"`` (red circle / blue square / green
            triangle on grey), ``"shifted"`` (orange hexagon / purple diamond / yellow star
            on stripes) or ``"small_clutter"`` (base's categories, small and many, among
            unannotated clutter). Styles added to ``STYLES`` at run time work too.

    Returns:
        The dataset root as a ``pathlib.Path``.

    Raises:
        ValueError: On bad arguments, or if ``root`` exists with other content.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {sorted(STYLES)}")
    counts = {"train": int(num_train), "valid": int(num_valid), "test": int(num_test)}
    if min(counts.values()) < 0 or image_size < 32:
        raise ValueError(f"image counts must be >= 0 and image_size >= 32, got {counts} and {image_size}; "
                         f"pass --num-train/--num-valid/--num-test >= 0 and --image-size >= 32")
    root = Path(root).expanduser().absolute()
    params = {"version": DATASET_VERSION, "image_size": int(image_size), "seed": int(seed), "style": style,
              **{f"num_{k}": v for k, v in counts.items()}}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()

    def check_existing() -> bool:
        if not root.exists():
            return False
        if _read_marker(root) == digest:
            return True
        if root.is_dir() and not any(root.iterdir()):
            return False  # empty dir: fill it
        raise ValueError(
            f"{root} already exists but does not hold a complete synthetic dataset with parameters {params}. "
            f"Delete it (rm -rf '{root}') or pass a different directory.")

    if check_existing():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for idx, split in enumerate(SPLITS):
            rng = np.random.default_rng([int(seed), idx])
            _write_split(tmp / split, split, counts[split], rng, int(image_size), style)
        (tmp / MARKER).write_text(json.dumps({"hash": digest, "params": params}, sort_keys=True))
        try:
            os.replace(tmp, root)  # atomic; succeeds onto a missing or empty dir
        except OSError:
            if check_existing():  # lost the race to an identical writer
                return root
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def get_smoke_dataset_root(cache_dir: str | None = None) -> str:
    """Return the default smoke dataset, generating it on first use.

    Args:
        cache_dir: Cache directory; defaults to ``$SAM3_LORA_CACHE`` or
            ``~/.cache/sam3_lora_plugin``.

    Returns:
        Path (str) of ``<cache_dir>/smoke_coco_v<N>``.
    """
    base = cache_dir or os.environ.get("SAM3_LORA_CACHE") or os.path.join("~", ".cache", "sam3_lora_plugin")
    return str(make_synthetic_coco(Path(base).expanduser() / SMOKE_DIRNAME))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see ``--help``."""
    p = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.data.synthetic",
        description="Write a deterministic synthetic COCO dataset in Roboflow layout "
                    "(train/valid/test with _annotations.coco.json beside the JPEG images).")
    p.add_argument("--out", required=True, help="destination directory (must not exist, or be empty)")
    p.add_argument("--num-train", type=int, default=16, help="train images (default 16)")
    p.add_argument("--num-valid", type=int, default=8, help="valid images (default 8)")
    p.add_argument("--num-test", type=int, default=8, help="test images (default 8)")
    p.add_argument("--image-size", type=int, default=112, help="square image side in pixels (default 112)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--style", choices=sorted(STYLES), default="base",
                   help="base: red circle/blue square/green triangle on grey; "
                        "shifted: orange hexagon/purple diamond/yellow star on stripes; "
                        "small_clutter: base's categories, small, among clutter")
    a = p.parse_args(argv)
    try:
        root = make_synthetic_coco(a.out, num_train=a.num_train, num_valid=a.num_valid, num_test=a.num_test,
                                   image_size=a.image_size, seed=a.seed, style=a.style)
    except ValueError as exc:
        p.exit(2, f"error: {exc}\n")
    except OSError as exc:
        p.exit(2, f"error: cannot write {exc.filename or a.out}: {exc.strerror or exc}. Fix: pass an --out folder "
                  f"you may write to\n")
    print(f"synthetic COCO dataset at {root}")
    for split in SPLITS:
        coco = json.loads((root / split / ANN_FILE).read_text())
        print(f"  {split}: {len(coco['images'])} images, {len(coco['annotations'])} annotations")
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"  total size: {total} bytes")
    return 0


def get_smoke_split_path(split: str, filename: str = "", cache_dir: str | None = None) -> str:
    """Path of ``<smoke dataset>/<split>/<filename>``, generating the dataset on first use.

    Meant for configs, as a nested ``_target_`` (SAM3's own configs compute
    ``ann_file`` the same way)::

        ann_file: {_target_: sam3_lora_plugin.data.get_smoke_split_path,
                   split: train, filename: _annotations.coco.json}
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    path = os.path.join(get_smoke_dataset_root(cache_dir), split, filename)
    return path if filename else path.rstrip(os.sep) + os.sep


def get_synthetic_split_path(split: str, filename: str = "", *, style: str = "base",
                             num_train: int = 16, num_valid: int = 8, num_test: int = 8,
                             image_size: int = 112, seed: int = 0,
                             cache_dir: str | None = None) -> str:
    """Like ``get_smoke_split_path``, for any ``make_synthetic_coco`` dataset: generated on
    first use into ``<cache>/synthetic_<style>_<hash of the arguments>``.

    For configs (the ``synthetic_shift`` dataset block)::

        ann_file: {_target_: sam3_lora_plugin.data.get_synthetic_split_path, split: train,
                   filename: _annotations.coco.json, style: shifted, num_train: 256}
    """
    if split not in SPLITS:
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    params = {"style": style, "num_train": num_train, "num_valid": num_valid, "num_test": num_test,
              "image_size": image_size, "seed": seed}
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    base = cache_dir or os.environ.get("SAM3_LORA_CACHE") or os.path.join("~", ".cache", "sam3_lora_plugin")
    root = make_synthetic_coco(Path(base).expanduser() / f"synthetic_{style}_{tag}", **params)
    path = os.path.join(str(root), split, filename)
    return path if filename else path.rstrip(os.sep) + os.sep


if __name__ == "__main__":
    raise SystemExit(main())

