"""``models.output_files.atomic_path``: all or nothing, with the usual file mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sam3_lora_plugin.models.output_files import atomic_path


def _usual_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@pytest.mark.parametrize("writer", ["open", "safetensors"])
def test_the_finished_file_has_the_mode_open_gives(tmp_path: Path, writer: str) -> None:
    """mkstemp and safetensors' save_file both create 0600 files; the result must not be
    readable only by its owner when every other file of the run is not."""
    out = tmp_path / "adapter_model.safetensors"
    with atomic_path(str(out)) as tmp:
        if writer == "open":
            Path(tmp).write_bytes(b"x")
        else:
            save_file({"w": torch.zeros(2)}, tmp)
    assert out.stat().st_mode & 0o777 == _usual_mode()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "checkpoint.pt"
    out.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_path(str(out)) as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert out.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
