"""Pre-build config checks (``trainer.config_check``): the image resolution against the
ViT patch size of the builders whose patch size is known."""

from __future__ import annotations

import pytest

from sam3_lora_plugin.trainer.compose import compose_config
from sam3_lora_plugin.trainer.config_check import ConfigError, validate_training_config

SMOKE = "configs/lora/smoke_cpu.yaml"
COCO = "configs/lora/coco_box.yaml"


@pytest.mark.parametrize("overrides, message", [
    (["scratch.resolution=100"],
     r"^scratch\.resolution=100 is not a multiple of the patch size 14 .*use scratch\.resolution=98, "
     r"the nearest valid value\.$"),
    (["scratch.resolution=0"], r"scratch\.resolution=0 is not a positive multiple .*scratch\.resolution=14"),
    (["scratch.resolution=abc"], r"scratch\.resolution='abc' must be an int"),
    # a literal on the builder itself is named as that key
    (["trainer.model.model.resolution=57"],
     r"trainer\.model\.model\.resolution=57 is not a multiple .*trainer\.model\.model\.resolution=56"),
])
def test_resolution_off_the_patch_grid_is_refused_before_the_build(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_training_config(compose_config(SMOKE, overrides))


def test_resolution_on_the_patch_grid_or_unknown_patch_size_passes():
    validate_training_config(compose_config(SMOKE, ["scratch.resolution=126"]))
    validate_training_config(compose_config(SMOKE, ["trainer.model.model.resolution=null"]))  # size default
    # a builder whose patch size this project does not know: not checked here
    validate_training_config(compose_config(SMOKE, ["scratch.resolution=100",
                                                    "trainer.model.model._target_=my_pkg.build_model"]))


def test_stock_builder_gets_scratch_resolution_checked():
    with pytest.raises(ConfigError, match=r"scratch\.resolution=1000 is not a multiple of the patch size 14 "
                                          r"\(build_sam3_image_model .*use scratch\.resolution=1008, stock SAM3's "
                                          r"resolution \(the nearest multiple is 994\)"):
        validate_training_config(compose_config(COCO, ["paths.dataset_root=/x", "scratch.resolution=1000"]))
    validate_training_config(compose_config(COCO, ["paths.dataset_root=/x"]))  # 1008
