"""Fixtures shared by the trainer tests: a one-process group (SAM3's loss all-reduces) and a
tiny training batch."""

import pytest

from sam3_lora_plugin.testing import make_batch, single_process_group


@pytest.fixture(scope="module")
def process_group():
    with single_process_group():
        yield


@pytest.fixture(scope="module")
def train_batch(tmp_path_factory):
    return make_batch(tmp_path_factory.mktemp("data"), training=True)["x"]
