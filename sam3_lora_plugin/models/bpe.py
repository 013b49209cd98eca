"""Locate SAM3's BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``).

The sam3 0.1.4 wheel ships no vocabulary, and ``build_sam3_image_model(bpe_path=None)``
looks in ``<site-packages>/assets/``, which no install creates. open_clip_torch ships the
identical file (md5 933b7abbbbde62c36f02f0e6ccde464f), so it is our fallback.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

__all__ = ["BPE_FILENAME", "BpeNotFoundError", "get_bpe_path"]

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"


class BpeNotFoundError(FileNotFoundError):
    """Raised when no BPE vocabulary can be found."""


def _package_dir(name: str) -> Optional[str]:
    # find_spec locates the package without importing it (open_clip imports torch/timm).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _candidates() -> list[str]:
    paths = []
    sam3_dir = _package_dir("sam3")
    if sam3_dir:
        # Where stock looks (<site-packages>/assets) and where a source checkout has it.
        paths.append(os.path.join(sam3_dir, "..", "assets", BPE_FILENAME))
        paths.append(os.path.join(sam3_dir, "assets", BPE_FILENAME))
    open_clip_dir = _package_dir("open_clip")
    if open_clip_dir:
        paths.append(os.path.join(open_clip_dir, BPE_FILENAME))
    return [os.path.normpath(p) for p in paths]


def get_bpe_path(bpe_path: Optional[str] = None) -> str:
    """Return the path of the BPE vocabulary to give sam3's tokenizer.

    Args:
        bpe_path: an explicit path. ``None`` means: sam3's own file if this install
            has it, otherwise the identical file shipped by open_clip_torch.

    Returns:
        An existing file path.

    Raises:
        BpeNotFoundError: the explicit path does not exist, or no candidate does.
    """
    if bpe_path is not None:
        if not os.path.isfile(bpe_path):
            raise BpeNotFoundError(
                f"BPE vocabulary not found at bpe_path={bpe_path!r}. Fix the path, or set "
                f"bpe_path: null to use sam3's or open_clip_torch's copy."
            )
        return bpe_path
    candidates = _candidates()
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise BpeNotFoundError(
        f"No BPE vocabulary ({BPE_FILENAME}) found; looked in: {candidates or 'nothing'}. "
        "The sam3 wheel does not ship it. Fix: `pip install open_clip_torch` (it ships the "
        "identical file), or pass bpe_path=/path/to/" + BPE_FILENAME + "."
    )
