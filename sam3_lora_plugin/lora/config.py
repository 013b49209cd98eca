"""``LoraConfig``: the LoRA settings of a run, exactly the keys of the YAML ``lora:`` block."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from .factors import validate_lora_args

__all__ = ["COMPONENTS", "NORM_LAYERS", "PRESETS", "ROLES", "LoraConfig", "same_layers_presets"]

#: SAM3 components and the dotted module prefix each one lives under in ``Sam3Image``.
COMPONENTS: dict[str, str] = {
    "vision_trunk": "backbone.vision_backbone.trunk",
    "text_encoder": "backbone.language_backbone",
    "fusion_encoder": "transformer.encoder",
    "decoder": "transformer.decoder",
    "geometry_encoder": "geometry_encoder",
    "segmentation_head": "segmentation_head",
    "scoring": "dot_prod_scoring",
}

#: Layer roles. q/k/v/out: attention projections (MultiheadAttention in-projection
#: slices and out_proj; ViT fused ``attn.qkv`` slices and ``attn.proj``). mlp: the
#: feed-forward Linears (``mlp.fc1/fc2``, ``mlp.c_fc/c_proj``, ``linear1/linear2``).
#: head: every other Linear (box/score heads, projections).
ROLES: tuple[str, ...] = ("q", "k", "v", "out", "mlp", "head")

QKV_MODES = ("split", "fused")

_IMAGE_PATH = ["vision_trunk", "fusion_encoder", "decoder"]
_ALL_BUT_SCORING = [c for c in COMPONENTS if c != "scoring"]
_ATTENTION_MLP = ["q", "k", "v", "out", "mlp"]
#: Every normalization layer SAM3 uses: LayerNorm (ViT ``norm1/2``, ``ln_pre``, the text
#: encoder's ``ln_1/2``, ``ln_final``, the encoders' and decoder's ``norm1-3``, ``*_norm``) and
#: the pixel decoder's GroupNorms ``norms.0`` and ``norms.1`` (its ``norms.2`` and
#: ``conv_layers.2`` are built but never called: SAM3's pixel decoder upsamples two of its
#: three levels). Left out too: the geometry encoder's ``img_pre_norm``, whose gradient under
#: text prompts is float noise (about 1e-9 of the largest), which AdamW would scale up into
#: updates that carry no signal and differ between DDP ranks and one process.
#: Parameter-free stand-ins (``nn.Identity``) are skipped.
NORM_LAYERS = r"re:(?!geometry_encoder\.img_pre_norm$).*\.(norm\d?|\w+_norm|ln_\w+|norms\.[01])$"
#: Trained fully by the attention_mlp_heads presets (and the default): the prompt-to-query scoring
#: MLP, the DETR decoder's box, presence and reference-point heads, the FPN neck's stride-14
#: level (the only neck output SAM3's detector reads) and every normalization layer: 0.33% of
#: full-size SAM3.
_HEADS_NECK_NORMS = ["dot_prod_scoring", "transformer.decoder.bbox_embed",
                     "transformer.decoder.presence_token_head",
                     "transformer.decoder.ref_point_head", "backbone.vision_backbone.convs.2",
                     NORM_LAYERS]


def _attention_mlp_heads() -> dict[str, list[Any]]:
    """attention_mlp's adapters plus the heads, the neck level the detector reads and the
    norms trained fully (``modules_to_save``): 1.488% of full-size SAM3. A fresh copy for
    each preset that stands for it, so that editing one entry cannot change the other."""
    return {"components": list(_ALL_BUT_SCORING), "roles": list(_ATTENTION_MLP),
            "modules_to_save": list(_HEADS_NECK_NORMS)}


def _attention_mlp_heads_rebalanced() -> dict[str, Any]:
    """attention_mlp_heads with adapter rank moved from the text encoder (half the rank) to
    the small parts between trunk and heads, the fusion encoder, the DETR decoder, the geometry
    encoder and the mask head's attention (twice the rank): 1.415% of full-size SAM3 at rank
    8, against 1.488%."""
    return {**_attention_mlp_heads(),
            "component_rank_scale": {"text_encoder": 0.5, "fusion_encoder": 2.0, "decoder": 2.0,
                                     "geometry_encoder": 2.0, "segmentation_head": 2.0}}


#: Named presets: the ``components``, ``roles`` and (optional) ``modules_to_save``,
#: ``trunk_blocks`` and ``component_rank_scale`` a preset stands for. Explicit values in the
#: config replace the preset's. ``component_rank_scale`` sets ``component_overrides`` from the
#: config's rank: ``{component: factor}`` gives that component ``factor ×`` the rank, with
#: alpha scaled alike (the same ``alpha / rank``).
PRESETS: dict[str, dict[str, Any]] = {
    # What a config selects when it names no preset: attention_mlp_heads_rebalanced (below), the
    # learning study's best row for its cost on both shifted domains (README, "Does it learn?").
    # Until 2026-11-30 the default was image_mlp's layers, then attention_mlp's, then for part of
    # a day attention_mlp_heads; an adapter records its resolved components, roles, per-component
    # ranks and modules_to_save, so it still loads onto the layers it was trained on.
    "default": _attention_mlp_heads_rebalanced(),
    "attention_mlp_heads_rebalanced": _attention_mlp_heads_rebalanced(),
    # attention_mlp's adapters, one rank everywhere, plus the heads, neck level and norms
    # trained fully (the default on 2026-11-30).
    "attention_mlp_heads": _attention_mlp_heads(),
    # Attention and feed-forward layers everywhere but the scoring head: vision trunk, text
    # encoder, fusion encoder, decoder, geometry encoder, segmentation head.
    "attention_mlp": {"components": list(_ALL_BUT_SCORING), "roles": list(_ATTENTION_MLP)},
    # Attention and feed-forward layers of the image path only: ViT trunk, fusion encoder,
    # DETR decoder (the default before 2026-11-30).
    "image_mlp": {"components": list(_IMAGE_PATH), "roles": list(_ATTENTION_MLP)},
    # Attention only, image path (the default before the first learning study).
    "attention_image": {"components": list(_IMAGE_PATH), "roles": ["q", "k", "v", "out"]},
    # The classic LoRA paper choice (query and value only), image path.
    "qv": {"components": list(_IMAGE_PATH), "roles": ["q", "v"]},
    # Every attention projection in every component, text encoder included.
    "attention": {"components": list(_ALL_BUT_SCORING), "roles": ["q", "k", "v", "out"]},
    # Every Linear and attention module of every component, heads included.
    "all_linear": {"components": list(COMPONENTS), "roles": list(ROLES)},
    # Low memory: the decoder side only (fusion encoder and DETR decoder, attention and
    # feed-forward). Trunk and text encoder are frozen, so they build no autograd graph.
    "low_memory": {"components": ["fusion_encoder", "decoder"], "roles": list(_ATTENTION_MLP)},
    # As image_mlp, but only the last 8 ViT blocks: backward stops at block 24 of 32.
    "trunk_last8": {"components": list(_IMAGE_PATH), "roles": list(_ATTENTION_MLP),
                    "trunk_blocks": [-8, None]},
}


def scaled_component_overrides(rank: int, alpha: float,
                               scale: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """``component_overrides`` for a preset's ``component_rank_scale`` at ``rank``/``alpha``:
    each component gets ``round(factor × rank)`` (at least 1) and the alpha that keeps
    ``alpha / rank``. ``scaled_component_overrides(8, 16, {"decoder": 2})`` is
    ``{"decoder": {"rank": 16, "alpha": 32.0}}``."""
    out = {}
    for component, factor in scale.items():
        r = max(1, int(factor * rank + 0.5))
        out[component] = {"rank": r, "alpha": float(alpha) * r / rank}
    return out


def resolve_component_overrides(overrides: Optional[Mapping[str, Mapping[str, Any]]],
                                preset: Mapping[str, Any], rank: int,
                                alpha: float) -> dict[str, dict[str, Any]]:
    """What a config's ``component_overrides`` stands for: ``overrides`` as given (an explicit
    value replaces the preset's, ``{}`` is one rank everywhere), or, when it is ``None``, the
    preset spec's ``component_rank_scale`` at ``rank``/``alpha``
    (:func:`scaled_component_overrides`)."""
    if overrides is None:
        overrides = scaled_component_overrides(rank, alpha, preset.get("component_rank_scale", {}))
    return {k: dict(v) for k, v in overrides.items()}


def same_layers_presets(preset: str) -> list[str]:
    """``preset`` and every other preset that stands for exactly the same layers (``default``
    and the preset it equals), ``preset`` first."""
    return [preset] + [name for name, spec in PRESETS.items()
                       if name != preset and spec == PRESETS[preset]]


@dataclass
class LoraConfig:
    """Which SAM3 layers get adapters, and how.

    The adapted layers compute ``y = W x + b + (alpha / r) * B (A dropout(x))``
    (``alpha / sqrt(r)`` with ``use_rslora``), ``A`` r×in, ``B`` out×r, ``B = 0`` at init.

    Args:
        rank: adapter rank r (> 0).
        alpha: scaling numerator (> 0).
        dropout: dropout on the adapter input, in [0, 1).
        preset: a key of ``PRESETS``; supplies ``components`` and ``roles`` where
            those are not given.
        components: SAM3 components to adapt (keys of ``COMPONENTS``); default: the
            preset's.
        roles: layer roles to adapt inside those components (``ROLES``); default:
            the preset's.
        qkv_mode: for ViT's fused ``attn.qkv`` Linear: ``"split"`` (default) gives
            q, k and v their own adapter, only for the roles selected; ``"fused"``
            puts one adapter over the whole 3·dim output when any of q/k/v is
            selected. Split is the default because it is the only mode in which
            ``roles`` means the same in the trunk as in every nn.MultiheadAttention
            (q and v only really leaves k alone), and because three rank-r
            adapters give each projection its own subspace (fused shares one
            rank-r input subspace across q, k and v, at 4·r·dim instead of
            6·r·dim parameters).
        include: extra modules, by fnmatch pattern or ``"re:<regex>"`` on full dotted
            names. Linears get one whole-output adapter, attention modules get the
            q/k/v/out roles selected (all four if none is).
        exclude: patterns removed from the selection, applied last.
        component_overrides: per-component ``{rank: .., alpha: ..}``; default: the
            preset's ``component_rank_scale`` applied to ``rank`` and ``alpha`` (``{}`` gives
            every component ``rank``).
        use_rslora: scale by alpha/sqrt(r) (rank-stabilised LoRA).
        init: ``"kaiming"`` or ``"gaussian"`` (random A, B = 0), or ``"pissa"`` /
            ``"olora"`` (A and B from an SVD / QR of the base weight; see
            ``sam3_lora_plugin.lora.factors``).
        modules_to_save: patterns of modules trained fully (and checkpointed), e.g.
            ``["dot_prod_scoring"]``; default: the preset's (``[]`` trains none). Disabling
            the adapters puts their base values back (``set_adapters_enabled``).
        use_dora: DoRA (weight-decomposed LoRA): a trained magnitude per output row on
            every adapter, Linear and attention alike (``sam3_lora_plugin.lora.dora``).
        trunk_blocks: ``[start, end]`` of the ViT trunk blocks to adapt, with Python
            slice semantics (``end`` excluded, negative counts from the last block,
            null for open): ``[-8, null]`` adapts the last 8 blocks. Blocks before
            ``start`` hold nothing trainable (the ``modules_to_save`` there, e.g. the
            norms of the ``attention_mlp_heads`` presets, are left out too), so backward
            stops there.
            Default: the preset's (all blocks).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    preset: str = "default"
    components: Optional[list[str]] = None
    roles: Optional[list[str]] = None
    qkv_mode: str = "split"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    component_overrides: Optional[dict[str, dict[str, Any]]] = None
    use_rslora: bool = False
    init: str = "kaiming"
    modules_to_save: Optional[list[str]] = None
    use_dora: bool = False
    trunk_blocks: Optional[list[Optional[int]]] = None

    def __post_init__(self) -> None:
        validate_lora_args(self.rank, self.alpha, self.dropout, self.init)
        if not isinstance(self.use_dora, bool):
            raise ValueError(f"lora.use_dora must be true or false, got {self.use_dora!r}.")
        if self.use_dora and self.init in ("pissa", "olora"):
            raise ValueError(f"lora.use_dora does not combine with lora.init={self.init!r}; "
                             "use init: kaiming (the default) with DoRA.")
        self.alpha, self.dropout = float(self.alpha), float(self.dropout)
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown lora.preset {self.preset!r}; valid: {list(PRESETS)}.")
        preset = PRESETS[self.preset]
        self.components = list(preset["components"] if self.components is None
                               else self.components)
        self.roles = list(preset["roles"] if self.roles is None else self.roles)
        if self.trunk_blocks is None and preset.get("trunk_blocks") is not None:
            self.trunk_blocks = list(preset["trunk_blocks"])
        if self.trunk_blocks is not None:
            tb = list(self.trunk_blocks)
            if len(tb) != 2 or not all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                                       for v in tb):
                raise ValueError(f"lora.trunk_blocks must be [start, end] (ints or null, Python "
                                 f"slice semantics), got {self.trunk_blocks!r}; e.g. [-8, null] "
                                 "for the last 8 blocks.")
            self.trunk_blocks = tb
        self.include, self.exclude = list(self.include), list(self.exclude)
        self.modules_to_save = list(preset.get("modules_to_save", []) if self.modules_to_save
                                    is None else self.modules_to_save)
        self.component_overrides = resolve_component_overrides(
            self.component_overrides, preset, self.rank, self.alpha)
        for name in self.components + list(self.component_overrides):
            if name not in COMPONENTS:
                raise ValueError(
                    f"Unknown SAM3 component {name!r} in lora.components/component_overrides; "
                    f"valid: {list(COMPONENTS)}."
                )
        bad_roles = [r for r in self.roles if r not in ROLES]
        if bad_roles:
            raise ValueError(f"Unknown lora.roles {bad_roles}; valid: {list(ROLES)}.")
        if self.qkv_mode not in QKV_MODES:
            raise ValueError(f"lora.qkv_mode={self.qkv_mode!r}; valid: {list(QKV_MODES)}.")
        for comp, ov in self.component_overrides.items():
            unknown = set(ov) - {"rank", "alpha"}
            if unknown:
                raise ValueError(
                    f"lora.component_overrides.{comp} has unknown keys {sorted(unknown)}; "
                    "only 'rank' and 'alpha' can be overridden per component."
                )
            validate_lora_args(ov.get("rank", self.rank), ov.get("alpha", self.alpha),
                               self.dropout, self.init)

    @classmethod
    def from_any(cls, value: Optional["LoraConfig | Mapping[str, Any]"]) -> "LoraConfig":
        """Accept a ``LoraConfig``, a mapping of its fields (e.g. from YAML) or None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise TypeError(
                f"Unknown LoRA setting(s) {unknown}; valid keys: {sorted(known)}."
            )
        return cls(**dict(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, as written into adapter configs."""
        return asdict(self)

    def rank_alpha_for(self, component: Optional[str]) -> tuple[int, float]:
        """The (rank, alpha) used in ``component``, honouring ``component_overrides``."""
        ov = self.component_overrides.get(component or "", {})
        return int(ov.get("rank", self.rank)), float(ov.get("alpha", self.alpha))
