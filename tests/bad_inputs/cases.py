"""The bad inputs: one row per case, the command as a user types it, and what the one
line of the answer must name.

Placeholders in ``args``: ``{d}`` the case's own directory (its working directory),
``{fx}`` the shared fixture (``ckpt/checkpoint.pt``, ``adapter/``, ``data/``). ``setup``
writes the case's bad files into ``{d}``. ``stock`` cases run SAM3's own launcher, which
we do not wrap: there the model is built before our wrapper runs and our message must
be the last line printed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

TRAIN = ("-m", "sam3_lora_plugin.train", "-c", "configs/lora/smoke_cpu.yaml",
         "paths.experiment_log_dir={d}/run")
STOCK = ("-m", "sam3.train.train", "-c", "configs/lora/smoke_cpu.yaml")
EVAL = ("-m", "sam3_lora_plugin.evaluate", "-c", "configs/lora/smoke_cpu.yaml", "--out", "{d}/eval")
PRED = ("-m", "sam3_lora_plugin.predict", "--size", "tiny", "--prompts", "red circle",
        "--out", "{d}/pred")
DOCTOR = ("-m", "sam3_lora_plugin.doctor", "--no-network")
ADAPTERS = ("-m", "sam3_lora_plugin.adapters")
CONVERT = ("-m", "sam3_lora_plugin.data.convert")
CHECK = ("-m", "sam3_lora_plugin.data.check")
SAVE_DIR = "runs/smoke/checkpoints"  # smoke_cpu.yaml: launcher.experiment_log_dir runs/${paths.run_name}
RUN_CKPT = "run/checkpoints"


@dataclass
class Case:
    """One bad input."""

    id: str
    args: tuple
    pattern: str                      # regex the answer must match (stderr + stdout)
    setup: Optional[Callable[[Path, Path], None]] = None
    stock: bool = False               # SAM3's launcher: our line last, build allowed
    needs: str = ""                   # work of another branch this case waits for


# --- file makers -------------------------------------------------------------------------

def text(rel: str, content: str = "hello, this is not a checkpoint\n"):
    def make(d: Path, fx: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return make


def random_bytes(rel: str, n: int = 4096):
    def make(d: Path, fx: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        # Seeded, and not starting with 0x80: a random first byte of 0x80 reads as a
        # pickle protocol header, which is another (also clear) message.
        data = bytearray(random.Random(rel).randbytes(n))
        data[0] = 0x00
        p.write_bytes(bytes(data))
    return make


def truncated(rel: str, src: str = "ckpt/checkpoint.pt", keep: float = 0.5):
    def make(d: Path, fx: Path) -> None:
        data = (fx / src).read_bytes()
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data[: int(len(data) * keep)])
    return make


def copy(rel: str, src: str):
    def make(d: Path, fx: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (fx / src).is_dir() else shutil.copy)(fx / src, p)
    return make


def rank8_checkpoint(rel: str):
    """The fixture checkpoint with metadata saying rank 8 (another run's settings)."""
    def make(d: Path, fx: Path) -> None:
        import torch

        from sam3_lora_plugin.adapters.metadata import METADATA_KEY, decode_metadata, encode_metadata

        ckpt = torch.load(fx / "ckpt/checkpoint.pt", weights_only=True)
        meta = decode_metadata(ckpt["model"][METADATA_KEY])
        for t in meta["targets"].values():
            t["rank"] = 8
        meta["lora_config"]["rank"] = 8
        ckpt["model"][METADATA_KEY] = encode_metadata(meta)
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, p)
    return make


def torch_file(rel: str, obj_factory: Callable[[], object]):
    def make(d: Path, fx: Path) -> None:
        import torch

        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj_factory(), p)
    return make


def plain_pickle(rel: str):
    def make(d: Path, fx: Path) -> None:
        import collections
        import pickle

        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(pickle.dumps(collections.Counter(a=1)))
    return make


def adapter_with(change: Callable[[Path], None]):
    def make(d: Path, fx: Path) -> None:
        shutil.copytree(fx / "adapter", d / "ad")
        change(d / "ad")
    return make


def dataset(change: Optional[Callable[[dict, Path], None]] = None, split: str = "train"):
    """``{d}/ds`` with train/ and valid/ (the smoke valid split), ``change`` applied to
    ``split``'s JSON (and folder)."""
    def make(d: Path, fx: Path) -> None:
        shutil.copytree(fx / "data", d / "ds")
        if change is not None:
            path = d / "ds" / split / "_annotations.coco.json"
            coco = json.loads(path.read_text())
            change(coco, path.parent)
            path.write_text(json.dumps(coco))
    return make


def both(*makers):
    def make(d: Path, fx: Path) -> None:
        for m in makers:
            m(d, fx)
    return make


def _drop_images_key(coco, folder):
    del coco["images"]


def _missing_image(coco, folder):
    coco["images"][0]["file_name"] = "no_such_image.jpg"


def _size_mismatch(coco, folder):
    coco["images"][0]["width"] *= 3


def _bad_category(coco, folder):
    coco["annotations"][0]["category_id"] = 999


def _negative_box(coco, folder):
    coco["annotations"][0]["bbox"] = [5, 5, -10, 4]


def _truncate_image(coco, folder):
    p = folder / coco["images"][0]["file_name"]
    p.write_bytes(p.read_bytes()[:200])


def _duplicate_image_id(coco, folder):
    coco["images"][1]["id"] = coco["images"][0]["id"]


def _empty_images(coco, folder):
    coco["images"], coco["annotations"] = [], []


def _truncate_weights(ad: Path) -> None:
    w = ad / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:300])


def _bad_header(ad: Path) -> None:
    w = ad / "adapter_model.safetensors"
    w.write_bytes((10_000).to_bytes(8, "little") + b"{not json" + os.urandom(64))


def _bad_json(ad: Path) -> None:
    (ad / "adapter_config.json").write_text("{ this is not json")


def _no_weights(ad: Path) -> None:
    (ad / "adapter_model.safetensors").unlink()


def _plain_peft_config(ad: Path) -> None:
    cfg = json.loads((ad / "adapter_config.json").read_text())
    del cfg["sam3_lora"]
    (ad / "adapter_config.json").write_text(json.dumps(cfg))


def _labelme_bad(d: Path, fx: Path) -> None:
    (d / "src").mkdir()
    (d / "src" / "a.json").write_text("{ broken")


def _voc_bad(d: Path, fx: Path) -> None:
    (d / "src" / "Annotations").mkdir(parents=True)
    (d / "src" / "Annotations" / "a.xml").write_text("<annotation><object>")


def _yolo_no_classes(d: Path, fx: Path) -> None:
    (d / "src" / "images").mkdir(parents=True)
    (d / "src" / "labels").mkdir(parents=True)
    shutil.copy(next((fx / "data" / "valid").glob("*.jpg")), d / "src" / "images" / "a.jpg")
    (d / "src" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")


def _empty_dir(rel: str):
    def make(d: Path, fx: Path) -> None:
        (d / rel).mkdir(parents=True)
    return make


NOT_CKPT = r"is not a torch checkpoint: it is"
TRUNC = r"truncated or corrupt"
#: The first difference named: the text encoder, which the default preset gives half the rank
#: (the fixture adapter was trained at rank 4: 2 there; rank=8 here: 4).
FIT = r"does not fit this model .*language_backbone.*: rank 2 in the adapter, 4 here"
R = "trainer.checkpoint.resume_from="


CASES: list[Case] = [
    # --- our launcher: settings ---------------------------------------------------------
    Case("train/max_epochs_abc", TRAIN + ("trainer.max_epochs=abc",), r"trainer\.max_epochs='abc' must be int"),
    Case("train/max_epochs_0", TRAIN + ("trainer.max_epochs=0",), r"trainer\.max_epochs=0 must be at least 1"),
    Case("train/max_epochs_negative", TRAIN + ("trainer.max_epochs=-3",), r"max_epochs=-3 must be at least 1"),
    Case("train/max_epochs_float", TRAIN + ("trainer.max_epochs=1.5",), r"max_epochs=1\.5 must be int"),
    Case("train/mode_unknown", TRAIN + ("trainer.mode=evaluate",), r"trainer\.mode='evaluate' is not a SAM3 Trainer mode"),
    Case("train/plus_top_level", TRAIN + ("+checkpoint.resume_from=x",), r"did you mean trainer\.checkpoint\.resume_from"),
    Case("train/plus_top_level_typo", TRAIN + ("+trainr.max_epochs=2",), r"adds the top-level key 'trainr'.*Did you mean trainer\.max_epochs"),
    Case("train/plus_trainer_key", TRAIN + ("+trainer.max_epoch=3",), r"trainer\.max_epoch is not a setting of sam3\.train\.trainer\.Trainer\. Did you mean max_epochs"),
    Case("train/plus_wrapper_key", TRAIN + ("+trainer.model.adapter=x",), r"trainer\.model\.adapter is not a setting of sam3_lora_plugin\.build_lora_sam3"),
    Case("train/unknown_key", TRAIN + ("trainer.max_epoch=3",), r"Could not override 'trainer\.max_epoch'"),
    Case("train/unknown_config", ("-m", "sam3_lora_plugin.train", "-c", "configs/lora/nope.yaml"), r"configs/lora/nope\.yaml"),
    Case("train/unknown_flag", TRAIN + ("--epochs", "3"), r"unrecognized arguments: --epochs"),
    Case("train/num_gpus_abc", TRAIN + ("--num-gpus", "two"), r"--num-gpus: invalid int value"),
    Case("train/distributed_key", TRAIN + ("+trainer.distributed.backnd=gloo",), r"trainer\.distributed has unknown key\(s\) \['backnd'\]"),
    Case("train/checkpoint_key", TRAIN + ("+trainer.checkpoint.resume=x",), r"trainer\.checkpoint has unknown key\(s\) \['resume'\]"),
    Case("train/lora_rank_0", TRAIN + ("trainer.model.lora.rank=0",), r"trainer\.model\.lora: .*rank"),
    Case("train/lora_rank_abc", TRAIN + ("trainer.model.lora.rank=abc",), r"rank"),
    Case("train/lora_component", TRAIN + ("trainer.model.lora.components=[vision]",), r"Unknown SAM3 component 'vision'"),
    Case("train/lora_role", TRAIN + ("trainer.model.lora.roles=[query]",), r"query"),
    Case("train/lora_qkv_mode", TRAIN + ("trainer.model.lora.qkv_mode=joint",), r"qkv_mode"),
    Case("train/lora_init", TRAIN + ("trainer.model.lora.init=xavier",), r"init"),
    Case("train/lora_unknown_key", TRAIN + ("+trainer.model.lora.rnk=8",), r"rnk"),
    Case("train/lora_preset", TRAIN + ("lora=big",), r"big"),
    Case("train/include_nothing", TRAIN + ("trainer.model.lora.include=[transformer.nothing.*]",), r"lora\.include pattern\(s\) \['transformer\.nothing\.\*'\] match no adaptable module"),
    Case("train/modules_to_save_nothing", TRAIN + ("trainer.model.lora.modules_to_save=[scorer]",), r"modules_to_save pattern\(s\) \['scorer'\] match no module"),
    Case("train/selection_empty", TRAIN + ("trainer.model.lora.components=[]", "trainer.model.lora.roles=[q]"), r"selection matches no module"),
    Case("train/resolution_not_patch", TRAIN + ("scratch.resolution=100",), r"resolution=100 is not a multiple of the patch size 14.*resolution=98"),
    # --- our launcher: base checkpoint --------------------------------------------------
    Case("train/base_missing", TRAIN + ("trainer.model.model.checkpoint_path={d}/sam3.pt",), r"checkpoint_path: Checkpoint file .*sam3\.pt' does not exist"),
    Case("train/base_text", TRAIN + ("trainer.model.model.checkpoint_path={d}/sam3.pt",), NOT_CKPT + " a text file", text("sam3.pt")),
    Case("train/base_trainer_ckpt", TRAIN + ("trainer.model.model.checkpoint_path={fx}/ckpt/checkpoint.pt",), r"holds no 'detector\.\*' keys"),
    Case("train/base_directory", TRAIN + ("trainer.model.model.checkpoint_path={fx}/adapter",), r"is a directory, not a file"),
    # --- our launcher: resume_from ------------------------------------------------------
    Case("train/resume_missing", TRAIN + (R + "{d}/nope.pt",), r"resume_from='.*nope\.pt' does not exist"),
    Case("train/resume_text", TRAIN + (R + "{d}/c.pt",), NOT_CKPT + " a text file", text("c.pt")),
    Case("train/resume_random", TRAIN + (R + "{d}/c.pt",), NOT_CKPT + " unrecognized bytes", random_bytes("c.pt")),
    Case("train/resume_empty", TRAIN + (R + "{d}/c.pt",), NOT_CKPT + " empty", text("c.pt", "")),
    Case("train/resume_truncated", TRAIN + (R + "{d}/c.pt",), TRUNC, truncated("c.pt")),
    Case("train/resume_pickle", TRAIN + (R + "{d}/c.pt",), NOT_CKPT + " a pickle", plain_pickle("c.pt")),
    Case("train/resume_json", TRAIN + (R + "{d}/c.pt",), NOT_CKPT + " a JSON file", text("c.pt", '{"a": 1}')),
    Case("train/resume_rank", TRAIN + (R + "{fx}/ckpt/checkpoint.pt", "trainer.model.lora.rank=8"), r"resume_from=.*" + FIT),
    Case("train/resume_preset", TRAIN + (R + "{fx}/ckpt/checkpoint.pt", "lora=qv"), r"resume_from=.*does not fit this model"),
    Case("train/resume_directory", TRAIN + (R + "{fx}/adapter",), r"is a directory, not a file"),
    # --- our launcher: checkpoint.pt in the save dir (resume) --------------------------
    Case("train/save_dir_truncated", TRAIN, r"Cannot resume: .*" + TRUNC, truncated(RUN_CKPT + "/checkpoint.pt")),
    Case("train/save_dir_text", TRAIN, r"Cannot resume: .*truncated or corrupt.*nothing was changed", text(RUN_CKPT + "/checkpoint.pt")),
    Case("train/save_dir_random", TRAIN, r"Cannot resume: .*truncated or corrupt.*nothing was changed", random_bytes(RUN_CKPT + "/checkpoint.pt")),
    Case("train/save_dir_empty", TRAIN, r"Cannot resume: .*empty", text(RUN_CKPT + "/checkpoint.pt", "")),
    Case("train/save_dir_rank", TRAIN + ("trainer.model.lora.rank=8",), r"checkpoint to resume.*" + FIT, copy(RUN_CKPT + "/checkpoint.pt", "ckpt/checkpoint.pt")),
    Case("train/save_dir_rank_in_file", TRAIN, r"checkpoint to resume.*rank 8 in the adapter, 2 here", rank8_checkpoint(RUN_CKPT + "/checkpoint.pt")),
    # A truncated checkpoint.pt beside an intact checkpoint_1.pt is not a bad input any more:
    # the resume guard falls back to checkpoint_1.pt (tests/trainer/test_resume.py).
    # --- our launcher: adapter_path -----------------------------------------------------
    Case("train/adapter_missing", TRAIN + ("trainer.model.adapter_path={d}/ad",), r"Adapter directory '.*ad' does not exist"),
    Case("train/adapter_file", TRAIN + ("trainer.model.adapter_path={fx}/adapter/adapter_model.safetensors",), r"is a file; an adapter is the directory"),
    Case("train/adapter_truncated", TRAIN + ("trainer.model.adapter_path={d}/ad",), TRUNC, adapter_with(_truncate_weights)),
    Case("train/adapter_bad_header", TRAIN + ("trainer.model.adapter_path={d}/ad",), TRUNC, adapter_with(_bad_header)),
    Case("train/adapter_bad_json", TRAIN + ("trainer.model.adapter_path={d}/ad",), r"adapter_config\.json' is not valid JSON", adapter_with(_bad_json)),
    Case("train/adapter_no_weights", TRAIN + ("trainer.model.adapter_path={d}/ad",), r"incomplete: adapter_model\.safetensors is missing", adapter_with(_no_weights)),
    Case("train/adapter_plain_peft", TRAIN + ("trainer.model.adapter_path={d}/ad",), r"has no 'sam3_lora' block", adapter_with(_plain_peft_config)),
    Case("train/adapter_rank", TRAIN + ("trainer.model.adapter_path={fx}/adapter", "trainer.model.lora.rank=8"), r"trainer\.model\.adapter_path\) does not fit this m"),
    Case("train/adapter_preset", TRAIN + ("trainer.model.adapter_path={fx}/adapter", "lora=qv"), r"adapter_path\) does not fit this model"),
    # --- our launcher: datasets ---------------------------------------------------------
    Case("train/dataset_root_unset", TRAIN + ("dataset=roboflow",), r"required value.* not set: paths\.dataset_root"),
    Case("train/dataset_root_missing", TRAIN + ("dataset=roboflow", "paths.dataset_root={d}/nope"), r"nope"),
    Case("train/dataset_bad_json", TRAIN + ("dataset=roboflow", "paths.dataset_root={d}/ds"), r"_annotations\.coco\.json",
         both(dataset(), text("ds/train/_annotations.coco.json", "{ not json"))),
    Case("train/dataset_no_images_key", TRAIN + ("dataset=roboflow", "paths.dataset_root={d}/ds"), r"images", dataset(_drop_images_key)),
    Case("train/dataset_missing_image", TRAIN + ("dataset=roboflow", "paths.dataset_root={d}/ds"), r"no_such_image\.jpg", dataset(_missing_image)),
    Case("train/dataset_bad_category", TRAIN + ("dataset=roboflow", "paths.dataset_root={d}/ds"), r"999|categor", dataset(_bad_category)),
    Case("train/dataset_empty_split", TRAIN + ("dataset=roboflow", "paths.dataset_root={d}/ds"), r"empty|no images", dataset(_empty_images)),
    # --- SAM3's own launcher ------------------------------------------------------------
    Case("stock/save_dir_truncated", STOCK, r"^error: Cannot resume: .*" + TRUNC, truncated(SAVE_DIR + "/checkpoint.pt"), stock=True),
    Case("stock/save_dir_text", STOCK, r"^error: Cannot resume: .*truncated or corrupt", text(SAVE_DIR + "/checkpoint.pt"), stock=True),
    Case("stock/save_dir_random", STOCK, r"^error: Cannot resume: .*truncated or corrupt", random_bytes(SAVE_DIR + "/checkpoint.pt"), stock=True),
    Case("stock/save_dir_rank", STOCK, r"^error: .*rank 8 in the adapter, 2 here", rank8_checkpoint(SAVE_DIR + "/checkpoint.pt"), stock=True),
    # --- evaluate -----------------------------------------------------------------------
    Case("evaluate/adapter_missing", EVAL + ("--adapter", "{d}/ad"), r"Adapter directory '.*ad' does not exist"),
    Case("evaluate/adapter_truncated", EVAL + ("--adapter", "{d}/ad"), TRUNC, adapter_with(_truncate_weights)),
    Case("evaluate/adapter_rank", EVAL + ("--adapter", "{fx}/adapter", "trainer.model.lora.rank=8"), r"Adapter .* does not fit this model .*rank 2 in the adapter, 4 here"),
    Case("evaluate/adapter_preset", EVAL + ("--adapter", "{fx}/adapter", "lora=qv"), r"does not fit this model"),
    Case("evaluate/adapter_file", EVAL + ("--adapter", "{fx}/adapter/adapter_config.json"), r"is a file; an adapter is the directory"),
    Case("evaluate/bad_override", EVAL + ("--adapter", "{fx}/adapter", "trainer.model.model.no_such_key=1"), r"Could not override"),
    Case("evaluate/max_epochs_0", EVAL + ("--adapter", "{fx}/adapter", "trainer.max_epochs=0"), r"max_epochs=0 must be at least 1"),
    Case("evaluate/dataset_missing", EVAL + ("--adapter", "{fx}/adapter", "dataset=roboflow", "paths.dataset_root={d}/nope"), r"nope"),
    Case("evaluate/include_nothing", EVAL + ("--adapter", "{fx}/adapter", "trainer.model.lora.include=[nothing.*]"), r"include pattern"),
    # --- predict ------------------------------------------------------------------------
    Case("predict/images_missing", PRED + ("--images", "{d}/nope"), r"Image path '.*nope' does not exist"),
    Case("predict/images_empty_dir", PRED + ("--images", "{d}/imgs"), r"No images found", _empty_dir("imgs")),
    Case("predict/threshold_high", PRED + ("--images", "{fx}/data/valid", "--threshold", "1.5"), r"--threshold 1\.5 is not a score"),
    Case("predict/threshold_negative", PRED + ("--images", "{fx}/data/valid", "--threshold=-0.1"), r"--threshold -0\.1 is not a score"),
    Case("predict/resolution", PRED + ("--images", "{fx}/data/valid", "--resolution", "100"), r"--resolution 100 must be a positive multiple of 14"),
    Case("predict/no_prompts", ("-m", "sam3_lora_plugin.predict", "--size", "tiny", "--prompts", " ", "--out", "{d}/p", "--images", "{fx}/data/valid"), r"No prompts"),
    Case("predict/out_is_file", PRED[:-1] + ("{fx}/ckpt/checkpoint.pt", "--images", "{fx}/data/valid"), r"exists and is not a directory"),
    Case("predict/adapter_missing", PRED + ("--images", "{fx}/data/valid", "--adapter", "{d}/ad"), r"Adapter directory '.*ad' does not exist"),
    Case("predict/adapter_truncated", PRED + ("--images", "{fx}/data/valid", "--adapter", "{d}/ad"), TRUNC, adapter_with(_truncate_weights)),
    Case("predict/adapter_other_size", ("-m", "sam3_lora_plugin.predict", "--size", "full", "--prompts", "a", "--out", "{d}/p",
                                        "--images", "{fx}/data/valid", "--adapter", "{fx}/adapter", "--checkpoint", "{d}/sam3.pt", "--device", "cpu"),
         r"does not fit this model", torch_file("sam3.pt", lambda: {"model": {}})),
    Case("predict/checkpoint_text", PRED + ("--images", "{fx}/data/valid", "--checkpoint", "{d}/sam3.pt"), NOT_CKPT + " a text file", text("sam3.pt")),
    Case("predict/checkpoint_truncated", PRED + ("--images", "{fx}/data/valid", "--checkpoint", "{d}/sam3.pt"), TRUNC, truncated("sam3.pt")),
    Case("predict/merged_random", PRED + ("--images", "{fx}/data/valid", "--merged", "{d}/m.pt"), NOT_CKPT + " unrecognized bytes", random_bytes("m.pt")),
    Case("predict/coco_gt_bad", PRED + ("--images", "{fx}/data/valid", "--coco-gt", "{d}/gt.json"), r"--coco-gt .* cannot be read as JSON", text("gt.json", "{ no")),
    Case("predict/merged_and_adapter", PRED + ("--images", "{fx}/data/valid", "--merged", "{d}/m.pt", "--adapter", "{fx}/adapter"), r"--merged already contains an adapter"),
    # --- doctor -------------------------------------------------------------------------
    Case("doctor/unknown_config", DOCTOR + ("-c", "configs/lora/nope.yaml"), r"FAIL"),
    Case("doctor/bad_override", DOCTOR + ("-c", "configs/lora/smoke_cpu.yaml", "trainer.max_epoch=3"), r"FAIL.*max_epoch"),
    Case("doctor/dataset_missing", DOCTOR + ("-c", "configs/lora/smoke_cpu.yaml", "dataset=roboflow", "paths.dataset_root={d}/nope"), r"FAIL.*nope"),
    Case("doctor/base_missing", DOCTOR + ("-c", "configs/lora/smoke_cpu.yaml", "trainer.model.model.checkpoint_path={d}/sam3.pt"), r"FAIL.*sam3\.pt"),
    # --- adapters -----------------------------------------------------------------------
    Case("adapters/inspect_missing", ADAPTERS + ("inspect", "{d}/nope.pt"), r"does not exist"),
    Case("adapters/inspect_text", ADAPTERS + ("inspect", "{d}/c.pt"), NOT_CKPT + " a text file", text("c.pt")),
    Case("adapters/inspect_random", ADAPTERS + ("inspect", "{d}/c.pt"), NOT_CKPT + " unrecognized bytes", random_bytes("c.pt")),
    Case("adapters/inspect_empty", ADAPTERS + ("inspect", "{d}/c.pt"), NOT_CKPT + " empty", text("c.pt", "")),
    Case("adapters/inspect_pickle", ADAPTERS + ("inspect", "{d}/c.pt"), NOT_CKPT + " a pickle", plain_pickle("c.pt")),
    Case("adapters/inspect_list", ADAPTERS + ("inspect", "{d}/c.pt"), r"c\.pt.*(not a|no) ", torch_file("c.pt", lambda: [1, 2, 3])),
    Case("adapters/inspect_bad_json", ADAPTERS + ("inspect", "{d}/ad"), r"not valid JSON", adapter_with(_bad_json)),
    Case("adapters/inspect_bad_header", ADAPTERS + ("inspect", "{d}/ad"), TRUNC, adapter_with(_bad_header)),
    Case("adapters/inspect_empty_dir", ADAPTERS + ("inspect", "{d}/e"), r"incomplete", _empty_dir("e")),
    Case("adapters/export_text", ADAPTERS + ("export", "{d}/c.pt", "{d}/out"), NOT_CKPT + " a text file", text("c.pt")),
    Case("adapters/export_truncated", ADAPTERS + ("export", "{d}/c.pt", "{d}/out"), TRUNC, truncated("c.pt")),
    Case("adapters/export_not_lora", ADAPTERS + ("export", "{d}/c.pt", "{d}/out"), r"holds no LoRA adapter metadata",
         torch_file("c.pt", lambda: {"model": {"w": __import__("torch").zeros(2)}})),
    Case("adapters/export_list", ADAPTERS + ("export", "{d}/c.pt", "{d}/out"), r"holds no LoRA adapter metadata", torch_file("c.pt", lambda: [1])),
    Case("adapters/export_safetensors", ADAPTERS + ("export", "{fx}/adapter/adapter_model.safetensors", "{d}/out"), r"holds no LoRA adapter metadata"),
    Case("adapters/merge_base_text", ADAPTERS + ("merge", "{d}/sam3.pt", "{fx}/adapter", "{d}/m.pt"), NOT_CKPT + " a text file", text("sam3.pt")),
    Case("adapters/merge_base_missing", ADAPTERS + ("merge", "{d}/sam3.pt", "{fx}/adapter", "{d}/m.pt"), r"does not exist"),
    Case("adapters/merge_adapter_missing", ADAPTERS + ("merge", "{fx}/ckpt/checkpoint.pt", "{d}/ad", "{d}/m.pt"), r"does not exist"),
    Case("adapters/merge_not_stock", ADAPTERS + ("merge", "{fx}/ckpt/checkpoint.pt", "{fx}/adapter", "{d}/m.pt"), r"detector"),
    # --- data.convert / data.check ------------------------------------------------------
    Case("convert/src_missing", CONVERT + ("yolo", "{d}/nope", "{d}/out"), r"nope"),
    Case("convert/unknown_format", CONVERT + ("cvat", "{d}", "{d}/out"), r"invalid choice: 'cvat'"),
    Case("convert/labelme_bad_json", CONVERT + ("labelme", "{d}/src", "{d}/out"), r"a\.json is not valid JSON.*Fix:", _labelme_bad),
    Case("convert/voc_bad_xml", CONVERT + ("voc", "{d}/src", "{d}/out"), r"a\.xml is not valid XML.*Fix:", _voc_bad),
    Case("convert/yolo_no_classes", CONVERT + ("yolo", "{d}/src", "{d}/out"), r"class names are missing.*data\.yaml.*classes\.txt.*--names", _yolo_no_classes),
    Case("convert/empty_src", CONVERT + ("labelme", "{d}/src", "{d}/out"), r"no images found", _empty_dir("src")),
    Case("check/missing", CHECK + ("{d}/nope",), r"nope"),
    Case("check/bad_json", CHECK + ("{d}/a.json",), r"a\.json", text("a.json", "{ no")),
    Case("check/no_images_key", CHECK + ("{d}/ds/train",), r"images", dataset(_drop_images_key)),
    Case("check/missing_image", CHECK + ("{d}/ds/train",), r"no_such_image\.jpg", dataset(_missing_image)),
    Case("check/bad_category", CHECK + ("{d}/ds/train",), r"999|categor", dataset(_bad_category)),
    Case("check/negative_box", CHECK + ("{d}/ds/train",), r"bbox|box", dataset(_negative_box)),
    Case("check/duplicate_image_id", CHECK + ("{d}/ds/train",), r"duplicate|id", dataset(_duplicate_image_id)),
    Case("check/size_mismatch", CHECK + ("{d}/ds/train",), r"size|width", dataset(_size_mismatch)),
    Case("check/truncated_image", CHECK + ("{d}/ds/train",), r"truncat|cannot", dataset(_truncate_image)),
]
