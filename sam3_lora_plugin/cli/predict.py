"""``python -m sam3_lora_plugin.predict``: text-prompted detection + segmentation on images
with SAM3's own ``Sam3Processor``, with a LoRA adapter or a merged checkpoint.

Writes, under ``--out``:

* ``predictions.coco.json``: COCO results (``image_id``, ``category_id``, ``bbox`` XYWH in
  pixels, ``score``, ``segmentation`` RLE, ``area``), one category per prompt;
* ``images.coco.json``: the images and categories those ids refer to (with ``--coco-gt``
  the ids are the ground truth's instead), so ``COCO(...).loadRes(...)`` and COCOeval work;
* ``overlays/<image>.png``: masks, boxes and ``prompt score`` labels.

Example::

    python -m sam3_lora_plugin.predict --images data/valid/*.jpg --prompts "red cup,blue plate" \\
        --checkpoint sam3.pt --adapter runs/coco_box/adapter --out preds/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

# Modules that pull in torch, sam3 or Hydra are imported inside the functions that need
# them, so that `--help` and a bad argument answer at once.

__all__ = ["build_parser", "main", "predict_images", "resolve_categories"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

_EPILOG = """\
model (pick one base):
  --checkpoint sam3.pt         real SAM3 weights (stock builder on a GPU; same module tree on CPU)
  (neither)                    download facebook/sam3 from the HF hub (gated: request access, `hf auth login`)
  --size tiny --seed 0         the random tiny test model (CPU smoke runs; meaningless predictions)
then optionally --adapter DIR (LoRA adapter from training), or give a merged checkpoint
(`python -m sam3_lora_plugin.adapters merge`) as --merged FILE instead of --checkpoint.

Prompts are the categories: --prompts "a,b" gives category ids 1, 2 in that order. With
--coco-gt ANN.json, image and category ids are the file's (prompts default to its category
names), so the results can be evaluated against it.
"""


class _Progress:
    """tqdm over the images when installed, else one line per image."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="img", desc="predict")
        except ImportError:
            self._bar, self._n, self._total = None, 0, total

    def update(self, name: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(name[-30:], refresh=False)
            self._bar.update(1)
        else:
            self._n += 1
            print(f"[{self._n}/{self._total}] {name}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.predict",
        description="Detect and segment objects named by text prompts with SAM3 (plus a LoRA adapter), "
                    "and write COCO results JSON and PNG overlays.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", nargs="+", required=True, metavar="PATH",
                   help="image files and/or folders (their images, sorted)")
    p.add_argument("--prompts", default=None,
                   help='comma-separated text prompts, e.g. "red cup,blue plate" (default with --coco-gt: '
                        "its category names)")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--checkpoint", default=None, help="stock-layout SAM3 checkpoint (sam3.pt)")
    base.add_argument("--merged", default=None, help="a merged checkpoint (base + adapter); no --adapter")
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="model size (default full)")
    p.add_argument("--seed", type=int, default=0, help="init seed of a tiny model without checkpoint")
    p.add_argument("--adapter", default=None, help="LoRA adapter directory to apply")
    p.add_argument("--no-check-base", action="store_true",
                   help="apply the adapter even if it was trained on other base weights")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score (default 0.5)")
    p.add_argument("--resolution", type=int, default=None,
                   help="input resolution (default: SAM3's 1008; 112 for --size tiny)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--coco-gt", default=None, help="COCO JSON whose image/category ids the results use")
    p.add_argument("--no-overlays", action="store_true", help="skip the PNG overlays")
    p.add_argument("--overlay-min-side", type=int, default=512, metavar="PX",
                   help="upscale smaller images in the overlays (integer factor, nearest "
                        "neighbour) so labels stay legible; 0 keeps every image's size (default 512)")
    return p


def _image_paths(items: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"Image path {item!r} does not exist. Fix: pass image files or folders.")
    if not paths:
        raise FileNotFoundError(f"No images found in {list(items)} (looked for {sorted(_IMAGE_SUFFIXES)}).")
    return paths


def resolve_categories(prompts: Optional[str], coco_gt: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{"id", "name"}]``, one per prompt, in prompt order.

    Without ``coco_gt`` the ids are 1..N. With it, each prompt must be one of its category
    names (case-insensitive) and gets that category's id; no prompts means all of them.

    Raises:
        ValueError: no prompts, duplicate prompts, or a prompt that is not a GT category.
    """
    names = [s.strip() for s in (prompts or "").split(",") if s.strip()]
    if coco_gt is None:
        if not names:
            raise ValueError('No prompts. Fix: pass --prompts "name one,name two".')
        cats = [{"id": i, "name": n} for i, n in enumerate(names, 1)]
    else:
        by_name = {c["name"].strip().lower(): c for c in coco_gt["categories"]}
        if not names:
            return [{"id": c["id"], "name": c["name"]} for c in coco_gt["categories"]]
        unknown = [n for n in names if n.lower() not in by_name]
        if unknown:
            raise ValueError(f"Prompts {unknown} are not categories of --coco-gt "
                             f"({sorted(c['name'] for c in coco_gt['categories'])}).")
        cats = [{"id": by_name[n.lower()]["id"], "name": n} for n in names]
    if len({c["name"].lower() for c in cats}) != len(cats):
        raise ValueError(f"Duplicate prompts in {names}.")
    return cats


def predict_images(predictor: Any, image_paths: Sequence[Path], categories: Sequence[dict[str, Any]],
                   out_dir: str, *, coco_gt: Optional[dict[str, Any]] = None,
                   overlays: bool = True, overlay_min_side: int = 512) -> dict[str, Any]:
    """Predict every image, write the results, image index and overlays.

    Args:
        predictor: A ``sam3_lora_plugin.inference.Sam3TextPredictor``.
        image_paths: The images.
        categories: ``resolve_categories``'s output (prompt text = name).
        out_dir: Output directory (created).
        coco_gt: A COCO dict whose image ids to use (matched by file name).
        overlays: Write ``overlays/<stem>.png``.
        overlay_min_side: ``draw_overlay``'s ``min_side`` (small images are upscaled).

    Returns:
        ``{"results": path, "images": path, "overlays": [paths], "num_detections": n}``.
    """
    from PIL import Image

    from sam3_lora_plugin.adapters.outputs import atomic_path, write_text_atomic
    from sam3_lora_plugin.inference import draw_overlay, get_image_index, to_coco_results

    check_prediction_dir(out_dir)

    out = Path(out_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    gt_ids = {Path(im["file_name"]).name: im["id"] for im in (coco_gt or {}).get("images", [])}
    prompts = [c["name"] for c in categories]
    cat_ids = [c["id"] for c in categories]
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    written: list[str] = []
    progress = _Progress(len(image_paths))
    try:
        for k, path in enumerate(image_paths, 1):
            with Image.open(path) as f:
                image = f.convert("RGB")
            if coco_gt is not None and path.name not in gt_ids:
                raise ValueError(f"{path} is not an image of --coco-gt (no file_name {path.name!r}).")
            image_id = gt_ids.get(path.name, k)
            images.append({"id": image_id, "file_name": str(path), "width": image.width, "height": image.height})
            detections = predictor.predict(image, prompts)
            results += to_coco_results(detections, image_id, cat_ids)
            if overlays:
                target = out / "overlays" / f"{path.stem}.png"
                with atomic_path(str(target)) as tmp:
                    draw_overlay(image, detections, overlay_min_side).save(tmp, format="PNG")
                written.append(str(target))
            progress.update(path.name)
    finally:
        progress.close()
    res_path, index_path = out / "predictions.coco.json", out / "images.coco.json"
    write_text_atomic(str(res_path), json.dumps(results))
    write_text_atomic(str(index_path), json.dumps(get_image_index(images, categories), indent=1))
    return {"results": str(res_path), "images": str(index_path), "overlays": written,
            "num_detections": len(results)}


def check_prediction_dir(out_dir: str) -> None:
    """Refuse an ``--out`` that holds anything but an earlier run's predictions."""
    from sam3_lora_plugin.adapters.outputs import check_output_dir

    check_output_dir(out_dir, owned=("predictions.coco.json", "images.coco.json", "overlays"),
                     what="prediction directory")


def _check_arguments(args: argparse.Namespace) -> None:
    """Values argparse accepts but the model would not, named before anything is built."""
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold {args.threshold} is not a score; give a value between 0 "
                         "and 1, e.g. --threshold 0.5.")
    if args.resolution is not None and (args.resolution <= 0 or args.resolution % 14):
        raise ValueError(f"--resolution {args.resolution} must be a positive multiple of 14 "
                         "(SAM3's patch size), e.g. --resolution 1008.")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is an existing file; give a directory.")
    if args.overlay_min_side < 0:
        raise ValueError(f"--overlay-min-side {args.overlay_min_side} must be 0 or more.")


def _read_coco_gt(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--coco-gt {path!r} cannot be read as JSON ({e}). Pass a COCO "
                         "annotation file.") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise ValueError(f"--coco-gt {path!r} is not a COCO annotation file (no 'categories' "
                         "list).")
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code."""
    import logging

    from sam3_lora_plugin.adapters.io import AdapterFileError
    from sam3_lora_plugin.models.base_checkpoint import CheckpointError
    from sam3_lora_plugin.inference import Sam3TextPredictor, load_inference_model
    from sam3_lora_plugin.inference.model import check_inference_files

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.merged and args.adapter:
        build_parser().error("--merged already contains an adapter; drop --adapter (or use --checkpoint).")
    try:
        check_prediction_dir(args.out)  # before anything is loaded or written
        _check_arguments(args)
        coco_gt = _read_coco_gt(args.coco_gt) if args.coco_gt else None
        categories = resolve_categories(args.prompts, coco_gt)
        paths = _image_paths(args.images)
        # Every file is checked before the model is built (full SAM3: minutes on a CPU).
        check_inference_files(size=args.size, checkpoint=args.merged or args.checkpoint,
                              adapter=args.adapter, resolution=args.resolution)
        loaded = load_inference_model(size=args.size, checkpoint=args.merged or args.checkpoint,
                                      adapter=args.adapter, seed=args.seed, resolution=args.resolution,
                                      device=args.device, check_base=not args.no_check_base)
        print(f"Model: {loaded.description}; {loaded.resolution} px on {loaded.device}; prompts: "
              + ", ".join(f"{c['name']} -> category {c['id']}" for c in categories), flush=True)
        summary = predict_images(Sam3TextPredictor(loaded, threshold=args.threshold), paths, categories,
                                 args.out, coco_gt=coco_gt, overlays=not args.no_overlays,
                                 overlay_min_side=args.overlay_min_side)
    except (ValueError, OSError, CheckpointError, AdapterFileError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"{summary['num_detections']} detections (score > {args.threshold}) on {len(paths)} images\n"
          f"  results: {summary['results']}\n  images:  {summary['images']}\n"
          f"  overlays: {os.path.join(args.out, 'overlays')} ({len(summary['overlays'])} PNG)")
    return 0
