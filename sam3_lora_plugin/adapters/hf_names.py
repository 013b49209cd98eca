"""sam3's module and weight names -> transformers' ``Sam3Model`` names.

Written from the module tree of ``transformers/models/sam3/modeling_sam3.py`` in
transformers 5.24.0 and from the renames, the q/k/v split, the cls-token strip and the
text-projection transpose that ``convert_sam3_to_hf.py`` applies (huggingface/transformers
``src/transformers/models/sam3/``, read at commit 0d7e95d; the pip wheel does not ship
it). Our own code: it needs nothing from that script at run time.

For a stock ``sam3.pt`` key ``k`` (``detector.`` stripped, as ``build_sam3_arch`` names
its parameters) :func:`get_transformers_keys` gives the ``Sam3Model`` key(s) and the rows
of ``k`` each one takes:

* a fused projection is cut into three equal row blocks, in order q, k, v: the ViT's
  ``attn.qkv.{weight,bias}`` and every ``nn.MultiheadAttention``'s
  ``in_proj_{weight,bias}`` become ``q_proj``/``k_proj``/``v_proj`` with rows
  ``[0, d)``, ``[d, 2d)``, ``[2d, 3d)``;
* an ``nn.MultiheadAttention``'s ``out_proj`` is ``o_proj`` (``Sam3Attention``), or stays
  ``out_proj`` in the text encoder (transformers' CLIP);
* every other key is renamed whole (e.g. the DETR decoder's ``ca_text`` is
  ``text_cross_attn``, ``cross_attn`` is ``vision_cross_attn``).

Two values change on the way, not only their names (:func:`to_transformers_state_dict`):
the ViT ``pos_embed`` loses its cls-token row (``Sam3Model`` has none) and the CLIP
``text_projection`` is transposed (sam3 stores it as ``x @ P``, transformers as a Linear).
Keys in ``DROPPED`` have no ``Sam3Model`` counterpart and are left out: the ViT's
precomputed RoPE table ``freqs_cis`` (``Sam3Model`` computes the same angles at run
time) and the geometry encoder's point-prompt layers ``points_*`` (``Sam3Model`` takes
box prompts only).

One setting differs from ``Sam3Config()``'s defaults: sam3's ViT LayerNorms use
``eps=1e-5`` (``sam3.model.vitdet.ViT`` with ``norm_layer="LayerNorm"``), transformers'
``Sam3ViTConfig.layer_norm_eps`` defaults to 1e-6. :func:`get_transformers_config`
sets 1e-5, so that the converted model computes what sam3 computes.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import torch

from sam3_lora_plugin.models.arch import PATCH_SIZE, SIZES

__all__ = ["DROPPED", "get_transformers_config", "get_transformers_keys",
           "to_transformers_state_dict"]

#: sam3 keys with no ``Sam3Model`` counterpart (see the module docstring).
DROPPED = re.compile(r"^backbone\.vision_backbone\.trunk\.blocks\.\d+\.attn\.freqs_cis$"
                     r"|^geometry_encoder\.points_")

_TRUNK, _TEXT = "backbone.vision_backbone.trunk.", "backbone.language_backbone.encoder."

# (pattern, replacement), applied in order to each key; \d+ layer indices carry over.
_RENAMES: tuple[tuple[str, str], ...] = (
    # ViT trunk
    (r"^" + re.escape(_TRUNK) + r"pos_embed$", "vision_encoder.backbone.embeddings.position_embeddings"),
    (r"^" + re.escape(_TRUNK) + r"patch_embed\.proj\.",
     "vision_encoder.backbone.embeddings.patch_embeddings.projection."),
    (r"^" + re.escape(_TRUNK) + r"ln_pre\.", "vision_encoder.backbone.layer_norm."),
    (r"^" + re.escape(_TRUNK) + r"blocks\.(\d+)\.norm([12])\.",
     r"vision_encoder.backbone.layers.\1.layer_norm\2."),
    (r"^" + re.escape(_TRUNK) + r"blocks\.(\d+)\.attn\.qkv\.", r"vision_encoder.backbone.layers.\1.attention.qkv."),
    (r"^" + re.escape(_TRUNK) + r"blocks\.(\d+)\.attn\.proj\.", r"vision_encoder.backbone.layers.\1.attention.o_proj."),
    (r"^" + re.escape(_TRUNK) + r"blocks\.(\d+)\.mlp\.", r"vision_encoder.backbone.layers.\1.mlp."),
    # FPN neck: per level, the up/down-sampling layers, then the 1x1 and 3x3 convs
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.(dconv_2x2|dconv_2x2_0)\.",
     r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_1\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.2."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_1x1\.", r"vision_encoder.neck.fpn_layers.\1.proj1."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_3x3\.", r"vision_encoder.neck.fpn_layers.\1.proj2."),
    # text encoder (transformers' CLIPTextModelWithProjection) and the 1024 -> 256 resizer
    (r"^" + re.escape(_TEXT) + r"token_embedding\.", "text_encoder.text_model.embeddings.token_embedding."),
    (r"^" + re.escape(_TEXT) + r"positional_embedding$",
     "text_encoder.text_model.embeddings.position_embedding.weight"),
    (r"^" + re.escape(_TEXT) + r"ln_final\.", "text_encoder.text_model.final_layer_norm."),
    (r"^" + re.escape(_TEXT) + r"text_projection$", "text_encoder.text_projection.weight"),
    (r"^" + re.escape(_TEXT) + r"transformer\.resblocks\.(\d+)\.attn\.",
     r"text_encoder.text_model.encoder.layers.\1.self_attn."),
    (r"^" + re.escape(_TEXT) + r"transformer\.resblocks\.(\d+)\.ln_([12])\.",
     r"text_encoder.text_model.encoder.layers.\1.layer_norm\2."),
    (r"^" + re.escape(_TEXT) + r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.",
     r"text_encoder.text_model.encoder.layers.\1.mlp.fc1."),
    (r"^" + re.escape(_TEXT) + r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.",
     r"text_encoder.text_model.encoder.layers.\1.mlp.fc2."),
    (r"^backbone\.language_backbone\.resizer\.", "text_projection."),
    # encoder layers (geometry encoder and DETR encoder share sam3's TransformerEncoderLayer)
    (r"^geometry_encoder\.encode\.(\d+)\.", r"geometry_encoder.layers.\1."),
    (r"^transformer\.encoder\.layers\.(\d+)\.", r"detr_encoder.layers.\1."),
    (r"^(geometry_encoder|detr_encoder)\.layers\.(\d+)\.cross_attn_image\.", r"\1.layers.\2.cross_attn."),
    (r"^(geometry_encoder|detr_encoder)\.layers\.(\d+)\.norm([123])\.", r"\1.layers.\2.layer_norm\3."),
    (r"^geometry_encoder\.img_pre_norm\.", "geometry_encoder.vision_layer_norm."),
    (r"^geometry_encoder\.norm\.", "geometry_encoder.prompt_layer_norm."),
    (r"^geometry_encoder\.encode_norm\.", "geometry_encoder.output_layer_norm."),
    # DETR decoder
    (r"^transformer\.decoder\.", "detr_decoder."),
    (r"^detr_decoder\.layers\.(\d+)\.ca_text\.", r"detr_decoder.layers.\1.text_cross_attn."),
    (r"^detr_decoder\.layers\.(\d+)\.cross_attn\.", r"detr_decoder.layers.\1.vision_cross_attn."),
    (r"^detr_decoder\.layers\.(\d+)\.norm1\.", r"detr_decoder.layers.\1.vision_cross_attn_layer_norm."),
    (r"^detr_decoder\.layers\.(\d+)\.catext_norm\.", r"detr_decoder.layers.\1.text_cross_attn_layer_norm."),
    (r"^detr_decoder\.layers\.(\d+)\.norm2\.", r"detr_decoder.layers.\1.self_attn_layer_norm."),
    (r"^detr_decoder\.layers\.(\d+)\.norm3\.", r"detr_decoder.layers.\1.mlp_layer_norm."),
    (r"^detr_decoder\.norm\.", "detr_decoder.output_layer_norm."),
    (r"^detr_decoder\.bbox_embed\.", "detr_decoder.box_head."),
    (r"^detr_decoder\.presence_token_head\.", "detr_decoder.presence_head."),
    (r"^detr_decoder\.presence_token_out_norm\.", "detr_decoder.presence_layer_norm."),
    (r"^detr_decoder\.boxRPB_embed_([xy])\.", r"detr_decoder.box_rpb_embed_\1."),
    # scoring head
    (r"^dot_prod_scoring\.prompt_mlp\.out_norm\.", "dot_product_scoring.text_mlp_out_norm."),
    (r"^dot_prod_scoring\.prompt_mlp\.", "dot_product_scoring.text_mlp."),
    (r"^dot_prod_scoring\.prompt_proj\.", "dot_product_scoring.text_proj."),
    (r"^dot_prod_scoring\.hs_proj\.", "dot_product_scoring.query_proj."),
    # segmentation head
    (r"^segmentation_head\.mask_predictor\.mask_embed\.", "mask_decoder.mask_embedder."),
    (r"^segmentation_head\.instance_seg_head\.", "mask_decoder.instance_projection."),
    (r"^segmentation_head\.semantic_seg_head\.", "mask_decoder.semantic_projection."),
    (r"^segmentation_head\.cross_attend_prompt\.", "mask_decoder.prompt_cross_attn."),
    (r"^segmentation_head\.cross_attn_norm\.", "mask_decoder.prompt_cross_attn_norm."),
    (r"^segmentation_head\.pixel_decoder\.", "mask_decoder.pixel_decoder."),
    # encoder/decoder feed-forward Linears
    (r"\.linear([12])\.", r".mlp.fc\1."),
)
# sam3's MLP (box/presence/ref-point/RPB heads, scoring MLP) numbers its Linears
# layers.0, .1, .2; Sam3DecoderMLP names them layer1, layer2, layer3.
_DECODER_MLP = re.compile(r"^(detr_decoder\.(?:box_head|presence_head|ref_point_head|box_rpb_embed_[xy])"
                          r"|dot_product_scoring\.text_mlp)\.layers\.(\d+)\.")
_FUSED = re.compile(r"^(.*)\.(?:attention\.qkv\.|in_proj_)(weight|bias)$")


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    key = _DECODER_MLP.sub(lambda m: f"{m[1]}.layer{int(m[2]) + 1}.", key)
    if not key.startswith("text_encoder."):  # CLIP keeps out_proj; Sam3Attention has o_proj
        key = key.replace(".out_proj.", ".o_proj.")
    return key


def get_transformers_keys(key: str, rows: int) -> list[tuple[str, Optional[tuple[int, int]]]]:
    """The ``Sam3Model`` key(s) of sam3 key ``key`` (``detector.`` stripped) and the rows
    of ``key`` each takes (``None``: the whole tensor). ``rows`` is ``key``'s first
    dimension. Empty for a key in ``DROPPED``.

    Example: ``...trunk.blocks.0.attn.qkv.weight`` with ``rows=192`` ->
    ``[(...layers.0.attention.q_proj.weight, (0, 64)), (k_proj, (64, 128)),
    (v_proj, (128, 192))]``.
    """
    if DROPPED.search(key):
        return []
    new = _rename(key)
    fused = _FUSED.match(new)
    if not fused:
        return [(new, None)]
    if rows % 3:
        raise ValueError(f"{key!r} has {rows} rows, not three equal q/k/v blocks")
    d = rows // 3
    stem = fused[1] + (".attention" if ".attention.qkv." in new else "")
    return [(f"{stem}.{p}_proj.{fused[2]}", (i * d, (i + 1) * d)) for i, p in enumerate("qkv")]


def to_transformers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A sam3 image-model state dict (``detector.`` stripped) as ``Sam3Model``'s.

    ``Sam3Model(get_transformers_config(...)).load_state_dict(out, strict=True)``
    takes it when the sizes match (checked by ``tests/adapters/test_hf_names.py``).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for new, span in get_transformers_keys(key, value.shape[0] if value.dim() else 1):
            tensor = value if span is None else value[span[0]:span[1]]
            if new == "vision_encoder.backbone.embeddings.position_embeddings":
                tensor = tensor[:, 1:]  # sam3 keeps a cls-token position; Sam3Model has none
            elif new == "text_encoder.text_projection.weight":
                tensor = tensor.t()
            out[new] = tensor.clone()
    return out


def get_transformers_config(size: str = "tiny", resolution: Optional[int] = None,
                            **overrides: Any):
    """``transformers.Sam3Config`` of a ``build_sam3_arch(size, resolution, **overrides)``
    model (``size="full"`` is the real SAM3), with sam3's ViT LayerNorm eps (1e-5)."""
    from dataclasses import replace

    from transformers import Sam3Config

    d = replace(SIZES[size], **overrides)
    resolution = resolution or d.default_resolution
    grid = resolution // PATCH_SIZE
    attn = {"hidden_size": d.d_model, "num_attention_heads": d.num_heads,
            "intermediate_size": d.dim_feedforward}
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model", "hidden_size": d.vit_embed_dim, "num_hidden_layers": d.vit_depth,
                "num_attention_heads": d.vit_num_heads,
                "intermediate_size": int(d.vit_embed_dim * 4.625),  # sam3's mlp_ratio
                "image_size": resolution, "patch_size": PATCH_SIZE,
                "window_size": d.vit_window_size,
                "global_attn_indexes": list(d.vit_global_att_blocks),
                "pretrain_image_size": d.vit_pretrain_img_size, "layer_norm_eps": 1e-5},
            "fpn_hidden_size": d.d_model,
            "backbone_feature_sizes": [[grid * 4] * 2, [grid * 2] * 2, [grid] * 2]},
        text_config={
            "model_type": "clip_text_model", "hidden_size": d.text_width, "intermediate_size": 4 * d.text_width,
            "num_attention_heads": d.text_heads, "num_hidden_layers": d.text_layers,
            "projection_dim": 512, "max_position_embeddings": 32, "hidden_act": "gelu",
            "vocab_size": 49408},
        geometry_encoder_config=dict(attn, num_layers=d.geometry_layers),
        detr_encoder_config=dict(attn, num_layers=d.encoder_layers),
        detr_decoder_config=dict(attn, num_layers=d.decoder_layers, num_queries=d.num_queries),
        mask_decoder_config={"hidden_size": d.d_model, "num_attention_heads": d.num_heads},
    )
