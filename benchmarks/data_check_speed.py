#!/usr/bin/env python
"""How long ``python -m sam3_lora_plugin.data.check`` takes on 10,000 small images.

Writes a COCO split of ``--images`` images (``--size`` px squares of noise, one box each)
per format in ``--formats``, then times, on the same files (page cache warm: one
untimed pass first), ``--repeats`` times each:

``json_only``
    ``check_coco(check_images=False)``: the JSON checks alone.
``header_only``
    ``check_coco`` with the end-of-file check switched off (``find_truncation``
    replaced by ``lambda im: None``): what the checker did before truncation was
    checked (plus, for PNG, no longer decoding every file for ``getexif``).
``check``
    ``check_coco`` as shipped: header, EXIF and the end-of-file check.
``full_decode``
    For reference: ``PIL.Image.open(path).load()`` of every image, what checking by
    decoding would cost.

Result: ``benchmarks/results/data_check_speed.json`` (medians, quartiles, per-image
microseconds, the machine). Usage: ``python benchmarks/data_check_speed.py
[--images 10000] [--formats JPEG,PNG] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from harness import machine_info, summarize_seconds, write_json
from sam3_lora_plugin.data.check import check_coco
from sam3_lora_plugin.data.check import images as image_checks

ANN = "_annotations.coco.json"
RESULTS = Path(__file__).resolve().parent / "results" / "data_check_speed.json"


def write_split(folder: Path, n: int, size: int, fmt: str, seed: int = 0) -> Path:
    """``n`` noise images of ``size`` px in ``fmt`` plus their COCO JSON; returns the JSON."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ext = {"JPEG": "jpg"}.get(fmt, fmt.lower())
    images, anns = [], []
    for k in range(1, n + 1):
        name = f"{k:06d}.{ext}"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / name, format=fmt)
        images.append({"id": k, "file_name": name, "width": size, "height": size})
        anns.append({"id": k, "image_id": k, "category_id": 1, "bbox": [4.0, 4.0, size / 2, size / 2],
                     "area": size * size / 4, "iscrowd": 0, "segmentation": []})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "speckled square"}]}
    (folder / ANN).write_text(json.dumps(coco))
    return folder / ANN


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm the page cache and the imports
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _full_decode(json_path: Path) -> None:
    for im in json.loads(json_path.read_text())["images"]:
        with Image.open(json_path.parent / im["file_name"]) as f:
            f.load()


def _header_only(json_path: Path) -> None:
    real = image_checks.find_truncation
    image_checks.find_truncation = lambda im: None
    try:
        check_coco(json_path, progress_every=0)
    finally:
        image_checks.find_truncation = real


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    p.add_argument("--formats", default="JPEG,PNG")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in a.formats.split(","):
            json_path = write_split(Path(tmp) / fmt, a.images, a.size, fmt)
            report = check_coco(json_path, progress_every=0)
            assert report.ok and not report.issues, report.format()
            runs = {
                "json_only": lambda: check_coco(json_path, check_images=False, progress_every=0),
                "header_only": lambda: _header_only(json_path),
                "check": lambda: check_coco(json_path, progress_every=0),
                "full_decode": lambda: _full_decode(json_path),
            }
            for name, fn in runs.items():
                stats = summarize_seconds(_time(fn, a.repeats))
                stats["us_per_image"] = 1e6 * stats["median_s"] / a.images
                rows.append({"format": fmt, "variant": name, **stats})
                print(f"{fmt:5} {name:12} median {stats['median_s']:7.3f} s  "
                      f"({stats['us_per_image']:6.1f} us/image, IQR {stats['iqr_s']:.3f} s)", flush=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "args": {k: str(v) for k, v in vars(a).items()}, "machine": machine_info(), "results": rows}
    write_json(a.out, result)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
