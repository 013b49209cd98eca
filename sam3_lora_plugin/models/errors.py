"""``CheckpointError``, in a module of its own: ``base_checkpoint`` raises it when it reads
a checkpoint, and ``output_files`` (``OutputPathError``) when a tool may not write one.
Import it from either place; it is the same class."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""
