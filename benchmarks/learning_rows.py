"""The rows of ``benchmarks/learning.py``'s study and their runs: the datasets, the
adaptation and retention phases of one (row, shift, seed), and the records an earlier
report holds that ``--reuse`` takes instead of running them again."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from learning_phase import REPO, PhaseSpec, run_phase

_IMAGE_PATH = ["vision_trunk", "fusion_encoder", "decoder"]
_ALL_BUT_SCORING = ["vision_trunk", "text_encoder", "fusion_encoder", "decoder",
                    "geometry_encoder", "segmentation_head"]
_ATTN = ["q", "k", "v", "out"]
_SMALL_PARTS = ["fusion_encoder", "decoder", "geometry_encoder", "segmentation_head"]
_HEADS = ["dot_prod_scoring", "transformer.decoder.bbox_embed",
          "transformer.decoder.presence_token_head", "transformer.decoder.ref_point_head"]
_PIXEL_DECODER = "segmentation_head.pixel_decoder"
_NECK_14 = "backbone.vision_backbone.convs.2"
_PATCH_EMBED = "backbone.vision_backbone.trunk.patch_embed"
# every normalization layer, as the study ran it; the presets' NORM_LAYERS leaves out the pixel
# decoder's norms.2 (never called by SAM3) and the geometry encoder's img_pre_norm (a float-noise
# gradient under text prompts)
_NORMS = r"re:.*\.(norm\d?|\w+_norm|ln_\w+|norms\.\d+)$"
#: The rows of the study: ``lora`` (``LoraConfig`` fields; absent: full fine-tune), ``lr``
#: (default ``--lora-lr`` / ``--full-lr``), ``loraplus_lr_ratio``. Targets are spelled out,
#: not preset names, so a row means the same thing when presets change.
ROWS: dict[str, dict[str, Any]] = {
    "full_ft": {},
    "attn_image": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN}},  # the old default
    "attn_mlp_image": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"]}},
    "attention_mlp": {"lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"]}},
    # LoRA+: B at 4x A's lr; A at half the tuned lr (the geometric mean stays 1e-2)
    "attn_mlp_image_loraplus": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"]},
                                "lr": 5e-3, "loraplus_lr_ratio": 4.0},
    "attention_mlp_loraplus": {"lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"]},
                               "lr": 5e-3, "loraplus_lr_ratio": 4.0},
    "attn_mlp_image_dora": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"],
                                     "use_dora": True}},
    "attention_mlp_dora": {"lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"],
                                    "use_dora": True}},
    # image_mlp's layers (the default until 2026-11-30) and the full fine-tune with another
    # lr; those layers at twice the rank (same alpha / rank scale)
    "attn_mlp_image_lr2e-2": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"]},
                              "lr": 2e-2},
    "attn_mlp_image_lr3e-3": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"]},
                              "lr": 3e-3},
    "attn_mlp_image_lr1e-3": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"]},
                              "lr": 1e-3},
    "full_ft_lr3e-3": {"lr": 3e-3},
    "full_ft_lr5e-3": {"lr": 5e-3},
    "attention_mlp_lr3e-3": {"lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"]},
                             "lr": 3e-3},
    "attn_mlp_image_r16_lr3e-3": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"],
                                           "rank": 16, "alpha": 32.0}, "lr": 3e-3},
    "attn_mlp_image_r16": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"],
                                    "rank": 16, "alpha": 32.0}},
    # attention_mlp with the heads trained fully (as full fine-tuning trains them): the
    # prompt-to-query scoring MLP and the decoder's box, reference-point and presence heads;
    # and also the segmentation head's pixel decoder (convolutions)
    "attention_mlp_heads_lr3e-3": {"lora": {"components": _ALL_BUT_SCORING,
                                            "roles": _ATTN + ["mlp"],
                                            "modules_to_save": _HEADS}, "lr": 3e-3},
    "attention_mlp_heads_pixdec_lr3e-3": {"lora": {"components": _ALL_BUT_SCORING,
                                                   "roles": _ATTN + ["mlp"],
                                                   "modules_to_save": _HEADS + [_PIXEL_DECODER]},
                                          "lr": 3e-3},
    "attn_mlp_image_heads_pixdec_lr3e-3": {"lora": {"components": _IMAGE_PATH,
                                                    "roles": _ATTN + ["mlp"],
                                                    "modules_to_save": _HEADS + [_PIXEL_DECODER]},
                                           "lr": 3e-3},
    # the heads and the neck's stride-14 level (the only neck output the detector reads):
    # 1.46% of full-size SAM3 with attention_mlp's adapters, inside the 1.5% budget
    "attention_mlp_heads_neck14_lr3e-3": {"lora": {"components": _ALL_BUT_SCORING,
                                                   "roles": _ATTN + ["mlp"],
                                                   "modules_to_save": _HEADS + [_NECK_14]},
                                          "lr": 3e-3},
    # the same plus every normalization layer (LayerNorm / GroupNorm weights and biases,
    # 0.03% of full-size SAM3; full fine-tuning trains them too): the attention_mlp_heads
    # preset (1.488%; the default on 2026-11-30); and at lr 5e-3
    "attention_mlp_heads_neck14_norms_lr3e-3": {"lora": {"components": _ALL_BUT_SCORING,
                                                         "roles": _ATTN + ["mlp"],
                                                         "modules_to_save": _HEADS + [_NECK_14, _NORMS]},
                                                "lr": 3e-3},
    # the text encoder at rank 4 pays (0.21% of full size) for the ViT patch embedding
    # (0.07%) or the mask head's pixel decoder (0.21%) trained fully
    "attention_mlp_heads_neck14_norms_patch_text4_lr3e-3": {
        "lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"],
                 "component_overrides": {"text_encoder": {"rank": 4, "alpha": 8.0}},
                 "modules_to_save": _HEADS + [_NECK_14, _NORMS, _PATCH_EMBED]}, "lr": 3e-3},
    "attention_mlp_heads_neck14_norms_pixdec_text4_lr3e-3": {
        "lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"],
                 "component_overrides": {"text_encoder": {"rank": 4, "alpha": 8.0}},
                 "modules_to_save": _HEADS + [_NECK_14, _NORMS, _PIXEL_DECODER]}, "lr": 3e-3},
    "attention_mlp_heads_neck14_norms_lr5e-3": {"lora": {"components": _ALL_BUT_SCORING,
                                                         "roles": _ATTN + ["mlp"],
                                                         "modules_to_save": _HEADS + [_NECK_14, _NORMS]},
                                                "lr": 5e-3},
    "attention_mlp_heads_neck14_lr5e-3": {"lora": {"components": _ALL_BUT_SCORING,
                                                   "roles": _ATTN + ["mlp"],
                                                   "modules_to_save": _HEADS + [_NECK_14]},
                                          "lr": 5e-3},
    # attention_mlp_heads' set (above, lr 3e-3) with LoRA+ (B at 2x / 4x A's lr; the fully
    # trained modules keep 3e-3), with DoRA, and with the text encoder's rank moved to the small
    # parts: text encoder rank 4, fusion encoder / decoder / geometry encoder / mask head rank 16
    # (1.415% of full-size SAM3): the default preset (= attention_mlp_heads_rebalanced)
    "attention_mlp_heads_neck14_norms_loraplus2_lr3e-3": {
        "lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"],
                 "modules_to_save": _HEADS + [_NECK_14, _NORMS]}, "lr": 3e-3, "loraplus_lr_ratio": 2.0},
    "attention_mlp_heads_neck14_norms_loraplus4_lr3e-3": {
        "lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"],
                 "modules_to_save": _HEADS + [_NECK_14, _NORMS]}, "lr": 3e-3, "loraplus_lr_ratio": 4.0},
    "attention_mlp_heads_neck14_norms_dora_lr3e-3": {
        "lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"], "use_dora": True,
                 "modules_to_save": _HEADS + [_NECK_14, _NORMS]}, "lr": 3e-3},
    "attention_mlp_heads_neck14_norms_text4_small16_lr3e-3": {
        "lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"],
                 "component_overrides": {"text_encoder": {"rank": 4, "alpha": 8.0},
                                         **{c: {"rank": 16, "alpha": 32.0} for c in _SMALL_PARTS}},
                 "modules_to_save": _HEADS + [_NECK_14, _NORMS]}, "lr": 3e-3},
    # where full fine-tuning's lead on small_clutter comes from: a whole part trained fully
    "attention_mlp_full_decoder_lr3e-3": {
        "lora": {"components": [c for c in _ALL_BUT_SCORING if c != "decoder"],
                 "roles": _ATTN + ["mlp"], "modules_to_save": ["transformer.decoder"]},
        "lr": 3e-3},
    "attention_mlp_full_neck_lr3e-3": {
        "lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN + ["mlp"],
                 "modules_to_save": ["backbone.vision_backbone.convs"]}, "lr": 3e-3},
    # the other presets' layers, at the default configs' lr 3e-3, as a user who passes
    # lora=<preset> gets them (plain LoRA, one rank): qv, attention_image, attention,
    # all_linear, low_memory; trunk_last8 adapts image_mlp's layers in the last 8 of full
    # size's 32 ViT blocks, here the last of the tiny model's 2
    "qv_lr3e-3": {"lora": {"components": _IMAGE_PATH, "roles": ["q", "v"]}, "lr": 3e-3},
    "attn_image_lr3e-3": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN}, "lr": 3e-3},
    "attention_lr3e-3": {"lora": {"components": _ALL_BUT_SCORING, "roles": _ATTN}, "lr": 3e-3},
    "all_linear_lr3e-3": {"lora": {"components": _ALL_BUT_SCORING + ["scoring"],
                                   "roles": _ATTN + ["mlp", "head"]}, "lr": 3e-3},
    "low_memory_lr3e-3": {"lora": {"components": ["fusion_encoder", "decoder"],
                                   "roles": _ATTN + ["mlp"]}, "lr": 3e-3},
    "trunk_last_block_lr3e-3": {"lora": {"components": _IMAGE_PATH, "roles": _ATTN + ["mlp"],
                                         "trunk_blocks": [-1, None]}, "lr": 3e-3},
}
#: Full fine-tuning at both lrs, the default preset's row (attention_mlp_heads_rebalanced),
#: attention_mlp_heads' row, plain LoRA on their layers (attention_mlp at 3e-3) and image_mlp's.
DEFAULT_ROWS = ("full_ft,full_ft_lr3e-3,attention_mlp_heads_neck14_norms_text4_small16_lr3e-3,"
                "attention_mlp_heads_neck14_norms_lr3e-3,attention_mlp_lr3e-3,attn_mlp_image_lr3e-3")


def make_datasets(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The base domain and each shifted style (fixed by ``--seed``, reused when present)."""
    from sam3_lora_plugin.data import make_synthetic_coco

    common = {"image_size": args.resolution, "seed": args.seed, "num_valid": 0}
    data = {"base": make_synthetic_coco(work / "data" / "base", num_train=args.base_train,
                                        num_test=args.base_test, style="base", **common)}
    for style in args.shift_style:
        data[style] = make_synthetic_coco(work / "data" / style, num_train=args.shift_train,
                                          num_test=args.shift_test, style=style, **common)
    return data


def plan_row(args: argparse.Namespace, work: Path, data: dict[str, Path], base_ckpt: str,
             row: str, shift: str, seed: int) -> tuple[PhaseSpec, PhaseSpec]:
    """The adaptation phase of one (row, shift, seed) and its retention phase."""
    spec = ROWS[row]
    steps = max(args.shift_train // args.adapt_batch, 1)
    name = f"{row}@{shift}@s{seed}"
    log = work / "runs" / shift / row / f"seed{seed}"
    # The seed sets the LoRA init (the Trainer's seed) and the data order (the sampler's);
    # seed 0 keeps stock's order.
    common = {"resolution": args.resolution, "seed": 1000 + seed, "threads": args.threads}
    lora = None
    if "lora" in spec:
        # What a row leaves out is nothing, not the current default preset's: a row means the
        # same layers whichever preset is the default (rows spell out components and roles).
        lora = {"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": 0.0,
                "modules_to_save": [], "component_overrides": {}, **spec["lora"]}
    adapt = PhaseSpec(
        name=name, data_root=str(data[shift]), eval_split="test", log_dir=str(log / "adapt"),
        epochs=args.adapt_epochs, steps_per_epoch=steps, batch_size=args.adapt_batch,
        warmup_steps=min(20, steps), base_checkpoint=base_ckpt, lora=lora, sampler_seed=seed,
        lr=spec.get("lr", args.lora_lr if lora else args.full_lr),
        loraplus_lr_ratio=spec.get("loraplus_lr_ratio"), check_base=lora is not None,
        backbone_lr_mult=1.0 if lora else args.backbone_lr_mult,
        save_base_to=None if lora else str(log / "adapt" / "model_sam3.pt"), **common)
    retain = PhaseSpec(
        name=f"{name}:retention", data_root=str(data["base"]), eval_split="test", mode="val",
        log_dir=str(log / "retention"), lora=lora, check_disabled=lora is not None,
        adapter_path=str(log / "adapt" / "adapter") if lora else None,
        base_checkpoint=base_ckpt if lora else adapt.save_base_to, **common)
    return adapt, retain


def run_row(adapt: PhaseSpec, retain: PhaseSpec) -> dict[str, Any]:
    """Adapt, then evaluate on the base domain; one record of the row's numbers."""
    a = run_phase(adapt)
    r = run_phase(retain)
    return {"shift": a["final"], "retention": r["final"], "adapter_disabled": r["disabled"],
            "trainable_params": a["trainable_params"], "total_params": a["total_params"],
            "adapter_bytes": a.get("adapter_bytes", a.get("model_bytes")),
            "optimizer_steps": a["optimizer_steps"], "wall_s": a["seconds"],
            "sampler_seed": adapt.sampler_seed,
            "base_bit_identical": a.get("base_check", {}).get("bit_identical"), "loss": a["loss"]}


def _previous_base_sha256(previous: dict[str, Any]) -> Optional[str]:
    """The SHA-256 of an earlier study's base: recorded, or hashed from its file if present."""
    if previous.get("base_sha256"):
        return previous["base_sha256"]
    for path in (previous.get("base_checkpoint"), previous.get("args", {}).get("base_checkpoint")):
        if path and (REPO / path).is_file():  # an absolute path stays absolute
            return hashlib.sha256((REPO / path).read_bytes()).hexdigest()
    return None


#: The arguments that change a (row, shift, seed) result; --reuse needs them all equal.
RESULT_ARGS = ("seed", "resolution", "base_train", "base_test", "pretrain_epochs", "pretrain_lr",
               "pretrain_batch", "backbone_lr_mult", "shift_train", "shift_test", "adapt_epochs",
               "adapt_batch", "full_lr", "lora_lr", "lora_rank", "lora_alpha")


def reusable_runs(previous: dict[str, Any], args: argparse.Namespace, base_sha256: str,
                  jobs: dict[str, tuple[PhaseSpec, PhaseSpec]]) -> dict[str, dict[str, Any]]:
    """The records of ``previous`` (an earlier ``learning.json``) that a new run would repeat.

    A record is taken only when every argument in ``RESULT_ARGS`` is equal, the base file has
    the same SHA-256, the row's definition in ``ROWS`` is the same, and its data order is the
    same: records written before ``sampler_seed`` was recorded ran SAM3's stock sampler,
    whose order is sampler seed 0's.
    """
    prev_args = previous.get("args", {})
    if any(prev_args.get(k) != getattr(args, k) for k in RESULT_ARGS):
        return {}
    if _previous_base_sha256(previous) != base_sha256:
        return {}
    taken = {}
    for key, rec in previous.get("runs", {}).items():
        if key not in jobs:
            continue
        row = key.split("@")[0]
        if previous.get("rows", {}).get(row) != json.loads(json.dumps(ROWS[row])):
            continue
        if rec.get("sampler_seed", 0) != jobs[key][0].sampler_seed:
            continue
        loss = previous.get("losses", {}).get(key)
        taken[key] = {**rec, "sampler_seed": jobs[key][0].sampler_seed,
                      "loss": loss if loss is not None else [], "reused_from": previous["date"]}
    return taken
