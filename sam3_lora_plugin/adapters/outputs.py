"""Where the adapter tools write: the project's output rules (``models.output_files``:
refuse to replace what a tool did not write, write atomically), re-exported here, and what
makes a directory an adapter directory of ours (``is_adapter_dir``).

An adapter directory may be replaced by ``adapters export``, ``to-peft`` and the
launcher's final export when it is new, empty, or holds only ``ADAPTER_FILES`` with our
``sam3_lora`` block in ``adapter_config.json``.
"""

from __future__ import annotations

import json
import os

from sam3_lora_plugin.models.output_files import (OutputPathError, atomic_path, check_output_dir,
                                                  check_output_file, write_text_atomic)

__all__ = ["ADAPTER_FILES", "OutputPathError", "atomic_path", "check_output_dir",
           "check_output_file", "is_adapter_dir", "write_text_atomic"]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def is_adapter_dir(path: str) -> bool:
    """True if ``path`` is a directory holding only adapter files, with our config."""
    try:
        names = set(os.listdir(path))
        with open(os.path.join(path, ADAPTER_FILES[0])) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return names <= set(ADAPTER_FILES) and isinstance(config, dict) and "sam3_lora" in config
