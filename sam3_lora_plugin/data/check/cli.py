"""``python -m sam3_lora_plugin.data.check PATH``: print the report; exit 1 on errors."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..synthetic import ANN_FILE
from .dataset import check_coco, check_dataset

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see ``--help``."""
    p = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.data.check",
        description="Check a COCO dataset for SAM3 fine-tuning: missing/unreadable images, size mismatches, "
                    "broken or XYXY boxes, invalid segmentations, unknown or duplicate ids, empty splits, "
                    "unused or code-like category names.",
        epilog="PATH may be a COCO JSON file, a split folder holding _annotations.coco.json, or a dataset "
               "root with train/ valid/ test/ split folders. Exit code: 1 if any error, else 0 "
               "(warnings are printed but do not fail); 2 if PATH does not exist.",
    )
    p.add_argument("path", metavar="PATH", help="JSON file, split folder, or dataset root")
    p.add_argument("--image-dir", default=None, help="folder file_name is relative to (default: the JSON's folder)")
    p.add_argument("--no-images", action="store_true", help="skip opening image files (JSON checks only)")
    p.add_argument("--max-examples", type=int, default=5, help="offenders listed per problem (default 5)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(a.path).expanduser()
    if not path.exists():
        p.exit(2, f"error: {a.path} does not exist. Fix: pass a COCO JSON file, a split folder holding "
                  f"{ANN_FILE}, or a dataset root with train/ valid/ test/ split folders\n")
    if a.image_dir is not None and not Path(a.image_dir).expanduser().is_dir():
        p.exit(2, f"error: --image-dir {a.image_dir} is not a folder. Fix: pass the folder the JSON's file_name "
                  f"entries are relative to, or leave it out (default: the JSON's folder)\n")
    opts = dict(check_images=not a.no_images, max_examples=a.max_examples)
    if path.is_dir() and not (path / ANN_FILE).is_file():
        report = check_dataset(path, **opts)
    else:
        report = check_coco(path / ANN_FILE if path.is_dir() else path, a.image_dir, **opts)
    print(report.format())
    return 0 if report.ok else 1
