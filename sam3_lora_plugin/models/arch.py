"""SAM3-architecture image models built from sam3's own module classes.

Stock ``sam3.model_builder.build_sam3_image_model`` hard-codes the full size and
allocates on CUDA while it is being built (``PositionEmbeddingSine`` precompute and
the decoder's coordinate cache), so it cannot run on a CPU-only machine. This
module assembles the *same* classes with the same wiring, at a size you choose:

* ``size="full"``: the real SAM3 dimensions (ViT-L/14 1024-wide, 32 blocks; text
  encoder 1024-wide, 24 layers; 6+6 fusion encoder/decoder layers; d_model 256) at
  the ``resolution`` you pass. Parameter names and shapes equal stock's.
* ``size="tiny"``: the same module tree with fewer layers and narrower widths
  (about 4M parameters at 112 px) for tests and CPU smoke runs.

Every parameter is initialised deterministically from ``seed``, including the two
that stock leaves as ``torch.empty`` (``positional_embedding`` and
``text_projection`` of the text encoder), which otherwise make a randomly
initialised model produce NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn

from sam3_lora_plugin.models.base_checkpoint import load_base_checkpoint
from sam3_lora_plugin.models.bpe import get_bpe_path

__all__ = ["Sam3ArchSize", "SIZES", "build_sam3_arch", "init_text_encoder_params"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sam3ArchSize:
    """Dimensions of one SAM3-architecture size. Field names follow stock's arguments."""

    vit_embed_dim: int
    vit_depth: int
    vit_num_heads: int
    vit_window_size: int
    vit_global_att_blocks: tuple
    vit_pretrain_img_size: int
    text_width: int
    text_heads: int
    text_layers: int
    d_model: int
    num_heads: int
    dim_feedforward: int
    encoder_layers: int
    decoder_layers: int
    geometry_layers: int
    num_queries: int
    default_resolution: int


SIZES: dict[str, Sam3ArchSize] = {
    # The real SAM3 image model (sam3.model_builder, sam3 0.1.4).
    "full": Sam3ArchSize(
        vit_embed_dim=1024, vit_depth=32, vit_num_heads=16, vit_window_size=24,
        vit_global_att_blocks=(7, 15, 23, 31), vit_pretrain_img_size=336,
        text_width=1024, text_heads=16, text_layers=24,
        d_model=256, num_heads=8, dim_feedforward=2048,
        encoder_layers=6, decoder_layers=6, geometry_layers=3,
        num_queries=200, default_resolution=1008,
    ),
    # Same tree, CPU-sized: 112 px is an 8x8 token grid with patch 14.
    "tiny": Sam3ArchSize(
        vit_embed_dim=64, vit_depth=2, vit_num_heads=2, vit_window_size=4,
        vit_global_att_blocks=(1,), vit_pretrain_img_size=112,
        text_width=64, text_heads=2, text_layers=2,
        d_model=32, num_heads=2, dim_feedforward=64,
        encoder_layers=2, decoder_layers=2, geometry_layers=1,
        num_queries=20, default_resolution=112,
    ),
}

PATCH_SIZE = 14


def init_text_encoder_params(model: nn.Module) -> int:
    """Initialise the text-encoder tensors that stock creates with ``torch.empty``.

    ``TextTransformer.positional_embedding`` gets N(0, 0.01²) and
    ``text_projection`` gets N(0, width⁻¹), the CLIP/open_clip initialisation.
    Uses the global torch RNG, so seed it first for determinism.

    Args:
        model: any module containing sam3 ``TextTransformer`` instances.

    Returns:
        The number of text transformers initialised.
    """
    from sam3.model.text_encoder_ve import TextTransformer

    count = 0
    for module in model.modules():
        if isinstance(module, TextTransformer):
            with torch.no_grad():
                nn.init.normal_(module.positional_embedding, std=0.01)
                if isinstance(module.text_projection, nn.Parameter):
                    nn.init.normal_(module.text_projection, std=module.width**-0.5)
            count += 1
    return count


def _mha(d: Sam3ArchSize, dropout: float, batch_first: Optional[bool] = None):
    from sam3.model.model_misc import MultiheadAttentionWrapper

    kwargs = {} if batch_first is None else {"batch_first": batch_first}
    return MultiheadAttentionWrapper(
        num_heads=d.num_heads, dropout=dropout, embed_dim=d.d_model, **kwargs
    )


def _vision_backbone(d: Sam3ArchSize, resolution: int, drop_path_rate: float):
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.vitdet import ViT

    trunk = ViT(
        img_size=resolution, pretrain_img_size=d.vit_pretrain_img_size,
        patch_size=PATCH_SIZE, embed_dim=d.vit_embed_dim, depth=d.vit_depth,
        num_heads=d.vit_num_heads, mlp_ratio=4.625, norm_layer="LayerNorm",
        drop_path_rate=drop_path_rate, qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
        global_att_blocks=d.vit_global_att_blocks, rel_pos_blocks=(), use_rope=True,
        use_interp_rope=True, window_size=d.vit_window_size,
        pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True,
        ln_post=False, return_interm_layers=False, bias_patch_embed=False,
    )
    # precompute_resolution=None: stock precomputes on "cuda"; the cache fills lazily.
    pos = PositionEmbeddingSine(
        num_pos_feats=d.d_model, normalize=True, scale=None, temperature=10000
    )
    return Sam3DualViTDetNeck(
        position_encoding=pos, d_model=d.d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=trunk, add_sam2_neck=False,
    )


def _transformer(d: Sam3ArchSize, p: float):
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.model_misc import TransformerWrapper

    enc_layer = TransformerEncoderLayer(
        activation="relu", d_model=d.d_model, dim_feedforward=d.dim_feedforward,
        dropout=p, pos_enc_at_attn=True, pos_enc_at_cross_attn_keys=False,
        pos_enc_at_cross_attn_queries=False, pre_norm=True,
        self_attention=_mha(d, p, batch_first=True),
        cross_attention=_mha(d, p, batch_first=True),
    )
    encoder = TransformerEncoderFusion(
        layer=enc_layer, num_layers=d.encoder_layers, d_model=d.d_model,
        num_feature_levels=1, frozen=False, use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False, pool_text_with_mask=True,
    )
    dec_layer = TransformerDecoderLayer(
        activation="relu", d_model=d.d_model, dim_feedforward=d.dim_feedforward,
        dropout=p, cross_attention=_mha(d, p), n_heads=d.num_heads,
        use_text_cross_attention=True,
    )
    # resolution/stride=None: stock builds the coordinate cache on "cuda".
    decoder = TransformerDecoder(
        layer=dec_layer, num_layers=d.decoder_layers, num_queries=d.num_queries,
        return_intermediate=True, box_refine=True, num_o2m_queries=0, dac=True,
        boxRPB="log", d_model=d.d_model, frozen=False, interaction_layer=None,
        dac_use_selfatt_ln=True, resolution=None, stride=None,
        use_act_checkpoint=True, presence_token=True,
    )
    return TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d.d_model)


def _scoring(d: Sam3ArchSize, p: float):
    from sam3.model.model_misc import MLP, DotProductScoring

    prompt_mlp = MLP(
        input_dim=d.d_model, hidden_dim=d.dim_feedforward, output_dim=d.d_model,
        num_layers=2, dropout=p, residual=True, out_norm=nn.LayerNorm(d.d_model),
    )
    return DotProductScoring(d_model=d.d_model, d_proj=d.d_model, prompt_mlp=prompt_mlp)


def _segmentation_head(d: Sam3ArchSize):
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MultiheadAttentionWrapper

    pixel_decoder = PixelDecoder(
        num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d.d_model
    )
    return UniversalSegmentationHead(
        hidden_dim=d.d_model, upsampling_stages=3, aux_masks=False,
        presence_head=False, dot_product_scorer=None, act_ckpt=True,
        cross_attend_prompt=MultiheadAttentionWrapper(
            num_heads=d.num_heads, dropout=0, embed_dim=d.d_model
        ),
        pixel_decoder=pixel_decoder,
    )


def _geometry_encoder(d: Sam3ArchSize, p: float):
    from sam3.model.encoder import TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.memory import CXBlock  # noqa: F401  (stock imports it too)
    from sam3.model.position_encoding import PositionEmbeddingSine

    layer = TransformerEncoderLayer(
        activation="relu", d_model=d.d_model, dim_feedforward=d.dim_feedforward,
        dropout=p, pos_enc_at_attn=False, pre_norm=True,
        self_attention=_mha(d, p, batch_first=False),
        pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
        cross_attention=_mha(d, p, batch_first=False),
    )
    return SequenceGeometryEncoder(
        pos_enc=PositionEmbeddingSine(
            num_pos_feats=d.d_model, normalize=True, scale=None, temperature=10000
        ),
        encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True,
        boxes_pos_enc=True, d_model=d.d_model, num_layers=d.geometry_layers,
        layer=layer, use_act_ckpt=True, add_cls=True, add_post_encode_proj=True,
    )


def build_sam3_arch(
    size: str = "tiny",
    resolution: Optional[int] = None,
    *,
    enable_segmentation: bool = True,
    bpe_path: Optional[str] = None,
    seed: int = 0,
    eval_mode: bool = False,
    checkpoint_path: Optional[str] = None,
    dropout: float = 0.1,
    drop_path_rate: float = 0.1,
    **overrides,
) -> nn.Module:
    """Build a SAM3 image model (``sam3.model.sam3_image.Sam3Image``) on CPU.

    Args:
        size: ``"tiny"`` or ``"full"`` (see ``SIZES``).
        resolution: input side in pixels, a multiple of 14. Defaults to 112 (tiny)
            or 1008 (full). Must match the data transforms' resolution.
        enable_segmentation: build the segmentation head, as stock does.
        bpe_path: BPE vocabulary; ``None`` resolves it (see ``get_bpe_path``).
        seed: seeds the initialisation; the global RNG state is restored after.
        eval_mode: build without the training matcher and call ``.eval()``.
        checkpoint_path: optional stock-layout checkpoint (``detector.*`` keys),
            loaded strictly (``load_base_checkpoint``: a missing or unexpected key is a
            ``CheckpointError`` naming it; stock ``_load_checkpoint`` only prints them).
        dropout: dropout of the encoder, decoder, geometry encoder and scoring MLP
            (stock: 0.1). 0 makes training deterministic across process layouts
            (used by the DDP equality test).
        drop_path_rate: stochastic depth of the ViT trunk (stock: 0.1).
        **overrides: any ``Sam3ArchSize`` field, e.g. ``encoder_layers=1``.

    Returns:
        The model, on CPU, in train mode unless ``eval_mode``.
    """
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vl_combiner import SAM3VLBackbone

    if size not in SIZES:
        raise ValueError(f"Unknown SAM3 size {size!r}; choose one of {sorted(SIZES)}.")
    dims = replace(SIZES[size], **overrides)
    resolution = resolution or dims.default_resolution
    if resolution % PATCH_SIZE:
        raise ValueError(
            f"resolution={resolution} is not a multiple of the patch size {PATCH_SIZE}; "
            f"use e.g. {round(resolution / PATCH_SIZE) * PATCH_SIZE}."
        )

    log.info("Building SAM3 %s architecture at %d px", size, resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = VETextEncoder(
            tokenizer=SimpleTokenizer(bpe_path=get_bpe_path(bpe_path)),
            d_model=dims.d_model, width=dims.text_width, heads=dims.text_heads,
            layers=dims.text_layers,
        )
        backbone = SAM3VLBackbone(
            visual=_vision_backbone(dims, resolution, drop_path_rate), text=text, scalp=1
        )
        matcher = None
        if not eval_mode:
            from sam3.train.matcher import BinaryHungarianMatcherV2

            matcher = BinaryHungarianMatcherV2(
                focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0,
                alpha=0.25, gamma=2, stable=False,
            )
        model = Sam3Image(
            backbone=backbone,
            transformer=_transformer(dims, dropout),
            input_geometry_encoder=_geometry_encoder(dims, dropout),
            segmentation_head=_segmentation_head(dims) if enable_segmentation else None,
            num_feature_levels=1,
            o2m_mask_predict=True,
            dot_prod_scoring=_scoring(dims, dropout),
            use_instance_query=False,
            multimask_output=True,
            inst_interactive_predictor=None,
            matcher=matcher,
        )
        init_text_encoder_params(model)

    if checkpoint_path is not None:
        load_base_checkpoint(model, checkpoint_path)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("Built SAM3 %s architecture at %d px: %s parameters", size, resolution,
             f"{n_params:,}")
    return model.eval() if eval_mode else model
