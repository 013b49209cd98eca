"""``python -m sam3_lora_plugin.data.convert {labelme,voc,yolo,masks} SRC OUT [options]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..check import check_dataset
from . import labelme, masks, voc, yolo
from .coco_writer import LINK_MODES, MASK_FORMATS, ConversionSummary

_DESCRIPTION = """\
Convert a LabelMe, Pascal VOC, YOLO or instance-mask dataset into the COCO layout that
SAM3's trainer and this project's configs read:

  OUT/train/_annotations.coco.json   + the train images beside it
  OUT/valid/_annotations.coco.json   + the valid images   (when the source has splits)
  OUT/test/_annotations.coco.json    + the test images

Source split folders named train/, valid/ or val/, test/ become those splits (val is
written as valid); a source without splits is written to OUT/<--split-name>.

OUT must be new, empty, or an earlier output of this converter (replaced as a whole, and
only with --overwrite); anything else in it is refused before anything is written.

Formats (see `... convert FORMAT --help` for each layout):
  labelme  LabelMe *.json (polygon, oriented_rectangle, circle, mask -> mask;
           rectangle -> box; point, line, linestrip skipped: no area)
  voc      Pascal VOC XML (Annotations/ + JPEGImages/ + ImageSets/Main, or XMLs beside
           images); <bndbox> -> box, <polygon> -> mask
  yolo     YOLO txt boxes or polygons, class names (required) from data.yaml,
           classes.txt or obj.names in SRC, or --names FILE; splits
           from data.yaml's train/val/test when given (any folder names), else
           Roboflow train/images + train/labels, Ultralytics images/train + labels/train
  masks    images/ plus per-object binary mask PNGs or one id-mask PNG per image

Always: image sizes are read from the image files; boxes and polygons are clipped to the
image (counted and reported), degenerate ones dropped; bbox is [x, y, width, height];
area comes from the mask for polygons/masks and is w*h for boxes. Category ids are 1..N
in --classes order (YOLO: the names order), else alphabetical. Category names are SAM3's
text prompts: code-like names (class_3, 0, c12) are reported; fix them with --rename.
Annotation files that cannot be read (invalid JSON/XML, not LabelMe/VOC) are skipped
with a warning; when no file can be read, the error names the first.
The result is checked as `python -m sam3_lora_plugin.data.check OUT` checks it (exit
code 1 on errors). The last line counts the source objects: "1,234 objects in, 1,230
written, 4 skipped (3 point, 1 line)"; every skip is also listed as a warning.
"""


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise argparse.ArgumentTypeError(f"{what} expects OLD=NEW, got {item!r}")
        out[old.strip()] = new.strip()
    return out


def _classes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text() if path.is_file() else value.replace(",", "\n")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _id_map(value: str | None) -> dict[int, str] | None:
    if value is None:
        return None
    path = Path(value)
    try:
        raw = json.loads(path.read_text()) if path.is_file() else _pairs(value.split(","), "--id-map")
        return {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError, argparse.ArgumentTypeError) as exc:
        raise ValueError(f"--id-map {value}: {exc}; pass a JSON file holding {{\"1\": \"cat\", \"2\": \"dog\"}} "
                         f"or pairs 1=cat,2=dog") from None


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser: one sub-command per source format."""
    p = argparse.ArgumentParser(prog="python -m sam3_lora_plugin.data.convert", description=_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, module in (("labelme", labelme), ("voc", voc), ("yolo", yolo), ("masks", masks)):
        s = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("src", metavar="SRC", help="source dataset folder")
        s.add_argument("out", metavar="OUT", help="output dataset root")
        s.add_argument("--split-name", default="train", help="split for a source without split folders "
                                                              "(default train)")
        s.add_argument("--rename", action="append", metavar="OLD=NEW",
                       help="rename a class (repeatable; several OLD to one NEW merges them)")
        s.add_argument("--link", choices=LINK_MODES, default="copy", help="how images get to OUT (default copy)")
        s.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in OUT (never other files)")
        s.add_argument("--no-check", action="store_true", help="skip checking the written dataset")
        if name != "yolo":
            s.add_argument("--classes", metavar="LIST_OR_FILE",
                           help="category order: comma list or file with one name per line; other labels "
                                "are skipped (default: all labels, alphabetical)")
    sub.choices["voc"].add_argument("--zero-based", action="store_true",
                                    help="coordinates are 0-based (default: VOC's 1-based pixels)")
    sub.choices["voc"].add_argument("--difficult", choices=voc.DIFFICULT_MODES, default="keep",
                                    help="difficult objects: keep (default), crowd (iscrowd=1), skip")
    sub.choices["yolo"].add_argument("--names", metavar="FILE", help="data.yaml or classes.txt (default: "
                                     "found in SRC)")
    sub.choices["masks"].add_argument("--category", help="category of masks without a category folder or id map")
    sub.choices["masks"].add_argument("--id-map", metavar="JSON_OR_PAIRS",
                                      help="id-mask value -> category for all images: JSON file or 1=cat,2=dog")
    sub.choices["masks"].add_argument("--mask-format", choices=MASK_FORMATS, default="polygon",
                                      help="polygon (default; fills holes) or rle (exact)")
    return p


def _run(a: argparse.Namespace) -> ConversionSummary:
    common = dict(split_name=a.split_name, rename=_pairs(a.rename, "--rename"), link=a.link, overwrite=a.overwrite)
    if a.format == "labelme":
        return labelme.convert_labelme(a.src, a.out, categories=_classes(a.classes), **common)
    if a.format == "voc":
        return voc.convert_voc(a.src, a.out, categories=_classes(a.classes), zero_based=a.zero_based,
                               difficult=a.difficult, **common)
    if a.format == "yolo":
        return yolo.convert_yolo(a.src, a.out, names_file=a.names, **common)
    return masks.convert_masks(a.src, a.out, categories=_classes(a.classes), default_category=a.category,
                               id_categories=_id_map(a.id_map), mask_format=a.mask_format, **common)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 1 when the written dataset fails the check."""
    p = build_parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # the summary is printed below
    try:
        summary = _run(a)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        p.exit(2, f"error: {exc}\n")
    except OSError as exc:
        p.exit(2, f"error: {exc.strerror or exc}: {exc.filename or a.src}. Fix: check that SRC can be read and "
                  f"OUT written by you\n")
    for line in summary.warnings:
        print(f"  warning: {line}")
    report = None if a.no_check else check_dataset(summary.out_dir)
    if report is not None and (report.errors or report.warnings):
        print(f"check of the written dataset:\n{report.format()}")
    print(summary)  # ends with "N objects in, W written, S skipped (by reason)"
    return 0 if report is None or report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
