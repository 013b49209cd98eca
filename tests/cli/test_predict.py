"""Tests for ``python -m sam3_lora_plugin.predict`` and ``sam3_lora_plugin.inference``.

The CLI runs in a subprocess (it enables the CPU fallbacks, which patch process globals);
the in-process test patches ``pin_memory`` for itself only (``sam3_cpu_patches``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sam3_lora_plugin.data import make_synthetic_coco
from sam3_lora_plugin.inference import PALETTE, InferenceModel, Sam3TextPredictor, load_inference_model
from sam3_lora_plugin.cli.predict import resolve_categories

ANN = "_annotations.coco.json"


def _palette_pixels(img: Image.Image) -> int:
    arr = np.asarray(img.convert("RGB"))
    return int(sum((arr == np.asarray(c, np.uint8)).all(-1).sum() for c in PALETTE))


def _longest_run(img: Image.Image, color) -> int:
    """Longest horizontal run of exactly ``color``: a drawn box edge, not noise."""
    hit = (np.asarray(img.convert("RGB")) == np.asarray(color, np.uint8)).all(-1)
    best = 0
    for row in hit:
        run = 0
        for v in row:
            run = run + 1 if v else 0
            best = max(best, run)
    return best


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("pred") / "ds", num_train=0, num_valid=2, num_test=0)


def test_cli_writes_coco_results_and_overlays_on_cpu(dataset, tmp_path):
    images = sorted((dataset / "valid").glob("*.jpg"))
    assert len(images) == 2
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "sam3_lora_plugin.predict", "--images", *map(str, images),
         "--prompts", "red circle,blue square", "--size", "tiny", "--seed", "0", "--threshold", "0.1",
         "--coco-gt", str(dataset / "valid" / ANN), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=""))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "red circle -> category 1, blue square -> category 2" in proc.stdout
    assert "2/2" in proc.stderr  # tqdm's bar over the images

    results = json.loads((out / "predictions.coco.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2}
    gt = COCO(str(dataset / "valid" / ANN))
    index = json.loads((out / "images.coco.json").read_text())
    assert sorted(im["id"] for im in index["images"]) == sorted(gt.getImgIds())
    assert [c["name"] for c in index["categories"]] == ["red circle", "blue square"]
    for coco in (gt, COCO(str(out / "images.coco.json"))):
        dt = coco.loadRes(str(out / "predictions.coco.json"))
        assert len(dt.getAnnIds()) == len(results)
    for r in results:
        w, h = gt.imgs[r["image_id"]]["width"], gt.imgs[r["image_id"]]["height"]
        x, y, bw, bh = r["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w + 0.01 and y + bh <= h + 0.01 and bw >= 0 and bh >= 0
        assert 0.1 < r["score"] <= 1
        assert mask_utils.decode(r["segmentation"]).shape == (h, w)

    for path in images:
        overlay = Image.open(out / "overlays" / f"{path.stem}.png")
        original = Image.open(path)
        # 112 px images are upscaled 5x (nearest) so labels stay legible (--overlay-min-side 512).
        assert overlay.size == (original.width * 5, original.height * 5)
        assert _palette_pixels(original) < 5
        mine = [r for r in results if gt.imgs[r["image_id"]]["file_name"] == path.name]
        assert mine, f"no detection on {path.name}"
        colors = {PALETTE[r["category_id"] - 1] for r in mine}
        assert max(_longest_run(overlay, c) for c in colors) >= 40  # a drawn box edge
        assert _palette_pixels(overlay) >= 250


def test_small_images_are_upscaled_in_overlays_with_their_boxes_and_masks():
    """An exact-pixel check of ``draw_overlay``'s upscaling: a 20x20 image, one detection."""
    from sam3_lora_plugin.inference import Detection, draw_overlay, get_overlay_scale

    assert get_overlay_scale((20, 10), 0) == 1 and get_overlay_scale((600, 900), 512) == 1
    assert get_overlay_scale((20, 10), 35) == 4 and get_overlay_scale((20, 10), 40) == 4
    image = Image.new("RGB", (20, 20), (0, 0, 0))
    mask = np.zeros((20, 20), bool)
    mask[8:12, 3:8] = True
    det = Detection(prompt="cup", prompt_index=0, score=0.9, box_xyxy=(3.0, 8.0, 8.0, 12.0), mask=mask)
    big = np.asarray(draw_overlay(image, [det], min_side=80))
    assert big.shape == (80, 80, 3)
    assert np.asarray(draw_overlay(image, [det])).shape == (20, 20, 3)
    # Mask pixels (inside the box outline; the label sits above the box) are tinted at 45%.
    tint = np.round(0.45 * np.asarray(PALETTE[0])).astype(np.uint8)
    assert (big[36:46, 16:30] == tint).all()
    # The box outline sits at the scaled coordinates: x from 12 to 32, y from 32 to 48.
    assert (big[48, 14:30] == PALETTE[0]).all() and (big[34:46, 32] == PALETTE[0]).all()
    assert (big[51:, :] == 0).all()  # nothing drawn below the box


def test_resolve_categories():
    assert resolve_categories("a, b ,c", None) == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"},
                                                  {"id": 3, "name": "c"}]
    gt = {"categories": [{"id": 7, "name": "Red Cup"}, {"id": 9, "name": "plate"}]}
    assert resolve_categories("plate,red cup", gt) == [{"id": 9, "name": "plate"}, {"id": 7, "name": "red cup"}]
    assert resolve_categories(None, gt) == [{"id": 7, "name": "Red Cup"}, {"id": 9, "name": "plate"}]
    with pytest.raises(ValueError, match=r"\['bowl'\] are not categories"):
        resolve_categories("bowl", gt)
    with pytest.raises(ValueError, match="No prompts"):
        resolve_categories(" , ", None)
    with pytest.raises(ValueError, match="Duplicate"):
        resolve_categories("a,A", None)


def test_adapter_is_applied_exactly(dataset, tmp_path, monkeypatch, sam3_cpu_patches):
    """A model loaded with --adapter predicts exactly what the trained model does, and not
    what the base does."""
    from sam3_lora_plugin.trainer import cpu_fallbacks as runtime
    from sam3_lora_plugin.adapters.io import export_adapter
    from tests.adapters.helpers import make_model, randomise_trainable

    monkeypatch.setattr(runtime, "enable_cpu_fallbacks", lambda *a: [])  # sam3_cpu_patches does it per test
    trained = randomise_trainable(make_model(), scale=0.2).eval()
    torch.save({"model": trained.state_dict()}, tmp_path / "checkpoint.pt")
    adapter = export_adapter(str(tmp_path / "checkpoint.pt"), str(tmp_path / "adapter"))
    image = Image.open(sorted((dataset / "valid").glob("*.jpg"))[0]).convert("RGB")
    prompts = ["red circle", "green triangle"]

    def run(loaded):
        dets = Sam3TextPredictor(loaded, threshold=0.0).predict(image, prompts)
        return torch.tensor([[d.prompt_index, d.score, *d.box_xyxy] for d in dets])

    with_adapter = run(load_inference_model(size="tiny", seed=0, adapter=adapter, device="cpu"))
    reference = run(InferenceModel(trained, 112, "cpu", "trained"))
    base = run(load_inference_model(size="tiny", seed=0, device="cpu"))
    assert with_adapter.shape == (2 * 20, 6)  # threshold 0: every query of both prompts
    torch.testing.assert_close(with_adapter, reference)
    assert not torch.allclose(with_adapter[:, 1].sort().values, base[:, 1].sort().values)


def test_out_holding_other_files_is_refused_and_untouched(dataset, capsys):
    """--out pointing at a dataset split: one error line, not a byte changed (issue 14)."""
    from sam3_lora_plugin.cli.predict import main
    from sam3_lora_plugin.testing import assert_unchanged, snapshot_files

    before = snapshot_files(dataset)
    rc = main(["--images", str(dataset / "valid"), "--prompts", "red circle", "--size", "tiny",
               "--out", str(dataset / "valid")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "holds files this tool did not write" in err
    assert_unchanged(before, snapshot_files(dataset))
