"""Tests for ``sam3_lora_plugin.models.arch.build_sam3_arch`` (tiny/full SAM3 builder on CPU)."""

from __future__ import annotations

import gc
import re

import pytest
import torch
from torch.overrides import TorchFunctionMode

from sam3_lora_plugin.models.arch import SIZES, build_sam3_arch
from sam3_lora_plugin.testing import make_batch

_INDEX = re.compile(r"\.\d+\.")


def _normalise(name: str) -> str:
    """Replace every ``.<int>.`` layer index by ``.N.`` (repeatedly: ``a.0.1.b`` overlaps)."""
    prev = None
    while prev != name:
        prev, name = name, _INDEX.sub(".N.", name)
    return name


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tiny():
    """One tiny model (train mode, seed 0), shared by the read-only tests."""
    return build_sam3_arch("tiny", seed=0)


# --------------------------------------------------------------------------- tiny


def test_normalise_handles_consecutive_indices():
    """The layer-index normaliser rewrites adjacent indices (``.0.1.``) and leaves others."""
    assert _normalise("a.0.1.b.12.c") == "a.N.N.b.N.c"
    assert _normalise("layers.3.weight") == "layers.N.weight"
    assert _normalise("a.b0.c") == "a.b0.c"


def test_tiny_param_count(tiny):
    """The tiny model has 3-5M parameters (small enough for CPU tests and smoke runs)."""
    n = sum(p.numel() for p in tiny.parameters())
    assert 3_000_000 <= n <= 5_000_000, n


def test_tiny_is_sam3_image_in_train_mode(tiny):
    """The builder returns stock ``Sam3Image`` in train mode unless ``eval_mode``."""
    from sam3.model.sam3_image import Sam3Image

    assert isinstance(tiny, Sam3Image)
    assert tiny.training
    assert not build_sam3_arch("tiny", eval_mode=True).training


def test_same_seed_is_bit_identical(tiny):
    """Two builds with the same seed give bit-identical state_dicts."""
    again = build_sam3_arch("tiny", seed=0)
    assert _tensors_equal(tiny.state_dict(), again.state_dict())


def test_different_seed_differs(tiny):
    """A different seed gives different weights (the seed really drives the init)."""
    other = build_sam3_arch("tiny", seed=1).state_dict()
    ref = tiny.state_dict()
    assert ref.keys() == other.keys()
    differing = [k for k in ref if ref[k].is_floating_point() and not torch.equal(ref[k], other[k])]
    # Every randomly initialised family differs, not just one tensor.
    assert any(k.startswith("backbone.vision_backbone.") for k in differing)
    assert any(k.startswith("backbone.language_backbone.") for k in differing)
    assert any(k.startswith("transformer.") for k in differing)


def test_all_parameters_finite(tiny):
    """No parameter or buffer of a freshly built model holds NaN or inf."""
    bad = [n for n, t in tiny.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, bad


def test_text_encoder_empty_tensors_initialised(tiny):
    """``positional_embedding`` / ``text_projection`` (``torch.empty`` in stock) get the CLIP init.

    Expected std: 0.01 for the positional embedding and ``width ** -0.5`` for the projection.
    """
    from sam3.model.text_encoder_ve import TextTransformer

    encoders = [m for m in tiny.modules() if isinstance(m, TextTransformer)]
    assert len(encoders) == 1
    enc = encoders[0]
    for name, expected_std in (("positional_embedding", 0.01),
                               ("text_projection", enc.width ** -0.5)):
        t = getattr(enc, name)
        assert isinstance(t, torch.nn.Parameter), name
        assert torch.isfinite(t).all(), name
        std = t.detach().std().item()
        assert std > 0, name
        assert std == pytest.approx(expected_std, rel=0.2), (name, std)


def test_build_leaves_global_rng_untouched():
    """Building forks the RNG: the global torch RNG state is the same before and after."""
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    build_sam3_arch("tiny", seed=7)
    torch.testing.assert_close(torch.get_rng_state(), before, rtol=0, atol=0)


def test_overrides_change_dimensions():
    """``**overrides`` replace ``Sam3ArchSize`` fields (e.g. fewer encoder layers)."""
    model = build_sam3_arch("tiny", encoder_layers=1)
    assert len(model.transformer.encoder.layers) == 1
    assert len(model.transformer.decoder.layers) == SIZES["tiny"].decoder_layers


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("resolution", [100, 113, 1000])
def test_bad_resolution_raises(resolution):
    """A resolution that is not a multiple of the patch size 14 is a ValueError naming it."""
    with pytest.raises(ValueError, match=rf"resolution={resolution}.*multiple of the patch size 14"):
        build_sam3_arch("tiny", resolution=resolution)


def test_bad_resolution_suggests_nearest_multiple():
    """The resolution error suggests the nearest multiple of 14."""
    with pytest.raises(ValueError, match=r"use e\.g\. 98\b"):
        build_sam3_arch("tiny", resolution=100)


def test_unknown_size_raises():
    """An unknown size is a ValueError that lists the valid sizes."""
    with pytest.raises(ValueError, match=r"Unknown SAM3 size 'huge'.*'full'.*'tiny'"):
        build_sam3_arch("huge")


# --------------------------------------------------------------------------- forward


@pytest.fixture
def no_pin_memory(monkeypatch):
    """SAM3's geometry encoder calls ``Tensor.pin_memory()``, which needs a GPU; no-op it."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)


def _find_outputs(out) -> dict:
    """The prediction dict of the last step of the single stage of a ``SAM3Output``."""
    assert len(out) == 1
    (step,) = out[0] if isinstance(out[0], list) else [out[0]]
    return step


def test_tiny_forward_eval_cpu(tmp_path, no_pin_memory):
    """An eval-mode forward on a real collated val batch gives finite, well-shaped outputs."""
    batch = make_batch(tmp_path, training=False)["x"]
    model = build_sam3_arch("tiny", eval_mode=True)
    n_queries = batch.find_inputs[0].img_ids.numel()  # one find query per (image, category)
    assert n_queries == batch.img_batch.shape[0] * len(batch.find_text_batch)  # val keeps negatives
    with torch.no_grad():
        pred = _find_outputs(model(batch))
    nq = SIZES["tiny"].num_queries
    assert pred["pred_logits"].shape == (n_queries, nq, 1)
    assert pred["pred_boxes"].shape == (n_queries, nq, 4)
    assert pred["pred_masks"].shape[:2] == (n_queries, nq)
    for key in ("pred_logits", "pred_boxes", "pred_boxes_xyxy", "pred_masks", "presence_logit_dec"):
        assert torch.isfinite(pred[key]).all(), key
    # Boxes are normalised cxcywh in [0, 1].
    assert pred["pred_boxes"].min() >= 0 and pred["pred_boxes"].max() <= 1
    # Eval mode is deterministic: a second call gives the same predictions.
    with torch.no_grad():
        again = _find_outputs(model(batch))
    torch.testing.assert_close(again["pred_logits"], pred["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(again["pred_boxes"], pred["pred_boxes"], rtol=0, atol=0)


def test_tiny_forward_train_batch_with_masks(tmp_path, no_pin_memory):
    """A train-mode forward on a ``training=True`` batch (with GT masks) is finite and differentiable."""
    batch = make_batch(tmp_path, training=True)["x"]
    target = batch.find_targets[0]
    assert target.segments is not None
    assert target.segments.shape[0] == int(target.num_boxes.sum())
    assert target.segments.shape[-2:] == batch.img_batch.shape[-2:]
    model = build_sam3_arch("tiny")
    pred = _find_outputs(model(batch))
    assert torch.isfinite(pred["pred_logits"]).all()
    assert torch.isfinite(pred["pred_masks"]).all()
    (pred["pred_logits"].sum() + pred["pred_masks"].mean()).backward()
    grads = [p.grad for p in model.transformer.decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_make_batch_is_deterministic(tmp_path):
    """``make_batch`` gives the same images/texts twice and leaves the torch RNG state alone."""
    state = torch.get_rng_state()
    a = make_batch(tmp_path, training=True)["x"]
    b = make_batch(tmp_path, training=True)["x"]
    torch.testing.assert_close(torch.get_rng_state(), state, rtol=0, atol=0)
    torch.testing.assert_close(a.img_batch, b.img_batch, rtol=0, atol=0)
    assert a.find_text_batch == b.find_text_batch


# --------------------------------------------------------------------------- stock parity


class _CudaToCpu(TorchFunctionMode):
    """Rewrites any ``device=`` kwarg naming CUDA to ``"cpu"`` (stock allocates on CUDA)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        device = kwargs.get("device")
        if device is not None and "cuda" in str(device):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def stock_shapes() -> dict[str, torch.Size]:
    """``{state_dict key: shape}`` of stock ``build_sam3_image_model``, built once on CPU.

    Only the shapes are kept; the ~840M-parameter model is freed before returning.
    """
    from sam3.model_builder import build_sam3_image_model

    from sam3_lora_plugin.models.bpe import get_bpe_path

    with torch.random.fork_rng(devices=[]), _CudaToCpu():
        model = build_sam3_image_model(
            bpe_path=get_bpe_path(), device="cpu", eval_mode=False, load_from_HF=False
        )
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    param_names = [n for n, _ in model.named_parameters()]
    buffer_names = [n for n, _ in model.named_buffers()]
    del model
    gc.collect()
    return {"state": shapes, "params": param_names, "buffers": buffer_names}


@pytest.mark.slow
def test_full_matches_stock_state_dict(stock_shapes):
    """``build_sam3_arch("full")`` has exactly stock's state_dict keys and shapes (~840.5M params)."""
    model = build_sam3_arch("full")
    ours = {k: v.shape for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    stock = stock_shapes["state"]
    assert sorted(set(stock) - set(ours)) == []
    assert sorted(set(ours) - set(stock)) == []
    assert {k: s for k, s in ours.items() if stock[k] != s} == {}
    assert len(ours) == 1134
    assert 840_000_000 < n_params < 841_000_000, n_params


@pytest.mark.slow
def test_tiny_module_tree_matches_stock(stock_shapes, tiny):
    """Tiny's parameter (and buffer) names equal stock's once layer indices are normalised."""
    for kind, ours in (("params", tiny.named_parameters()), ("buffers", tiny.named_buffers())):
        ours = {_normalise(n) for n, _ in ours}
        stock = {_normalise(n) for n in stock_shapes[kind]}
        assert sorted(stock - ours) == [], kind
        assert sorted(ours - stock) == [], kind
        assert ours, kind
