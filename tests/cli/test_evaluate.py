"""Tests for base-vs-adapter evaluation: per-category COCO scores against hand-computed
values and SAM3's own evaluator, the comparison table, and (slow) the whole command on the
embedded dataset with a briefly trained adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sam3_lora_plugin.evaluation import (ComparisonError, MeterRun, build_comparison, evaluate_dump,
                                         format_markdown)
from sam3_lora_plugin.evaluation.coco_metrics import CocoScores

SMOKE = "configs/lora/smoke_cpu.yaml"


def _square(x, y, s):
    return [float(x), float(y), float(x + s), float(y), float(x + s), float(y + s), float(x), float(y + s)]


@pytest.fixture
def gt_file(tmp_path):
    """Two 40x40 images; categories 1-3 have one 10x10 object each, category 4 none."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 40} for i in (1, 2)]
    anns = []
    for k, (img, cat, x, y) in enumerate([(1, 1, 2, 2), (1, 2, 20, 20), (2, 3, 5, 25)], 1):
        anns.append({"id": k, "image_id": img, "category_id": cat, "bbox": [x, y, 10, 10], "area": 100,
                     "iscrowd": 0, "segmentation": [_square(x, y, 10)]})
    cats = [{"id": i, "name": n} for i, n in enumerate(["cup", "plate", "fork", "knife"], 1)]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, anns


def _dump(tmp_path, gt_anns, name="dump.json"):
    """cup: exact box; plate: box 10x19 over the 10x10 GT (IoU 100/190 = 0.526: a match at
    IoU 0.50 only, so AP = 1/10, AP50 = 1, AP75 = 0); fork: nothing; knife: a false positive."""
    cup, plate, _ = gt_anns
    dets = [{"image_id": 1, "category_id": 1, "bbox": cup["bbox"], "score": 0.9},
            {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 19], "score": 0.8},
            {"image_id": 2, "category_id": 4, "bbox": [0, 0, 5, 5], "score": 0.7}]
    path = tmp_path / name
    path.write_text(json.dumps(dets))
    return path


def test_per_category_scores_match_hand_computed_values(gt_file, tmp_path):
    gt, anns = gt_file
    scores = evaluate_dump(gt, _dump(tmp_path, anns), "bbox")
    assert scores.category_names == {1: "cup", 2: "plate", 3: "fork", 4: "knife"}
    assert scores.per_category[1] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    assert scores.per_category[2] == pytest.approx({"AP": 0.1, "AP50": 1.0, "AP75": 0.0})
    assert scores.per_category[3] == pytest.approx({"AP": 0.0, "AP50": 0.0, "AP75": 0.0})
    assert scores.per_category[4] == {"AP": None, "AP50": None, "AP75": None}  # no ground truth
    assert scores.overall == pytest.approx({"AP": 1.1 / 3, "AP50": 2 / 3, "AP75": 1 / 3})
    assert (scores.num_images, scores.num_detections) == (2, 3)


def test_overall_scores_equal_sam3s_own_evaluator(gt_file, tmp_path):
    from sam3.eval.coco_eval_offline import CocoEvaluatorOfflineWithPredFileEvaluators

    gt, anns = gt_file
    dump = _dump(tmp_path, anns)
    sam3 = CocoEvaluatorOfflineWithPredFileEvaluators(str(gt), tide=False, iou_type="bbox").evaluate(dump)
    ours = evaluate_dump(gt, dump, "bbox").overall
    assert ours == pytest.approx({"AP": sam3["coco_eval_bbox_AP"], "AP50": sam3["coco_eval_bbox_AP_50"],
                                  "AP75": sam3["coco_eval_bbox_AP_75"]})


def test_segm_scores_from_rle_dumps(gt_file, tmp_path):
    from pycocotools import mask as mask_utils

    gt, anns = gt_file
    dets = []
    for a in anns[:2]:  # cup and plate segmented exactly, fork missed
        rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], 40, 40))
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.5,
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    dump = tmp_path / "segm.json"
    dump.write_text(json.dumps(dets))
    scores = evaluate_dump(gt, dump, "segm")
    assert [scores.per_category[c]["AP"] for c in (1, 2, 3)] == pytest.approx([1.0, 1.0, 0.0])
    assert scores.overall["AP"] == pytest.approx(2 / 3)


def test_empty_dump_scores_zero(gt_file, tmp_path):
    gt, _ = gt_file
    (tmp_path / "empty.json").write_text("[]")
    scores = evaluate_dump(gt, tmp_path / "empty.json", "bbox")
    assert scores.overall == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    assert scores.per_category[4]["AP"] is None and scores.per_category[1]["AP"] == 0.0


def _run(meter, ap, cats=None):
    cats = cats or {1: "cup", 2: "plate"}
    scores = CocoScores("bbox", {"AP": ap, "AP50": ap, "AP75": ap},
                        {c: {"AP": ap / c, "AP50": None, "AP75": 0.0} for c in cats}, cats, 5, 7)
    return MeterRun("bbox", meter, "/gt.json", "/dump.json", {"AP": ap, "AP50": ap, "AP75": ap}, scores)


def test_comparison_table():
    comp = build_comparison([_run("val_x/detection", 0.2)], [_run("val_x/detection", 0.5)],
                            info={"config": "configs/lora/x.yaml", "adapter": "/a"})
    (res,) = comp["results"]
    assert res["overall"]["delta"] == pytest.approx({"AP": 0.3, "AP50": 0.3, "AP75": 0.3})
    assert res["per_category"][1]["name"] == "plate"
    assert res["per_category"][1]["delta"]["AP"] == pytest.approx(0.15)
    assert res["per_category"][1]["delta"]["AP50"] is None
    assert res["recomputed_overall_matches_sam3"] == {"base": True, "adapter": True}
    md = format_markdown(comp)
    assert "| **all** | 20.0 | 50.0 | +30.0 | 20.0 | 50.0 | +30.0 | 20.0 | 50.0 | +30.0 |" in md
    assert "| plate (2) | 10.0 | 25.0 | +15.0 | n/a | n/a | n/a | 0.0 | 0.0 | +0.0 |" in md
    json.dumps(comp)  # JSON-able
    with pytest.raises(ComparisonError, match="different meters"):
        build_comparison([_run("val_x/detection", 0.2)], [_run("val_y/detection", 0.2)])
    with pytest.raises(ComparisonError, match="different ground truth"):
        build_comparison([_run("a", 0.2)], [_run("a", 0.2, cats={1: "cup"})])


def _python_m(args, cwd, env, timeout=600):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout


@pytest.mark.slow
def test_evaluate_base_vs_adapter_on_the_embedded_dataset(tmp_path):
    """Train an adapter briefly (1 epoch on 4 images), then evaluate base and adapter with
    the smoke config: the table's overall numbers are the ones SAM3's evaluator logged in
    each run, the category rows come from the same dumps, and the adapter changed them."""
    env = dict(os.environ, SAM3_LORA_CACHE=str(tmp_path / "cache"), PYTHONPATH="")
    train_dir = tmp_path / "train"
    _python_m(["sam3_lora_plugin.train", "-c", SMOKE, f"launcher.experiment_log_dir={train_dir}",
               "trainer.max_epochs=1", "scratch.lr=0.01", "+trainer.data.train.dataset.limit_ids=4",
               "~trainer.data.val", "~trainer.meters"], tmp_path, env)
    out = tmp_path / "eval"
    stdout = _python_m(["sam3_lora_plugin.evaluate", "-c", SMOKE, "--adapter", str(train_dir / "adapter"),
                        "--out", str(out)], tmp_path, env)
    comp = json.loads((out / "comparison.json").read_text())
    md = (out / "comparison.md").read_text()
    assert md in stdout
    assert comp["info"]["resolution"] == 112
    assert [(r["iou_type"], r["meter"]) for r in comp["results"]] == [
        ("bbox", "val_coco/detection"), ("segm", "val_coco/segmentation")]
    for run in ("base", "adapter"):
        stats = json.loads((out / run / "logs" / "val_stats.json").read_text().splitlines()[-1])
        for res in comp["results"]:
            prefix = f"Meters_train/{res['meter']}/coco_eval_{res['iou_type']}_"
            logged = {m: stats[prefix + s] for m, s in (("AP", "AP"), ("AP50", "AP_50"), ("AP75", "AP_75"))}
            assert res["overall"][run] == pytest.approx(logged)
            assert res["recomputed_overall_matches_sam3"][run] is True
            assert res["num_detections"][run] == len(json.loads(open(res["dumps"][run]).read())) > 0
    for res in comp["results"]:
        assert res["num_images"] == 8
        assert [c["name"] for c in res["per_category"]] == ["red circle", "blue square", "green triangle"]
        for row in [res["overall"]] + res["per_category"]:
            for side in ("base", "adapter"):
                assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in row[side].values())
        base = json.loads(open(res["dumps"]["base"]).read())
        adapted = json.loads(open(res["dumps"]["adapter"]).read())
        assert [d["score"] for d in base] != [d["score"] for d in adapted]  # the adapter was applied
        assert "| red circle (1) |" in md


def test_bad_override_is_one_error_line_and_exit_2(tmp_path, capsys):
    """A typo in an override stops before any run, with Hydra's message (no traceback)."""
    from sam3_lora_plugin.cli.evaluate import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    rc = main(["-c", SMOKE, "--adapter", str(adapter), "--out", str(tmp_path / "out"),
               "trainer.model.model.no_such_key=1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("ERROR: Could not override 'trainer.model.model.no_such_key'") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_out_holding_other_files_is_refused_and_untouched(tmp_path, capsys):
    """--out pointing at a training run: one error line, nothing changed (issue 14)."""
    from sam3_lora_plugin.cli.evaluate import main
    from sam3_lora_plugin.testing import assert_unchanged, snapshot_files

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint.pt").write_bytes(b"weights")
    (run / "log.txt").write_text("log")
    before = snapshot_files(tmp_path)
    rc = main(["-c", SMOKE, "--adapter", str(tmp_path / "adapter"), "--out", str(run)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "holds files this tool did not write" in err
    assert_unchanged(before, snapshot_files(tmp_path))
